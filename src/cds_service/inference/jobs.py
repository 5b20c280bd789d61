"""The unit of model work: a JSON-serialisable scoring job and its result.

A job carries the patient's FHIR resources rather than model inputs, so the same job runs in-process or
on a remote worker, and featurisation happens next to the model that defines it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from cds_service.errors import DeadlineMissed
from cds_service.fhir.reader import ReadReport
from cds_service.inference.live import LiveHistory
from cds_service.inference.recommend import compatible
from cds_service.inference.scoring import EvidenceItem, Finding, PatientScorer, PatientScores
from cds_service.safety.orders import Drug, check_allergies, conflicts
from cds_service.timeline.builder import TimelineBuilder


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoringResult:
        findings = [
            Finding(**{**f, "evidence": [EvidenceItem(**e) for e in f.get("evidence", [])]})
            for f in data.get("findings", [])
        ]
        return cls(**{**data, "findings": findings})


def _safe_drug(name: str, job: ScoringJob) -> bool:
    if conflicts(name, job.avoid_drugs):
        return False
    return not check_allergies([Drug("MedicationRequest/candidate", name, None)], job.resources)


def _check(deadline: float | None, stage: str) -> None:
    # Cooperative cancellation: a thread cannot be interrupted, so stop between stages instead of
    # spending CPU on an answer nobody will wait for.
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineMissed(f"deadline passed before {stage}")


def _featurize(scorer: PatientScorer, job: ScoringJob) -> tuple[LiveHistory, int]:
    report = ReadReport()
    timeline = TimelineBuilder(report).build(job.patient_id, job.resources)
    config = scorer.predictor.encode_config
    live = scorer.predictor.featurizer.featurize(
        timeline, job.cutoff, job.encounter_id, job.known_dx, config.max_notes if config.note_tokens else 0
    )
    return live, sum(report.warnings.values())


def _choose(scorer: PatientScorer, job: ScoringJob, scores: PatientScores) -> list[int]:
    labels = scorer.predictor.labels[job.head]
    thresholds = scorer.predictor.thresholds[job.head]
    probs = scores.probabilities[job.head]
    excluded = set(job.exclude)
    chosen: list[int] = []
    for k in np.argsort(-probs):
        label = int(k)
        if len(chosen) >= job.max_findings or probs[label] < job.min_probability:
            break
        meta = labels[label]
        if probs[label] < thresholds[label] or meta["token"] in excluded:
            continue
        if job.head == "medication" and not (
            _safe_drug(str(meta.get("display", "")), job)
            and compatible(label, chosen, scorer.predictor.medication_interactions)
        ):
            continue
        chosen.append(label)
    return chosen


def run_job(scorer: PatientScorer, job: ScoringJob, deadline: float | None = None) -> ScoringResult:
    """Score one job; `deadline` (time.monotonic) stops the work between stages once passed."""
    result = run_jobs(scorer, [job], [deadline])[0]
    if isinstance(result, DeadlineMissed):
        raise result
    return result


def run_jobs(
    scorer: PatientScorer, jobs: list[ScoringJob], deadlines: list[float | None]
) -> list[ScoringResult | DeadlineMissed]:
    """Several jobs with one batched forward pass; each job keeps its own deadline and result."""
    results: list[ScoringResult | DeadlineMissed] = [DeadlineMissed("not scored")] * len(jobs)
    t0 = time.perf_counter()
    prepared: list[tuple[int, LiveHistory, int]] = []
    for i, (job, deadline) in enumerate(zip(jobs, deadlines, strict=True)):
        try:
            _check(deadline, "featurisation")
            live, skipped = _featurize(scorer, job)
            _check(deadline, "the forward pass")
            prepared.append((i, live, skipped))
        except DeadlineMissed as exc:
            results[i] = exc
    if not prepared:
        return results
    t1 = time.perf_counter()
    all_scores = scorer.score_many([live for _, live, _ in prepared])
    t2 = time.perf_counter()
    for (i, _, skipped), scores in zip(prepared, all_scores, strict=True):
        try:
            _check(deadlines[i], "explanations")
        except DeadlineMissed as exc:
            results[i] = exc
            continue
        start = time.perf_counter()
        findings = scorer.explain(scores, jobs[i].head, _choose(scorer, jobs[i], scores))
        timings = {
            "featurize": (t1 - t0) * 1e3 / len(prepared),
            "forward": (t2 - t1) * 1e3,
            "explain": (time.perf_counter() - start) * 1e3,
        }
        results[i] = ScoringResult(scorer.predictor.version, findings, timings, skipped, batch_size=len(prepared))
    return results
