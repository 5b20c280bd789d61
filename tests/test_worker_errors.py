"""A worker whose scoring raises replies at once with the error's type; the API falls back in process
immediately, counted as `worker-error`, instead of waiting out its deadline and counting a deadline miss.
Real Redis and a real worker process."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from cds_service.core.settings import Settings
from cds_service.ml.contract import ScoringJob
from cds_service.serving.inprocess import InProcessBackend
from cds_service.workers.client import CeleryBackend
from tests.celery_helpers import REDIS_URL, start_worker, stop
from tests.conftest import bundle_resources

pytestmark = pytest.mark.slow


def _fallbacks(reason: str) -> float:
    return REGISTRY.get_sample_value("cds_backend_fallbacks_total", {"reason": reason}) or 0.0


def test_a_worker_error_replies_at_once_and_the_api_falls_back(synthea_fhir: Path) -> None:
    queue = f"err-{uuid.uuid4().hex[:8]}"
    proc = start_worker(queue, concurrency=2)
    local = InProcessBackend.load(Settings().resolved_model_dir)
    settings = Settings(redis_url=REDIS_URL, inference_queue=queue, inference_backend="celery")
    backend = CeleryBackend(settings, fallback=local)
    _, resources = next(bundle_resources(synthea_fhir))
    pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    good = ScoringJob("diagnosis", pid, resources, time.time(), max_findings=3)
    bad = replace(good, head="no-such-head")  # scoring it raises (KeyError) wherever it runs
    before = {reason: _fallbacks(reason) for reason in ("worker-error", "deadline")}
    budget_s = 60.0

    async def calls() -> None:
        try:
            started = time.monotonic()
            with pytest.raises(KeyError):  # the in-process fallback's own failure: the fallback did run
                await backend.score(bad, started + budget_s)
            elapsed = time.monotonic() - started
            assert elapsed < budget_s / 2, f"waited {elapsed:.1f} s of a {budget_s:.0f} s budget"
            assert _fallbacks("worker-error") == before["worker-error"] + 1
            assert _fallbacks("deadline") == before["deadline"]
            # the worker survived its failure and still scores
            result = await backend.score(good, time.monotonic() + budget_s)
            assert result.model_version == local.model_version
            assert _fallbacks("worker-error") == before["worker-error"] + 1
        finally:
            await backend.aclose()

    try:
        asyncio.run(calls())
    finally:
        backend.close()
        stop(proc)
