"""Which medications the model recommends: each above its label's threshold, and never two that interact.

The training penalty lowers the probability that interacting drugs are scored high together but cannot
forbid it, and a recommendation list that pairs interacting drugs is a safety defect. So the decision is
greedy and hard: labels in descending probability, each kept only if it interacts with none kept before
it (the more likely drug wins; the other is not recommended). Cards (`choose`) and evaluation use
this one rule, so the reported Jaccard and DDI rate are those of what a physician would be shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.ml.contract import ScoringJob
from cds_service.safety.interactions import blocking_interaction
from cds_service.safety.orders import Drug, check_allergies, conflicts

Matrix = npt.NDArray[np.float32]


def interaction_matrix(names: Sequence[str]) -> Matrix:
    """1 where two medication labels (by display name) interact at major severity or worse (the drug
    knowledge layer's cited rules): what a recommendation list must never pair."""
    n = len(names)
    m = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for j in range(i + 1, n):
            if blocking_interaction(names[i], names[j]) is not None:
                m[i, j] = m[j, i] = 1.0
    return m


def compatible(candidate: int, chosen: Sequence[int], interacting: Matrix) -> bool:
    """True when `candidate` interacts with none of the labels already chosen."""
    return not chosen or not bool(interacting[candidate, list(chosen)].any())


def recommendation_sets(p: Matrix, thresholds: npt.ArrayLike, interacting: Matrix) -> Matrix:
    """0/1 matrix (samples x labels): thresholded, then made interaction-free greedily by probability."""
    above = p >= np.asarray(thresholds, dtype=p.dtype)
    out = above.astype(np.float32)
    if not interacting.any():
        return out
    for row in np.flatnonzero(above.sum(1) > 1):
        candidates = np.flatnonzero(above[row])
        if not interacting[np.ix_(candidates, candidates)].any():
            continue
        chosen: list[int] = []
        for label in candidates[np.argsort(-p[row, candidates], kind="stable")]:
            if compatible(int(label), chosen, interacting):
                chosen.append(int(label))
            else:
                out[row, label] = 0.0
    return out


def safe_drug(name: str, job: ScoringJob) -> bool:
    """A candidate drug interacts with none of the job's drugs to avoid and hits none of its allergies."""
    if conflicts(name, job.avoid_drugs):
        return False
    return not check_allergies([Drug("MedicationRequest/candidate", name, None)], job.resources)


def choose(
    job: ScoringJob,
    probabilities: Matrix,
    labels: Sequence[dict[str, Any]],
    thresholds: Sequence[float],
    interacting: Matrix,
) -> list[int]:
    """The labels a card may show for one patient: most likely first, each above its own threshold and
    `job.min_probability`, none excluded by the job, and (medications) each safe for the patient and
    interacting with none chosen before it. At most `job.max_findings`."""
    excluded = set(job.exclude)
    chosen: list[int] = []
    for k in np.argsort(-probabilities):
        label = int(k)
        if len(chosen) >= job.max_findings or probabilities[label] < job.min_probability:
            break
        meta = labels[label]
        if probabilities[label] < thresholds[label] or meta["token"] in excluded:
            continue
        if job.head == "medication" and not (
            safe_drug(str(meta.get("display", "")), job) and compatible(label, chosen, interacting)
        ):
            continue
        chosen.append(label)
    return chosen
