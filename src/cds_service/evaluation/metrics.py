"""Multi-label metrics for both heads; every function takes (y_true, y_score) as (samples x labels) arrays."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import average_precision_score, roc_auc_score

Array = npt.NDArray[Any]


def _usable_labels(y: Array) -> Array:
    pos = y.sum(0)
    return np.flatnonzero((pos > 0) & (pos < len(y)))  # AUROC/AUPRC need both classes


def macro_auroc(y: Array, s: Array) -> float:
    cols = _usable_labels(y)
    return float(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in cols])) if len(cols) else float("nan")


def macro_auprc(y: Array, s: Array) -> float:
    cols = _usable_labels(y)
    return float(np.mean([average_precision_score(y[:, j], s[:, j]) for j in cols])) if len(cols) else float("nan")


def micro_auroc(y: Array, s: Array) -> float:
    flat = y.ravel()
    return float(roc_auc_score(flat, s.ravel())) if 0 < flat.sum() < len(flat) else float("nan")


def micro_auprc(y: Array, s: Array) -> float:
    flat = y.ravel()
    return float(average_precision_score(flat, s.ravel())) if flat.sum() > 0 else float("nan")


def recall_at_k(y: Array, s: Array, k: int) -> float:
    """Mean over samples with any positive of (positives among the top k) / min(k, positives)."""
    rows = np.flatnonzero(y.sum(1) > 0)
    if not len(rows):
        return float("nan")
    top = np.argsort(-s[rows], axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(y[rows], top, axis=1).sum(1)
    return float(np.mean(hits / np.minimum(k, y[rows].sum(1))))


def ece(y: Array, s: Array, n_bins: int = 10) -> float:
    """Expected calibration error over all (sample, label) probabilities, equal-width bins."""
    p, t = s.ravel(), y.ravel()
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.sum() / len(p) * abs(p[m].mean() - t[m].mean())
    return float(total)


def brier(y: Array, s: Array) -> float:
    return float(np.mean((s - y) ** 2))


def jaccard(y: Array, pred: Array) -> float:
    """Mean per-sample Jaccard of predicted and true sets, over samples where either set is non-empty.

    Samples with nothing ordered and nothing recommended are left out: counting them as perfect rewards
    a system for staying silent on the (many) encounters without medications.
    """
    inter = (y * pred).sum(1)
    union = ((y + pred) > 0).sum(1)
    rows = union > 0
    return float(np.mean(inter[rows] / union[rows])) if rows.any() else float("nan")


def f1_samples(y: Array, pred: Array) -> float:
    """Mean per-sample F1 over the same samples as `jaccard`."""
    inter = (y * pred).sum(1)
    denom = y.sum(1) + pred.sum(1)
    rows = denom > 0
    return float(np.mean(2 * inter[rows] / denom[rows])) if rows.any() else float("nan")


def ddi_rate(pred: Array, interacting: Array) -> float:
    """Share of recommended pairs (per sample, both predicted) that interact; `interacting` is labels x labels."""
    pairs = 0.0
    bad = 0.0
    for row in pred.astype(bool):
        idx = np.flatnonzero(row)
        n = len(idx)
        if n < 2:
            continue
        pairs += n * (n - 1) / 2
        bad += np.triu(interacting[np.ix_(idx, idx)], 1).sum()
    return float(bad / pairs) if pairs else 0.0


SCORE_METRICS: dict[str, Callable[[Array, Array], float]] = {
    "micro_auroc": micro_auroc,
    "macro_auroc": macro_auroc,
    "micro_auprc": micro_auprc,
    "macro_auprc": macro_auprc,
    "recall@1": lambda y, s: recall_at_k(y, s, 1),
    "recall@3": lambda y, s: recall_at_k(y, s, 3),
    "recall@5": lambda y, s: recall_at_k(y, s, 5),
    "recall@10": lambda y, s: recall_at_k(y, s, 10),
    "ece": ece,
    "brier": brier,
}


def score_metrics(y: Array, s: Array) -> dict[str, float]:
    return {name: fn(y, s) for name, fn in SCORE_METRICS.items()}
