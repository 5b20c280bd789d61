"""Scale-out: real Redis (127.0.0.1:6379) and real worker processes started here."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from cds_service.core.errors import DeadlineMissed
from cds_service.core.settings import Settings
from cds_service.ml.contract import ScoringJob, ScoringResult
from cds_service.serving.inprocess import InProcessBackend
from cds_service.workers.client import CeleryBackend
from cds_service.workers.protocol import heartbeat_key
from tests.celery_helpers import DOWN_URL, REDIS_URL, start_worker, stop
from tests.conftest import bundle_resources


@pytest.fixture(scope="module")
def queue() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def worker(queue: str) -> Iterator[None]:
    proc = start_worker(queue)
    yield
    stop(proc)


@pytest.fixture(scope="module")
def local() -> Iterator[InProcessBackend]:
    backend = InProcessBackend.load(Settings().resolved_model_dir)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def jobs(synthea_fhir: Path) -> list[ScoringJob]:
    out = []
    for _, resources in bundle_resources(synthea_fhir):
        pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        out.append(ScoringJob("diagnosis", pid, resources, time.time(), max_findings=3))
    return out


def summary(result: ScoringResult) -> list[tuple[int, str, list[str]]]:
    return [(f.label, f"{f.probability:.5f}", [e.source for e in f.evidence]) for f in result.findings]


def run(coro: Any, backend: CeleryBackend | None = None) -> Any:
    async def go() -> Any:
        try:
            return await coro
        finally:
            if backend is not None:
                await backend.aclose()  # its connections belong to this event loop

    return asyncio.run(go())


def test_worker_results_equal_in_process_scoring(worker: None, queue: str, local: InProcessBackend,
                                                 jobs: list[ScoringJob]) -> None:  # fmt: skip
    backend = CeleryBackend(Settings(redis_url=REDIS_URL, inference_queue=queue), None)
    for job in jobs[:3]:
        remote = run(backend.score(job, time.monotonic() + 60), backend)
        here = run(local.score(job, time.monotonic() + 60))
        assert remote.model_version == here.model_version
        assert summary(remote) == summary(here)


def test_concurrent_requests_share_a_forward_pass(worker: None, queue: str, jobs: list[ScoringJob]) -> None:
    backend = CeleryBackend(Settings(redis_url=REDIS_URL, inference_queue=queue), None)

    async def many() -> list[ScoringResult]:
        return await asyncio.gather(*(backend.score(job, time.monotonic() + 90) for job in jobs * 2))

    results = run(many(), backend)
    assert len(results) == 2 * len(jobs)
    assert max(r.batch_size for r in results) > 1


def test_killing_the_worker_mid_load_degrades_within_the_deadline(queue: str, local: InProcessBackend,
                                                                  jobs: list[ScoringJob]) -> None:  # fmt: skip
    own_queue = queue + "-kill"
    proc = start_worker(own_queue)
    backend = CeleryBackend(Settings(redis_url=REDIS_URL, inference_queue=own_queue), local)

    async def load() -> list[Any]:
        tasks = [asyncio.create_task(backend.score(job, time.monotonic() + 3.0)) for job in jobs * 2]
        await asyncio.sleep(0.3)
        stop(proc)  # mid-load
        return await asyncio.gather(*tasks, return_exceptions=True)

    started = time.monotonic()
    outcomes = run(load(), backend)
    assert time.monotonic() - started < 3.0 + 1.5
    assert all(isinstance(o, ScoringResult | DeadlineMissed) for o in outcomes), outcomes
    # once its heartbeat is stale the next request falls back to in-process scoring, and gets a real answer
    time.sleep(3.5)
    result = run(backend.score(jobs[0], time.monotonic() + 30), backend)
    assert summary(result) == summary(run(local.score(jobs[0], time.monotonic() + 30)))


def test_redis_down_falls_back_or_gives_up_quickly(local: InProcessBackend, jobs: list[ScoringJob]) -> None:
    settings = Settings(redis_url=DOWN_URL, inference_queue="nowhere")
    started = time.monotonic()
    down = CeleryBackend(settings, local)
    result = run(down.score(jobs[0], time.monotonic() + 30), down)
    assert summary(result) == summary(run(local.score(jobs[0], time.monotonic() + 30)))
    with pytest.raises(DeadlineMissed):
        alone = CeleryBackend(settings, None)
        run(alone.score(jobs[0], time.monotonic() + 30), alone)
    assert time.monotonic() - started < 10


def test_bulk_scoring_fans_out_over_the_workers(worker: None, queue: str, synthea_fhir: Path, tmp_path: Path) -> None:
    from cds_service.serving.bulk import done_patients, score_bulk

    backend = CeleryBackend(Settings(redis_url=REDIS_URL, inference_queue=queue), None)
    counts = run(score_bulk(backend, synthea_fhir, tmp_path / "out", chunk_size=2, in_flight=3), backend)
    assert counts == {"already_done": 0, "scored": 6, "failed": 0}
    assert len(done_patients(tmp_path / "out")) == 6


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of this test's own, so that stopping it disturbs nothing else."""
    from tests.servers import free_port

    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url, proc
    proc.kill()
    proc.wait()


def metric_value(metrics: str, name: str, **labels: str) -> float:
    """One sample of `/metrics` text (0 when the labelled series is absent, as before its first count)."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_the_service_answers_without_5xx_when_workers_die_and_redis_stops(
    own_redis: tuple[str, subprocess.Popen[bytes]], synthea_fhir: Path, tmp_path: Path
) -> None:
    import httpx

    from cds_service.hooks.examples import hook_request, prefetch_for
    from tests.servers import running_server

    url, redis_proc = own_redis
    bodies = []
    for _, resources in list(bundle_resources(synthea_fhir))[:2]:
        pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        bodies.append(hook_request("patient-view", pid, prefetch_for(resources)))
    env = dict(os.environ, CDS_REDIS_URL=url, CDS_INFERENCE_QUEUE="e2e", CDS_LOG_LEVEL="WARNING")
    worker = subprocess.Popen([sys.executable, "-m", "cds_service.cli", "worker", "--concurrency", "4"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    client = redis.Redis.from_url(url)
    while client.zcount(heartbeat_key("e2e"), time.time() - 2, "+inf") == 0:
        assert worker.poll() is None
        time.sleep(0.2)
    settings = Settings(dev_mode=True, data_dir=tmp_path, redis_url=url, inference_queue="e2e", deadline_ms=3000,
                        min_card_probability=0.0, fallback_inprocess=False)  # fmt: skip
    timings = []
    fallbacks = "cds_backend_fallbacks_total"
    misses = {"name": "cds_deadline_misses_total", "service": "diagnosis-suggestions"}
    with running_server(settings) as server:

        def call(body: dict[str, Any]) -> httpx.Response:
            start = time.monotonic()
            response = httpx.post(f"{server}/cds-services/diagnosis-suggestions", json=body, timeout=30)
            timings.append(time.monotonic() - start)
            return response

        def metrics() -> str:
            return httpx.get(f"{server}/metrics").text

        healthy = call(bodies[0])
        before = metrics()
        # scored by the worker (its forward timing reached our metrics); whether a card is shown is the trust
        # gates' business (the first patient's record may be unfamiliar to the model)
        assert healthy.status_code == 200 and metric_value(before, "cds_model_seconds_count", stage="forward") >= 1
        stop(worker)
        # Another patient: the first one's scores are now in the Redis score cache, and a cache hit would
        # answer without ever asking the (dead) worker.
        gone = call(bodies[1])
        after_worker = metrics()
        redis_proc.kill()
        redis_proc.wait()
        down = call(bodies[0])  # Redis gone too: the score cache is down with it, so this scores again
        after_redis = metrics()
    # worker gone: safety-only answer inside the deadline (patient-view has only model cards), because the
    # job went unanswered ("deadline") or the stale heartbeat sent it nowhere ("no-worker"), and it was counted
    assert gone.status_code == 200 and gone.json()["cards"] == [], "model cards: the dead worker was never asked"
    lost_worker = sum(
        metric_value(after_worker, fallbacks, reason=r) - metric_value(before, fallbacks, reason=r)
        for r in ("deadline", "no-worker")
    )
    assert lost_worker >= 1, "the lost worker's fallback was not counted"
    assert metric_value(after_worker, **misses) == metric_value(before, **misses) + 1
    # Redis gone: the liveness check itself fails, counted as "redis-down"
    assert down.status_code == 200 and down.json()["cards"] == [], "model cards with Redis down"
    redis_down = metric_value(after_redis, fallbacks, reason="redis-down")
    assert redis_down >= metric_value(after_worker, fallbacks, reason="redis-down") + 1, redis_down
    assert metric_value(after_redis, **misses) == metric_value(after_worker, **misses) + 1
    assert max(timings[1:]) < 3.0 + 1.0
