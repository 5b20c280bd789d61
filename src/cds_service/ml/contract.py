"""The seam between the online path and the model: scoring jobs, their results and findings, and the
`InferenceBackend` that runs them. Standard library only.

A job carries the patient's FHIR resources rather than model inputs, so the same job runs in-process or
on a remote worker, and featurisation happens next to the model that defines it. Services, cards and
workers pass these types around without importing torch (`tests/test_architecture.py` checks it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol


@dataclass
class ScoringJob:
    head: str  # "diagnosis" | "medication"
    patient_id: str
    resources: list[dict[str, Any]]
    cutoff: float  # seconds since the epoch: inputs strictly before it
    encounter_id: str | None = None  # the current encounter: its own records are not inputs
    known_dx: list[str] = field(default_factory=list)  # tokens of the encounter's diagnoses (medication head)
    exclude: list[str] = field(default_factory=list)  # label tokens never to suggest (already known/ordered)
    avoid_drugs: list[str] = field(default_factory=list)  # names of drugs a suggestion must not interact with
    max_findings: int = 3
    min_probability: float = 0.0
    deadline_at: float | None = None  # time.time() after which nobody waits for the answer (remote workers)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies the (megabytes of) resources.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoringJob:
        return cls(**data)

    def monotonic_deadline(self) -> float | None:
        return None if self.deadline_at is None else time.monotonic() + (self.deadline_at - time.time())


@dataclass
class ScoringResult:
    model_version: str
    findings: list[Finding]
    timings_ms: dict[str, float]
    skipped_resources: int = 0
    batch_size: int = 1  # jobs that shared this forward pass
    queue_wait_ms: float = 0.0  # time between enqueueing and the start of work (remote workers)
    # The familiarity guard's verdict (`ml.familiarity`): {"familiar": bool, "failed": [...], "measures": {...}};
    # an unfamiliar record has no findings. None from a backend that predates the guard.
    familiarity: dict[str, Any] | None = None

    @property
    def unfamiliar(self) -> list[str] | None:
        """The failed checks when the guard judged the record unfamiliar, else None."""
        if self.familiarity is None or self.familiarity.get("familiar", False):
            return None
        return [str(c) for c in self.familiarity.get("failed", [])] or ["unknown"]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoringResult:
        findings = [
            Finding(**{**f, "evidence": [EvidenceItem(**e) for e in f.get("evidence", [])]})
            for f in data.get("findings", [])
        ]
        return cls(**{**data, "findings": findings})


@dataclass
class EvidenceItem:
    source: str  # "Condition/abc", "DocumentReference/xyz": present in the patient's data
    display: str
    time: float
    share: float  # share of the label's positive attribution
    quote: str | None = None  # for notes: the most influential passage
    drop: float | None = None  # probability lost when this source is deleted (None: not checked)


@dataclass
class Finding:
    head: str
    label: int
    token: str
    display: str
    probability: float
    threshold: float
    evidence: list[EvidenceItem] = field(default_factory=list)
    # Set by the trust gates (`services.trust`) for a medication: the record's condition that indicates it,
    # {"reference": "Condition/abc", "display": "Atrial fibrillation", "recorded": "2018-05-02" | None}.
    indication: dict[str, Any] | None = None


class InferenceBackend(Protocol):
    name: str

    @property
    def model_version(self) -> str | None: ...

    async def score(self, job: ScoringJob, deadline: float) -> ScoringResult: ...

    def close(self) -> None: ...
