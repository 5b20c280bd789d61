"""`cds-service score-bulk`: score a bulk-export population, writing RiskAssessment NDJSON.

Exactly once, across crashes: results are written per chunk to a temporary file that is renamed into
place (`part-*.ndjson`) only when complete, and a restart skips every patient already present in a
completed part. A crash loses at most the chunks in flight, never duplicates them. Chunks go to the
Celery workers when Redis is configured (several in flight at once), else are scored in process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cds_service.core.errors import DeadlineMissed
from cds_service.fhir.canonical import RISK_ASSESSMENT_PROFILE
from cds_service.fhir.elements import token_system_url
from cds_service.fhir.reader import ReadReport
from cds_service.ml.contract import Finding, InferenceBackend, ScoringJob, ScoringResult
from cds_service.timeline.builder import iter_patient_records

log = logging.getLogger(__name__)
PART_GLOB = "part-*.ndjson"
JOB_TIMEOUT_S = 600.0
MAX_PREDICTIONS = 10
ATTEMPTS = 3


def done_patients(out: Path) -> set[str]:
    """Patients in completed parts (the only source of truth for what is done)."""
    done: set[str] = set()
    for part in out.glob(PART_GLOB):
        with part.open() as f:
            for line in f:
                subject = json.loads(line)["subject"]["reference"]
                done.add(subject.removeprefix("Patient/"))
    return done


def risk_assessment(patient_id: str, result: ScoringResult, when: str) -> dict[str, Any]:
    def outcome(f: Finding) -> dict[str, Any]:
        code = f.token.split("/", 1)[-1]
        coding: dict[str, Any] = {"code": code, "display": f.display}
        system = token_system_url(f.token)
        if system:
            coding["system"] = system
        return {"coding": [coding], "text": f.display}

    basis = list(dict.fromkeys(e.source for f in result.findings for e in f.evidence[:3]))
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{patient_id}/{result.model_version}/{when}")),
        "meta": {"profile": [RISK_ASSESSMENT_PROFILE]},
        "status": "final",
        "subject": {"reference": f"Patient/{patient_id}"},
        "occurrenceDateTime": when,
        "method": {"text": f"cds-service {result.model_version}"},
        "prediction": [{"outcome": outcome(f), "probabilityDecimal": round(f.probability, 6)} for f in result.findings]
        or [{"outcome": {"text": "no diagnosis above its threshold"}, "probabilityDecimal": 0.0}],
    }
    if basis:
        resource["basis"] = [{"reference": ref} for ref in basis]
    return resource


def _chunks(fhir: Path, skip: set[str], size: int) -> Iterator[list[tuple[str, list[dict[str, Any]]]]]:
    chunk: list[tuple[str, list[dict[str, Any]]]] = []
    for patient_id, resources in iter_patient_records([fhir], ReadReport()):
        if patient_id in skip:
            continue
        chunk.append((patient_id, resources))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_part(out: Path, lines: list[dict[str, Any]]) -> None:
    name = f"part-{uuid.uuid4().hex}.ndjson"
    tmp = out / f".{name}.tmp"
    with tmp.open("w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(out / name)  # atomic: a part is either complete or absent


async def _score_chunk(
    backend: InferenceBackend, chunk: list[tuple[str, list[dict[str, Any]]]], cutoff: float, when: str
) -> list[dict[str, Any]]:
    async def one(patient_id: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
        job = ScoringJob("diagnosis", patient_id, resources, cutoff, max_findings=MAX_PREDICTIONS)
        for attempt in range(1, ATTEMPTS + 1):  # a transient Redis or worker failure costs a retry, not the chunk
            try:
                result = await backend.score(job, time.monotonic() + JOB_TIMEOUT_S)
                return risk_assessment(patient_id, result, when)
            except DeadlineMissed:
                if attempt == ATTEMPTS:
                    raise
                await asyncio.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    return list(await asyncio.gather(*(one(p, r) for p, r in chunk)))


async def score_bulk(
    backend: InferenceBackend, fhir: Path, out: Path, chunk_size: int = 50, in_flight: int = 1
) -> dict[str, int]:
    if out.resolve().is_relative_to(fhir.resolve()):
        raise ValueError("--out must not be inside --fhir (the results would be read as input)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".part-*.tmp"):
        stale.unlink()  # a crash mid-write: that chunk is scored again
    done = done_patients(out)
    cutoff = time.time()
    when = datetime.fromtimestamp(cutoff, tz=UTC).replace(microsecond=0).isoformat()
    counts = {"already_done": len(done), "scored": 0, "failed": 0}
    bar = tqdm(desc="patients", unit=" patients", initial=len(done))
    pending: set[asyncio.Task[list[dict[str, Any]]]] = set()

    async def finish(tasks: set[asyncio.Task[list[dict[str, Any]]]]) -> None:
        for task in tasks:
            try:
                lines = task.result()
            except DeadlineMissed as exc:
                counts["failed"] += 1
                log.error("a chunk failed (%s); run again to score it", exc)
                continue
            _write_part(out, lines)
            counts["scored"] += len(lines)
            bar.update(len(lines))

    for chunk in _chunks(fhir, done, chunk_size):
        pending.add(asyncio.create_task(_score_chunk(backend, chunk, cutoff, when)))
        if len(pending) >= in_flight:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            await finish(finished)
    if pending:
        finished, _ = await asyncio.wait(pending)
        await finish(finished)
    bar.close()
    return counts
