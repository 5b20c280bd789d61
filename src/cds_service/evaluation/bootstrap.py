"""Patient-level bootstrap without re-sorting: each resample is a weight per sample (how often its patient
was drawn), and every metric is computed as a weighted metric over scores sorted once.

A resample that draws a patient twice is the same as that patient's rows with weight 2, so these are
exactly the metrics of the duplicated rows (ties included, as scikit-learn breaks them), at a fraction
of the cost: sorting 3 M scores per draw and system was the whole evaluation's slowest part.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]


class _Ranked:
    """One score vector sorted descending, with the starts of its groups of tied scores."""

    def __init__(self, scores: Array, truth: Array) -> None:
        self.order = np.argsort(-scores, kind="stable")
        ordered = scores[self.order]
        self.starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.truth = truth[self.order].astype(np.float64)

    def sums(self, weights: Array) -> tuple[Array, Array]:
        """Weighted positives and negatives per tie group, highest score first."""
        w = weights[self.order]
        pos = np.add.reduceat(w * self.truth, self.starts)
        return pos, np.add.reduceat(w, self.starts) - pos

    def auroc(self, weights: Array) -> float:
        pos, neg = self.sums(weights)
        p, n = pos.sum(), neg.sum()
        if p <= 0 or n <= 0:
            return float("nan")
        above = np.cumsum(pos) - pos  # positives scored strictly higher than the group
        return float((neg * (above + pos / 2)).sum() / (p * n))

    def average_precision(self, weights: Array) -> float:
        pos, neg = self.sums(weights)
        p = pos.sum()
        if p <= 0:
            return float("nan")
        tp, fp = np.cumsum(pos), np.cumsum(neg)
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
        return float((pos / p * precision).sum())


class WeightedMetrics:
    """The bootstrapped metrics of one system on one head: `at(weights)` -> {metric: value}."""

    def __init__(
        self,
        y: Array,
        p: Array,
        pred: Array | None = None,
        interacting: Array | None = None,
        n_bins: int = 10,
    ) -> None:
        self.y, self.n_labels = y, y.shape[1]
        self.micro = _Ranked(p.ravel(), y.ravel())
        self.columns = [_Ranked(p[:, j], y[:, j]) for j in range(self.n_labels)]
        flat_p, flat_y = p.ravel().astype(np.float64), y.ravel().astype(np.float64)
        self.bins = np.minimum((flat_p * n_bins).astype(int), n_bins - 1)
        self.flat_p, self.flat_y, self.n_bins = flat_p, flat_y, n_bins
        self.recall = {k: _recall_per_sample(y, p, k) for k in (1, 5)}
        self.sets: dict[str, Array] | None = None
        if pred is not None:
            inter, union = (y * pred).sum(1), ((y + pred) > 0).sum(1)
            pairs, bad = _pairs_per_sample(pred, interacting)
            self.sets = {"inter": inter, "union": union, "pairs": pairs, "bad": bad}

    def at(self, weights: Array) -> dict[str, float]:
        flat_w = np.repeat(weights.astype(np.float64), self.n_labels)
        out = {"micro_auroc": self.micro.auroc(flat_w)}
        label_pos = weights @ self.y
        label_neg = weights.sum() - label_pos
        usable = [j for j in range(self.n_labels) if label_pos[j] > 0 and label_neg[j] > 0]
        out["macro_auprc"] = (
            float(np.mean([self.columns[j].average_precision(weights) for j in usable])) if usable else float("nan")
        )
        for k, (rows, values) in self.recall.items():
            w = weights[rows]
            out[f"recall@{k}"] = float((w * values).sum() / w.sum()) if w.sum() > 0 else float("nan")
        total = flat_w.sum()
        gap = np.bincount(self.bins, flat_w * (self.flat_p - self.flat_y), minlength=self.n_bins)
        out["ece"] = float(np.abs(gap).sum() / total) if total else float("nan")
        if self.sets is not None:
            s = self.sets
            rows = s["union"] > 0
            w = weights[rows]
            out["jaccard"] = (
                float((w * s["inter"][rows] / s["union"][rows]).sum() / w.sum()) if w.sum() else float("nan")
            )
            pairs = float((weights * s["pairs"]).sum())
            out["ddi_rate"] = float((weights * s["bad"]).sum() / pairs) if pairs else 0.0
        return out


def _recall_per_sample(y: Array, p: Array, k: int) -> tuple[Array, Array]:
    rows = np.flatnonzero(y.sum(1) > 0)
    top = np.argsort(-p[rows], axis=1, kind="stable")[:, :k]
    hits = np.take_along_axis(y[rows], top, axis=1).sum(1)
    return rows, hits / np.minimum(k, y[rows].sum(1))


def _pairs_per_sample(pred: Array, interacting: Array | None) -> tuple[Array, Array]:
    n = pred.sum(1)
    pairs = n * (n - 1) / 2
    if interacting is None:
        return pairs, np.zeros(len(pred))
    bad = np.einsum("ij,jk,ik->i", pred, np.triu(interacting, 1), pred)
    return pairs, bad


def patient_weights(patients: Array, n_boot: int, seed: int) -> Array:
    """(n_boot, samples): how often each sample's patient was drawn, resampling patients with replacement."""
    rng = np.random.default_rng(seed)
    unique, index = np.unique(patients, return_inverse=True)
    draws = rng.integers(0, len(unique), size=(n_boot, len(unique)))
    counts = np.stack([np.bincount(d, minlength=len(unique)) for d in draws])
    weights: Array = counts[:, index].astype(np.float64)
    return weights
