"""Running scoring jobs: featurise, one batched forward pass, choose the labels, explain them.

Every stage boundary checks the job's deadline (cooperative cancellation), so a job whose caller has
stopped waiting costs no more CPU; each job of a batch keeps its own deadline and result.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from cds_service.core.errors import DeadlineMissed
from cds_service.fhir.reader import ReadReport
from cds_service.ml.contract import ScoringJob, ScoringResult
from cds_service.ml.familiarity import Familiarity, RecordMeasures, canonical_cutoff
from cds_service.ml.live import LiveHistory
from cds_service.ml.recommend import choose
from cds_service.serving.explain import Explainer
from cds_service.serving.scorer import PatientScorer, PatientScores
from cds_service.timeline.builder import TimelineBuilder


def _check(deadline: float | None, stage: str) -> None:
    # Cooperative cancellation: a thread cannot be interrupted, so stop between stages instead of
    # spending CPU on an answer nobody will wait for.
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineMissed(f"deadline passed before {stage}")


def _featurize(scorer: PatientScorer, job: ScoringJob) -> tuple[LiveHistory, int, RecordMeasures]:
    """The job's inputs, read as of the guard's fixed gap after the last event (the scoring time is no input),
    and the guard's measures taken at the real scoring time (a stale record is unfamiliar, not re-dated)."""
    report = ReadReport()
    timeline = TimelineBuilder(report).build(job.patient_id, job.resources)
    config = scorer.predictor.encode_config
    live = scorer.predictor.featurizer.featurize(
        timeline, job.cutoff, job.encounter_id, job.known_dx, config.max_notes if config.note_tokens else 0
    )
    measures = RecordMeasures.of(live.history)
    guard = scorer.predictor.guard
    if guard is not None:
        live.history = canonical_cutoff(live.history, guard.scoring_gap_days)
    return live, sum(report.warnings.values()), measures


def familiarity(scorer: PatientScorer, measures: RecordMeasures, scores: PatientScores) -> Familiarity:
    guard = scorer.predictor.guard
    if guard is None:  # a model without a fitted guard cannot tell a familiar record: fail closed
        return Familiarity(False, ["no-guard"])
    return guard.check(measures, scores.pooled)


def _chosen(scorer: PatientScorer, job: ScoringJob, scores: PatientScores) -> list[int]:
    predictor = scorer.predictor
    return choose(
        job,
        scores.probabilities[job.head],
        predictor.labels[job.head],
        predictor.thresholds[job.head],
        predictor.medication_interactions,
    )


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
    prepared: list[tuple[int, LiveHistory, int, RecordMeasures]] = []
    for i, (job, deadline) in enumerate(zip(jobs, deadlines, strict=True)):
        try:
            _check(deadline, "featurisation")
            live, skipped, measures = _featurize(scorer, job)
            _check(deadline, "the forward pass")
            prepared.append((i, live, skipped, measures))
        except DeadlineMissed as exc:
            results[i] = exc
    if not prepared:
        return results
    t1 = time.perf_counter()
    all_scores = scorer.score_many([live for _, live, _, _ in prepared])
    t2 = time.perf_counter()
    for (i, _, skipped, measures), scores in zip(prepared, all_scores, strict=True):
        try:
            _check(deadlines[i], "explanations")
        except DeadlineMissed as exc:
            results[i] = exc
            continue
        start = time.perf_counter()
        scores.probabilities[jobs[i].head]  # an unknown head fails here, familiar record or not (KeyError)
        verdict = familiarity(scorer, measures, scores)
        # An unfamiliar record gets no findings: nothing to explain, and nothing a card could show.
        findings = (
            Explainer(scorer).explain(scores, jobs[i].head, _chosen(scorer, jobs[i], scores))
            if verdict.familiar
            else []
        )
        timings = {
            "featurize": (t1 - t0) * 1e3 / len(prepared),
            "forward": (t2 - t1) * 1e3,
            "explain": (time.perf_counter() - start) * 1e3,
        }
        results[i] = ScoringResult(
            scorer.predictor.version, findings, timings, skipped, batch_size=len(prepared), familiarity=asdict(verdict)
        )
    return results
