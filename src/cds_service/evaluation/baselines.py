"""Baselines on the same split: label prior, logistic regression and LightGBM on bag-of-codes counts.

Features per sample: log1p counts of each code token over all history and over the last 365 days before
the cutoff, age in decades, sex and encounter class one-hot. Columns are keyed by token string, so a
baseline fitted on one dataset scores another.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from cds_service.data.dataset import SEX_IDS, Dataset

YEAR = 365.25 * 86400


@dataclass
class FeatureSpace:
    tokens: list[str]
    classes: list[str]
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @property
    def width(self) -> int:
        return 2 * len(self.tokens) + 1 + len(SEX_IDS) + len(self.classes)

    @classmethod
    def from_dataset(cls, ds: Dataset, min_count: int = 5) -> FeatureSpace:
        """Columns for code tokens seen at least `min_count` times in the training split (not [PAD]/[UNK])."""
        a = ds.arrays
        per_patient = np.diff(a["patient_events_offsets"])
        train_events = np.repeat(a["patient_split"] == 0, per_patient)
        counts = np.bincount(a["event_token"][train_events], minlength=len(ds.vocab))
        tokens = [t for i, t in enumerate(ds.vocab) if i > 2 and counts[i] >= min_count]
        return cls(tokens, list(ds.manifest["encounter_classes"]))


def bag_of_codes(ds: Dataset, samples: npt.NDArray[Any], space: FeatureSpace) -> sp.csr_matrix:
    a = ds.arrays
    col_of = np.asarray([space.index.get(t, -1) for t in ds.vocab], dtype=np.int64)
    n_tok = len(space.tokens)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    classes = list(ds.manifest["encounter_classes"])
    for r, s in enumerate(samples):
        p = int(a["sample_patient"][s])
        cutoff = float(a["sample_time"][s])
        e0, e1 = int(a["patient_events_offsets"][p]), int(a["patient_events_offsets"][p + 1])
        n = int(np.searchsorted(a["event_time"][e0:e1], cutoff, side="left"))
        toks = col_of[a["event_token"][e0 : e0 + n]]
        recent = a["event_time"][e0 : e0 + n] >= cutoff - YEAR
        for block, mask in ((0, toks >= 0), (n_tok, (toks >= 0) & recent)):
            ids, counts = np.unique(toks[mask], return_counts=True)
            rows.extend([r] * len(ids))
            cols.extend((ids + block).tolist())
            vals.extend(np.log1p(counts).tolist())
        birth = float(a["patient_birth"][p])
        base = 2 * n_tok
        rows.append(r)
        cols.append(base)
        vals.append(0.0 if math.isnan(birth) else (cutoff - birth) / YEAR / 10)
        rows.append(r)
        cols.append(base + 1 + int(a["patient_sex"][p]))
        vals.append(1.0)
        cls_name = classes[int(a["sample_class"][s])]
        if cls_name in space.classes:
            rows.append(r)
            cols.append(base + 1 + len(SEX_IDS) + space.classes.index(cls_name))
            vals.append(1.0)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(samples), space.width), dtype=np.float32)


class PriorBaseline:
    def fit(
        self, x: sp.csr_matrix, y: npt.NDArray[np.float32], weight: npt.NDArray[np.float32] | None = None
    ) -> PriorBaseline:
        self.prior = np.average(y, axis=0, weights=weight)
        return self

    def predict_proba(self, x: sp.csr_matrix) -> npt.NDArray[np.float32]:
        return np.tile(self.prior, (x.shape[0], 1)).astype(np.float32)


class PerLabelBaseline:
    """One binary model per label; labels without both classes in training fall back to the prior."""

    def __init__(self, kind: str, seed: int = 13) -> None:
        self.kind, self.seed = kind, seed

    def _new(self) -> Any:
        if self.kind == "logistic_regression":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=0.5, max_iter=300, solver="liblinear")
        import lightgbm as lgb

        return lgb.LGBMClassifier(
            n_estimators=150,
            learning_rate=0.05,
            num_leaves=15,
            min_child_samples=10,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.5,
            random_state=self.seed,
            verbose=-1,
        )

    def fit(
        self, x: sp.csr_matrix, y: npt.NDArray[np.float32], weight: npt.NDArray[np.float32] | None = None
    ) -> PerLabelBaseline:
        self.prior = np.average(y, axis=0, weights=weight)
        self.models: list[Any] = []
        for j in range(y.shape[1]):
            if 0 < y[:, j].sum() < len(y):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.models.append(self._new().fit(x, y[:, j].astype(int), sample_weight=weight))
            else:
                self.models.append(None)
        return self

    def predict_proba(self, x: sp.csr_matrix) -> npt.NDArray[np.float32]:
        out = np.zeros((x.shape[0], len(self.models)), dtype=np.float32)
        for j, model in enumerate(self.models):
            if model is None:
                out[:, j] = self.prior[j]
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[:, j] = model.predict_proba(x)[:, 1]
        return out


def make_baseline(name: str, seed: int = 13) -> PriorBaseline | PerLabelBaseline:
    return PriorBaseline() if name == "prior" else PerLabelBaseline(name, seed)
