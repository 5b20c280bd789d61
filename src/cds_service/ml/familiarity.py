"""Does this record look like the records the model learned from? The familiarity guard.

A model scored on records unlike its training data is confidently wrong (a vendor sepsis model's AUROC fell
from 0.76-0.83 to 0.63 at an outside hospital; Wong et al., JAMA Intern Med 2021), and nothing in its
probabilities says so. So every request is measured against what training saw, and a record that falls
outside gets no model cards (safety cards as usual; reason `unfamiliar-record`, with which checks failed):

- `unknown-codes`: the share of the record's input events whose code the model's vocabulary does not know;
- `gap`: days between the last recorded event and the scoring time (an old sandbox record scored today);
- `age`: the patient's age at scoring, against the training range;
- `history-length`: the number of input events, against the training maximum;
- `representation`: the Mahalanobis distance of the encoder's pooled ([CLS]) representation to the training
  representations (Lee et al., NeurIPS 2018), which catches combinations no single check above sees.

Each limit is a quantile of the validation split (`training.guard` fits them and writes `familiarity.json`
beside the model), chosen so that about 99 % of validation requests pass all checks; the file records the
pass rate it measured.

The scoring time is not an input: every record is read as of `scoring_gap_days` after its last event or note
(chosen on validation among a few values), whatever the real time. Scoring one day, one year or (were the guard
not to abstain) five years after the last visit gives the same inputs and so the same suggestions; a model
that learned the generator's visit schedule from the gap cannot turn a stale record into a confident card.
The cost on the test split is in the model card. Standard library and numpy only: the online path imports it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.ml.features import History

GUARD_FILE = "familiarity.json"
UNK_ID = 1
SECONDS_PER_DAY = 86_400.0
SECONDS_PER_YEAR = 365.25 * SECONDS_PER_DAY
CHECKS = ("unknown-codes", "gap", "age", "history-length", "representation")


@dataclass(frozen=True)
class RecordMeasures:
    """What the guard measures on one record's inputs (no PHI: shares, days, years, counts)."""

    unknown_share: float
    gap_days: float
    age_years: float | None
    n_events: int

    @classmethod
    def of(cls, h: History) -> RecordMeasures:
        n = len(h.event_token)
        unknown = float((h.event_token == UNK_ID).sum()) / n if n else 0.0
        last = float(h.event_time.max()) if n else None
        gap = (h.cutoff - last) / SECONDS_PER_DAY if last is not None else math.inf
        age = (h.cutoff - h.birth_time) / SECONDS_PER_YEAR if h.birth_time is not None else None
        return cls(unknown, gap, age, n)


@dataclass
class Familiarity:
    familiar: bool
    failed: list[str] = field(default_factory=list)  # the CHECKS that failed
    measures: dict[str, float] = field(default_factory=dict)


def canonical_cutoff(h: History, gap_days: float) -> History:
    """`h` read as of `gap_days` after its last event or note (nothing enters or leaves: every input is
    already before both times); a record with no events keeps its cutoff."""
    times = [float(h.event_time.max())] if len(h.event_time) else []
    times += [float(h.note_time.max())] if len(h.note_time) else []
    if not times or not math.isfinite(gap_days):
        return h
    return replace(h, cutoff=max(times) + gap_days * SECONDS_PER_DAY)


@dataclass(frozen=True)
class FamiliarityGuard:
    max_unknown_share: float
    max_gap_days: float
    min_age_years: float
    max_age_years: float
    max_events: int
    mean: npt.NDArray[np.float64]  # of the training [CLS] representations
    precision: npt.NDArray[np.float64]  # inverse of their (shrunk) covariance
    max_distance: float
    scoring_gap_days: float
    fitted: dict[str, Any] = field(default_factory=dict)  # provenance and the validation pass rate

    def distance(self, pooled: npt.NDArray[Any]) -> float:
        d = np.asarray(pooled, dtype=np.float64) - self.mean
        return float(math.sqrt(max(float(d @ self.precision @ d), 0.0)))

    def check(self, measures: RecordMeasures, pooled: npt.NDArray[Any] | None) -> Familiarity:
        """Which checks a record fails; `measures` are taken at the real scoring time (before bounding)."""
        failed = []
        if measures.unknown_share > self.max_unknown_share:
            failed.append("unknown-codes")
        if measures.gap_days > self.max_gap_days:
            failed.append("gap")
        if measures.age_years is None or not self.min_age_years <= measures.age_years <= self.max_age_years:
            failed.append("age")
        if measures.n_events > self.max_events:
            failed.append("history-length")
        distance = self.distance(pooled) if pooled is not None else math.inf
        if distance > self.max_distance:
            failed.append("representation")
        values = {
            "unknown_share": measures.unknown_share,
            "gap_days": measures.gap_days,
            "age_years": measures.age_years if measures.age_years is not None else -1.0,
            "n_events": float(measures.n_events),
            "distance": distance,
        }
        return Familiarity(
            not failed, failed, {k: round(v, 4) if math.isfinite(v) else -1.0 for k, v in values.items()}
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "max_unknown_share": self.max_unknown_share,
            "max_gap_days": self.max_gap_days,
            "min_age_years": self.min_age_years,
            "max_age_years": self.max_age_years,
            "max_events": self.max_events,
            "mean": self.mean.tolist(),
            "precision": self.precision.tolist(),
            "max_distance": self.max_distance,
            "scoring_gap_days": self.scoring_gap_days,
            "fitted": self.fitted,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FamiliarityGuard:
        return cls(
            max_unknown_share=float(data["max_unknown_share"]),
            max_gap_days=float(data["max_gap_days"]),
            min_age_years=float(data["min_age_years"]),
            max_age_years=float(data["max_age_years"]),
            max_events=int(data["max_events"]),
            mean=np.asarray(data["mean"], dtype=np.float64),
            precision=np.asarray(data["precision"], dtype=np.float64),
            max_distance=float(data["max_distance"]),
            scoring_gap_days=float(data["scoring_gap_days"]),
            fitted=dict(data.get("fitted", {})),
        )

    def save(self, model_dir: Path) -> Path:
        path = model_dir / GUARD_FILE
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def load_guard(model_dir: Path) -> FamiliarityGuard | None:
    """The model's guard, or None for a model without one (it then abstains on nothing: said at start-up)."""
    path = model_dir / GUARD_FILE
    return FamiliarityGuard.from_json(json.loads(path.read_text())) if path.is_file() else None
