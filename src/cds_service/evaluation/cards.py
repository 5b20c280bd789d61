"""What a physician would see: the model's cards on a test split under the service's own rule, and how
often they are right.

The card rule is the service's (`ml.recommend.choose`, as `services.diagnosis`/`services.treatment` call
it): labels above their threshold and above the minimum card probability, most likely first, medications
interaction-free by `ml.recommend.recommendation_sets`, at most `MAX_CARDS[head]` per encounter. What the
service also filters and the dataset cannot replay (labels already recorded or ordered, allergies, draft
orders, the familiarity guard, the evidence-drop check) is not applied, so these are the cards before
those gates.

A card counts as right when its label is positive at that encounter or at any of the same patient's
encounters within the next `WINDOW_DAYS[head]` days (a diagnosis is often coded a visit or two after it
could have been suggested; a medication is ordered soon or not at all). Logistic regression is compared at
the same card rate: its as many top-scored (encounter, label) pairs, right by the same rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.core.settings import Settings
from cds_service.ml.features import SECONDS_PER_DAY
from cds_service.ml.recommend import recommendation_sets

Array = npt.NDArray[Any]

# The service's defaults (`CDS_MIN_CARD_PROBABILITY`, `CDS_MAX_CARDS`); medications: the two
# recommendations the treatment service shows beside its safety cards (`services.treatment.MOST_RECOMMENDATIONS`;
# tests/test_evaluation_cards.py checks the two agree).
MIN_CARD_PROBABILITY = float(Settings.model_fields["min_card_probability"].default)
MAX_CARDS = {"diagnosis": int(Settings.model_fields["max_cards"].default), "medication": 2}
WINDOW_DAYS = {"diagnosis": 90, "medication": 30}
OVERCONFIDENT = 0.99  # shown probabilities above this are reported; cards display at most "over 95%"
DISPLAY_CAP = 0.95


def shown_cards(
    p: Array,
    thresholds: npt.ArrayLike,
    max_cards: int,
    min_probability: float = MIN_CARD_PROBABILITY,
    interacting: Array | None = None,
) -> Array:
    """0/1 matrix (encounters x labels) of the cards shown: above threshold and `min_probability`,
    interaction-free when `interacting` is given (greedy by probability), the `max_cards` most likely."""
    p = np.asarray(p, dtype=np.float32)
    if interacting is None:
        allowed = (p >= np.asarray(thresholds, dtype=p.dtype)).astype(np.float32)
    else:
        allowed = recommendation_sets(p, thresholds, interacting)
    allowed *= p >= min_probability
    # Dropping labels below min_probability after the greedy rule changes nothing above it: the rule's
    # choice for a label depends only on the more likely labels.
    masked = np.where(allowed > 0, p, -np.inf)
    top = np.argsort(-masked, axis=1, kind="stable")[:, :max_cards]
    out = np.zeros_like(allowed)
    rows = np.arange(len(p))[:, None]
    out[rows, top] = allowed[rows, top]
    return out


def window_labels(
    sample_patient: Array, sample_time: Array, labels: Array, samples: Array, days: float
) -> npt.NDArray[np.float32]:
    """Per sample in `samples` (rows of the dataset), 1 for each label positive at that sample or at any
    sample of the same patient starting within `days` days after it (its own time included).

    `sample_patient`, `sample_time`, `labels` (samples x labels, 0/1) cover the whole dataset, so later
    encounters count even when `samples` is a subset."""
    samples = np.asarray(samples, dtype=np.int64)
    out = np.zeros((len(samples), labels.shape[1]), dtype=np.float32)
    horizon = days * SECONDS_PER_DAY
    order = np.lexsort((sample_time, sample_patient))  # by patient, then time
    sorted_patient = sample_patient[order]
    wanted = sample_patient[samples]
    for patient in np.unique(wanted):
        lo, hi = np.searchsorted(sorted_patient, patient, "left"), np.searchsorted(sorted_patient, patient, "right")
        rows = order[lo:hi]
        times = sample_time[rows]
        cum = np.concatenate([np.zeros((1, labels.shape[1])), np.cumsum(labels[rows] > 0, axis=0)])
        mine = np.flatnonzero(wanted == patient)
        t = sample_time[samples[mine]]
        start = np.searchsorted(times, t, "left")
        end = np.searchsorted(times, t + horizon, "right")
        out[mine] = (cum[end] - cum[start]) > 0
    return out


def precision_at_rate(p: Array, right: Array, n_cards: int) -> float:
    """Precision of the `n_cards` top-scored (sample, label) pairs of `p` (ties: the first in row order)."""
    if n_cards <= 0:
        return float("nan")
    flat = np.asarray(p).ravel()
    top = np.argsort(-flat, kind="stable")[:n_cards]
    return float(np.asarray(right).ravel()[top].mean())


def card_figures(
    head: str,
    p: Array,
    thresholds: npt.ArrayLike,
    right: Array,
    right_same_encounter: Array,
    baselines: dict[str, Array],
    interacting: Array | None = None,
) -> dict[str, Any]:
    """The card figures of one head: `right` is `window_labels` for the head's window (in `p`'s columns),
    `right_same_encounter` the encounter's own labels; `baselines` the probabilities of the systems to
    compare at the same card rate (e.g. logistic regression), same rows and columns."""
    shown = shown_cards(p, thresholds, MAX_CARDS[head], interacting=interacting)
    n_cards = int(shown.sum())
    per_encounter = shown.sum(1)
    on = shown > 0
    shown_p = np.asarray(p)[on]

    def share(x: Array) -> float:
        return float(x.mean()) if x.size else float("nan")

    return {
        "rule": {
            "min_probability": MIN_CARD_PROBABILITY,
            "max_cards": MAX_CARDS[head],
            "window_days": WINDOW_DAYS[head],
            "interaction_free": interacting is not None,
        },
        "encounters": len(p),
        "cards": n_cards,
        "cards_per_encounter": float(per_encounter.mean()) if len(p) else float("nan"),
        "abstention": share(per_encounter == 0),
        "precision": share(np.asarray(right)[on]),
        "precision_same_encounter": share(np.asarray(right_same_encounter)[on]),
        "share_shown_above_0.99": share(shown_p > OVERCONFIDENT),
        "share_shown_above_0.95": share(shown_p > DISPLAY_CAP),
        "at_same_card_rate": {name: precision_at_rate(q, right, n_cards) for name, q in baselines.items()},
    }


def markdown(figures: dict[str, Any]) -> list[str]:
    """`card_figures` as a short Markdown table."""
    rule = figures["rule"]
    lines = [
        f"Cards a physician would see ({figures['encounters']} encounters): above threshold and "
        f"p >= {rule['min_probability']:g}, at most {rule['max_cards']} per encounter"
        + (", interaction-free" if rule["interaction_free"] else "")
        + f"; right = the label is positive at the encounter or within {rule['window_days']} days after.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| cards per encounter | {figures['cards_per_encounter']:.3f} ({figures['cards']} cards) |",
        f"| encounters with no card (abstention) | {figures['abstention']:.3f} |",
        f"| precision of shown cards | {figures['precision']:.3f} |",
        f"| precision, same encounter only | {figures['precision_same_encounter']:.3f} |",
        f"| shown probabilities above 0.99 | {figures['share_shown_above_0.99']:.3f} |",
        f'| shown probabilities above 0.95 (displayed as "over 95%") | {figures["share_shown_above_0.95"]:.3f} |',
    ]
    for name, value in figures["at_same_card_rate"].items():
        lines.append(f"| {name}: precision of its top {figures['cards']} pairs | {value:.3f} |")
    return [*lines, ""]
