"""Bulk scoring of a bulk-export NDJSON population: killed mid-run and restarted, everyone scored once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from fhir.resources.R4B.riskassessment import RiskAssessment

from cds_service.conformance.profiles import conformance_resources, problems
from cds_service.fhir.reader import ReadReport
from cds_service.timeline.builder import iter_patient_records


def bulk(fhir: Path, out: Path, capture: bool = True) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "CDS_REDIS_URL"}  # in process: no Redis
    argv = [sys.executable, "-m", "cds_service.cli", "score-bulk", "--fhir", str(fhir), "--out", str(out)]
    stdout = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([*argv, "--chunk-size", "3"], env=env, stdout=stdout, stderr=subprocess.DEVNULL)


def test_killed_and_restarted_bulk_scoring_scores_everyone_exactly_once(clinosim_fhir: Path, tmp_path: Path) -> None:
    population = dict(iter_patient_records([clinosim_fhir], ReadReport()))
    out = tmp_path / "scores"
    first = bulk(clinosim_fhir, out, capture=False)
    deadline = time.monotonic() + 300
    while not list(out.glob("part-*.ndjson")):
        assert first.poll() is None and time.monotonic() < deadline, "bulk scoring ended before it could be killed"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    parts_before = len(list(out.glob("part-*.ndjson")))
    assert parts_before > 0

    second = bulk(clinosim_fhir, out)
    stdout, _ = second.communicate(timeout=600)
    assert second.returncode == 0
    counts = json.loads(stdout.decode().strip().splitlines()[-1])
    assert counts["already_done"] >= 3 and counts["failed"] == 0

    subjects: Counter[str] = Counter()
    profile = next(r for r in conformance_resources().values() if r.get("type") == "RiskAssessment")
    for part in out.glob("part-*.ndjson"):
        for line in part.read_text().splitlines():
            resource = json.loads(line)
            RiskAssessment.model_validate(resource)
            assert problems(resource, profile) == []
            pid = resource["subject"]["reference"].removeprefix("Patient/")
            subjects[pid] += 1
            present = {f"{r['resourceType']}/{r.get('id')}" for r in population[pid]}
            assert all(b["reference"] in present for b in resource.get("basis", []))
    assert set(subjects) == set(population)
    assert max(subjects.values()) == 1
    assert not list(out.glob(".part-*"))  # no temporary files left behind
