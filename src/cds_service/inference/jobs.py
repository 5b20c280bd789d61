"""The unit of model work: a JSON-serialisable scoring job and its result.

A job carries the patient's FHIR resources rather than model inputs, so the same job runs in-process or
on a remote worker, and featurisation happens next to the model that defines it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cds_service.errors import DeadlineMissed
from cds_service.fhir.reader import ReadReport
from cds_service.inference.scoring import Finding, PatientScorer
from cds_service.safety.interactions import interactions_between
from cds_service.safety.orders import Drug, check_allergies, drug_words
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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoringResult:
    model_version: str
    findings: list[Finding]
    timings_ms: dict[str, float]
    skipped_resources: int = 0


def _safe_drug(name: str, job: ScoringJob) -> bool:
    if any(interactions_between(name, other) for other in job.avoid_drugs):
        return False
    if check_allergies([Drug("MedicationRequest/candidate", name, None)], job.resources):
        return False
    mine = drug_words(name)
    return not any(mine & drug_words(other) for other in job.avoid_drugs)


def _check(deadline: float | None, stage: str) -> None:
    # Cooperative cancellation: a thread cannot be interrupted, so stop between stages instead of
    # spending CPU on an answer nobody will wait for.
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineMissed(f"deadline passed before {stage}")


def run_job(scorer: PatientScorer, job: ScoringJob, deadline: float | None = None) -> ScoringResult:
    """Score one job; `deadline` (time.monotonic) stops the work between stages once passed."""
    _check(deadline, "featurisation")
    t0 = time.perf_counter()
    report = ReadReport()
    timeline = TimelineBuilder(report).build(job.patient_id, job.resources)
    config = scorer.predictor.encode_config
    live = scorer.predictor.featurizer.featurize(
        timeline, job.cutoff, job.encounter_id, job.known_dx, config.max_notes if config.note_tokens else 0
    )
    t1 = time.perf_counter()
    _check(deadline, "the forward pass")
    scores = scorer.score(live)
    t2 = time.perf_counter()
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
        if job.head == "medication" and not _safe_drug(str(meta.get("display", "")), job):
            continue
        chosen.append(label)
    _check(deadline, "explanations")
    findings = scorer.explain(scores, job.head, chosen)
    t3 = time.perf_counter()
    timings = {"featurize": (t1 - t0) * 1e3, "forward": (t2 - t1) * 1e3, "explain": (t3 - t2) * 1e3}
    return ScoringResult(scorer.predictor.version, findings, timings, sum(report.warnings.values()))
