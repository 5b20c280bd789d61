"""The card-level figures of `cds-service evaluate`: the service's card rule, the 90/30-day windows, and the
comparison with logistic regression at the same card rate, each against a case worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cds_service.evaluation.cards import (
    MAX_CARDS,
    MIN_CARD_PROBABILITY,
    card_figures,
    precision_at_rate,
    shown_cards,
    window_labels,
)
from cds_service.ml.contract import ScoringJob
from cds_service.ml.recommend import choose

DAY = 86400.0


def test_a_label_positive_60_days_later_counts_and_120_days_later_does_not() -> None:
    # Rows out of time order on purpose: the window must sort by patient and time itself.
    # patient 0: encounters on day 0, 120, 60, 90; patient 1: day 10 (its labels never count for patient 0)
    patient = np.asarray([0, 0, 0, 1, 0])
    time = np.asarray([0.0, 120.0, 60.0, 10.0, 90.0]) * DAY + 1.7e9
    labels = np.zeros((5, 4), dtype=np.float32)
    labels[2, 0] = 1  # label 0 at day 60
    labels[1, 1] = 1  # label 1 at day 120
    labels[3, 2] = 1  # label 2 at patient 1's day 10
    labels[0, 3] = 1  # label 3 at day 0 itself
    got = window_labels(patient, time, labels, np.asarray([0, 2, 3]), days=90)
    # day 0: label 0 (60 days later) yes, label 1 (120 days later) no, patient 1's label 2 no, its own label 3 yes
    assert got[0].tolist() == [1, 0, 0, 1]
    # day 60: its own label 0, and label 1 at day 120 is 60 days later; label 3 lies in the past
    assert got[1].tolist() == [1, 1, 0, 0]
    assert got[2].tolist() == [0, 0, 1, 0]  # patient 1 sees only its own
    # the same-encounter rule is window 0, and the boundary is inclusive (day 90 is within 90 days of day 0)
    assert window_labels(patient, time, labels, np.asarray([0]), days=0)[0].tolist() == [0, 0, 0, 1]
    labels[4, 2] = 1  # label 2 at day 90
    assert window_labels(patient, time, labels, np.asarray([0]), days=90)[0].tolist() == [1, 0, 1, 1]
    assert window_labels(patient, time, labels, np.asarray([0]), days=89)[0].tolist() == [1, 0, 0, 1]


# Three encounters, five labels (medications 0 and 1 interact). By hand, at most 2 cards, p >= 0.2:
# row 0: above threshold 0 (.9), 1 (.5), 2 (.3), 3 (.25); label 4 (.1) is above its threshold but under 0.2.
#        Interaction-free: 0, not 1 (interacts with 0), 2, 3 -> the two most likely: {0, 2}. Without the rule {0, 1}.
# row 1: nothing reaches 0.2 -> no card.
# row 2: 3 (.995), 1 (.7), 0 (.6, interacts with 1: dropped), 2 (.3) -> {3, 1}.
P = np.asarray(
    [[0.9, 0.5, 0.3, 0.25, 0.1], [0.15, 0.1, 0.19, 0.0, 0.05], [0.6, 0.7, 0.3, 0.995, 0.0]], dtype=np.float32
)
THRESHOLDS = np.asarray([0.5, 0.4, 0.2, 0.2, 0.05], dtype=np.float32)
INTERACTING = np.zeros((5, 5), dtype=np.float32)
INTERACTING[0, 1] = INTERACTING[1, 0] = 1
RIGHT = np.asarray([[1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=np.float32)  # within the window
SAME = np.asarray([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=np.float32)  # at the encounter


def test_the_card_rule_on_a_hand_worked_case() -> None:
    shown = shown_cards(P, THRESHOLDS, max_cards=2, min_probability=0.2, interacting=INTERACTING)
    assert shown.tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]]
    plain = shown_cards(P, THRESHOLDS, max_cards=2, min_probability=0.2)
    assert plain.tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]]
    assert shown_cards(P, THRESHOLDS, max_cards=2, min_probability=0.0)[1].tolist() == [0, 0, 0, 0, 1]


def test_card_figures_on_the_hand_worked_case() -> None:
    # logistic regression's four best pairs: (0,0) right, (1,4) right, (2,3) right, (2,2) wrong -> 3/4
    lr = np.full(P.shape, 0.01, dtype=np.float32)
    lr[0, 0], lr[1, 4], lr[2, 3], lr[2, 2] = 0.9, 0.8, 0.7, 0.6
    got = card_figures("medication", P, THRESHOLDS, RIGHT, SAME, {"logistic_regression": lr}, INTERACTING)
    assert got["rule"] == {"min_probability": 0.2, "max_cards": 2, "window_days": 30, "interaction_free": True}
    assert got["encounters"] == 3 and got["cards"] == 4
    assert got["cards_per_encounter"] == pytest.approx(4 / 3)
    assert got["abstention"] == pytest.approx(1 / 3)
    assert got["precision"] == pytest.approx(2 / 4)  # (0,0) and (2,3) right; (0,2) and (2,1) not
    assert got["precision_same_encounter"] == pytest.approx(1 / 4)
    assert got["share_shown_above_0.99"] == pytest.approx(1 / 4)  # 0.995
    assert got["at_same_card_rate"] == {"logistic_regression": pytest.approx(3 / 4)}
    assert precision_at_rate(lr, RIGHT, 0) != precision_at_rate(lr, RIGHT, 0)  # no cards: undefined (NaN)


def test_the_card_rule_is_the_services_choose() -> None:
    """Row by row, the evaluation's vectorised rule picks the labels `ml.recommend.choose` gives a card
    (the service's function) for a job with the service's defaults and nothing to exclude."""
    rng = np.random.default_rng(5)
    n_labels = 12
    p = rng.beta(0.6, 2.0, size=(300, n_labels)).astype(np.float32)
    thresholds = rng.uniform(0.05, 0.5, n_labels).astype(np.float32)
    interacting = np.zeros((n_labels, n_labels), dtype=np.float32)
    for i, j in [(0, 1), (0, 5), (2, 3), (4, 7), (8, 9), (1, 9)]:
        interacting[i, j] = interacting[j, i] = 1
    labels = [{"token": f"T/{j}", "display": f"not a drug {j}"} for j in range(n_labels)]
    for head, ddi in (("diagnosis", None), ("medication", interacting)):
        shown = shown_cards(p, thresholds, MAX_CARDS[head], interacting=ddi)
        job = ScoringJob(
            head=head,
            patient_id="p",
            resources=[],
            cutoff=0.0,
            max_findings=MAX_CARDS[head],
            min_probability=MIN_CARD_PROBABILITY,
        )
        matrix = interacting if ddi is not None else np.zeros_like(interacting)
        for row in range(len(p)):
            expected = choose(job, p[row], labels, thresholds.tolist(), matrix)
            assert set(np.flatnonzero(shown[row]).tolist()) == set(expected), (head, row)
        assert 0 < shown.sum() < len(p) * MAX_CARDS[head]  # neither vacuous nor saturated


def test_the_card_caps_are_the_services() -> None:
    from cds_service.core.settings import Settings
    from cds_service.services.treatment import MOST_RECOMMENDATIONS

    service = {"diagnosis": Settings.model_fields["max_cards"].default, "medication": MOST_RECOMMENDATIONS}
    assert service == MAX_CARDS
    assert Settings.model_fields["min_card_probability"].default == MIN_CARD_PROBABILITY
