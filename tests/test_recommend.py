"""Medication recommendations never pair interacting drugs: the rule itself, and the service's use of it."""

from __future__ import annotations

import numpy as np

from cds_service.core.settings import Settings
from cds_service.evaluation.metrics import ddi_rate
from cds_service.ml.artifacts import Predictor
from cds_service.ml.contract import ScoringJob
from cds_service.ml.recommend import choose, interaction_matrix, recommendation_sets


def test_more_likely_drug_wins_by_hand() -> None:
    names = ["Warfarin Sodium 5 MG Oral Tablet", "Ibuprofen 200 MG Oral Tablet", "Amlodipine 5 MG Oral Tablet"]
    interacting = interaction_matrix(names)
    assert interacting[0, 1] == 1 and interacting[0, 2] == 0 and interacting[1, 2] == 0
    p = np.asarray([[0.9, 0.8, 0.7], [0.6, 0.95, 0.1], [0.9, 0.2, 0.7]], dtype=np.float32)
    got = recommendation_sets(p, [0.5, 0.5, 0.5], interacting)
    # row 0: warfarin beats ibuprofen; row 1: ibuprofen beats warfarin; row 2: no conflict, plain thresholds
    assert got.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]


def test_sets_are_interaction_free_and_maximal() -> None:
    rng = np.random.default_rng(7)
    n_labels = 12
    upper = np.triu(rng.random((n_labels, n_labels)) < 0.2, 1)
    interacting = (upper | upper.T).astype(np.float32)
    p = rng.random((400, n_labels)).astype(np.float32)
    thresholds = rng.uniform(0.2, 0.6, n_labels)
    plain = (p >= thresholds).astype(np.float32)
    got = recommendation_sets(p, thresholds, interacting)
    assert ddi_rate(plain, interacting) > 0  # the case is not vacuous
    assert ddi_rate(got, interacting) == 0
    assert np.all(got <= plain)  # only ever removes
    for row in range(len(p)):
        kept = np.flatnonzero(got[row])
        for label in np.flatnonzero(plain[row] - got[row]):
            # a label is dropped only for a kept, more likely drug it interacts with
            blockers = [k for k in kept if interacting[label, k] and p[row, k] >= p[row, label]]
            assert blockers, (row, label)
    unaffected = [r for r in range(len(p)) if not interacting[np.ix_(plain[r] > 0, plain[r] > 0)].any()]
    assert np.array_equal(got[unaffected], plain[unaffected])


def test_service_never_suggests_two_interacting_drugs() -> None:
    """The shipped model's labels, probabilities that put an interacting pair on top: one card, not two."""
    predictor = Predictor(Settings().resolved_model_dir)
    interacting = predictor.medication_interactions
    reachable = np.asarray(predictor.thresholds["medication"]) < 0.97
    pairs = np.argwhere(np.triu(interacting, 1) * reachable[:, None] * reachable[None, :])
    assert len(pairs), "the shipped model's medication labels hold no interacting pair"
    a, b = (int(x) for x in pairs[0])
    probs = np.zeros(len(predictor.labels["medication"]), dtype=np.float32)
    probs[a], probs[b] = 0.99, 0.98
    others = [i for i in np.flatnonzero(reachable) if not interacting[i, [a, b]].any() and i not in (a, b)][:1]
    probs[others] = 0.97
    job = ScoringJob(head="medication", patient_id="p", resources=[], cutoff=0.0, max_findings=3)
    labels, thresholds = predictor.labels["medication"], predictor.thresholds["medication"]
    chosen = choose(job, probs, labels, thresholds, interacting)
    assert a in chosen and b not in chosen
    assert others[0] in chosen
