"""Scale-out figures: in-process versus Celery backends, batched versus unbatched workers, bulk scoring.

    python benchmarks/scaleout.py --fhir DIR [--jobs 64] [--bulk-patients 1000] [--redis redis://127.0.0.1:6379/13]

Needs a running Redis. Starts its own worker processes. Prints, on this machine:
  1. throughput (patients/s) and latency p50/p95/p99 of patient scoring at concurrency 1, 8 and 32 for the
     in-process backend and the Celery backend (one worker, micro-batching on);
  2. worker throughput batched (concurrency 16) versus unbatched (concurrency 1): the ratio is the figure;
  3. bulk scoring throughput for N patients with 1 and 2 workers.
Jobs carry a generous deadline, so the figures are of scoring, not of load shedding.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis

from cds_service.core.settings import Settings
from cds_service.fhir.reader import ReadReport
from cds_service.ml.contract import InferenceBackend, ScoringJob
from cds_service.serving.bulk import score_bulk
from cds_service.serving.inprocess import InProcessBackend
from cds_service.timeline.builder import iter_patient_records
from cds_service.workers.client import CeleryBackend
from cds_service.workers.protocol import heartbeat_key


def start_workers(redis_url: str, queue: str, n: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, CDS_REDIS_URL=redis_url, CDS_INFERENCE_QUEUE=queue, CDS_LOG_LEVEL="WARNING")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "worker", "--concurrency", str(concurrency)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]
    client = redis.Redis.from_url(redis_url)
    while client.zcount(heartbeat_key(queue), time.time() - 2, "+inf") < n:
        time.sleep(0.2)
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=60)


async def drive(backend: InferenceBackend, jobs: list[ScoringJob], concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = list(jobs)

    async def worker() -> None:
        while queue:
            job = queue.pop()
            start = time.perf_counter()
            await backend.score(job, time.monotonic() + 600)
            latencies.append((time.perf_counter() - start) * 1e3)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if isinstance(backend, CeleryBackend):
        await backend.aclose()
    return len(jobs) / (time.perf_counter() - start), latencies


def row(label: str, concurrency: int, rate: float, latencies: list[float]) -> None:
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    print(f"{label:<24} {concurrency:>4} {rate:>8.2f} {p50:>7.0f} {p95:>7.0f} {p99:>7.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fhir", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--bulk-patients", type=int, default=1000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--bulk-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--bulk-only", action="store_true", help="skip the backend and batching cells")
    args = parser.parse_args()

    records: list[tuple[str, list[dict[str, Any]]]] = []
    for pid, resources in iter_patient_records([args.fhir], ReadReport()):
        records.append((pid, resources))
        if len(records) >= 16:
            break
    jobs = [ScoringJob("diagnosis", *records[i % len(records)], cutoff=time.time()) for i in range(args.jobs)]
    if not args.bulk_only:
        backend_cells(args, jobs, records)
    bulk_cells(args)


def backend_cells(args: argparse.Namespace, jobs: list[ScoringJob], records: list[Any]) -> None:
    settings = Settings()
    local = InProcessBackend.load(settings.resolved_model_dir)

    print(f"{len(records)} distinct patients, {args.jobs} jobs per cell; this machine: {os.cpu_count()} cores")
    print(f"{'backend':<24} {'conc':>4} {'pat/s':>8} {'p50':>7} {'p95':>7} {'p99':>7}")
    for concurrency in (1, 8, 32):
        rate, lat = asyncio.run(drive(local, jobs, concurrency))
        row("in-process", concurrency, rate, lat)
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    workers = start_workers(args.redis, queue, 1, 16)
    celery = CeleryBackend(Settings(redis_url=args.redis, inference_queue=queue), None)
    try:
        for concurrency in (1, 8, 32):
            rate, lat = asyncio.run(drive(celery, jobs, concurrency))
            row("celery, 1 worker", concurrency, rate, lat)
    finally:
        stop_workers(workers)

    rates = {}
    for label, worker_concurrency in (("unbatched (conc 1)", 1), ("batched (conc 16)", 16)):
        queue = f"bench-{uuid.uuid4().hex[:6]}"
        workers = start_workers(args.redis, queue, 1, worker_concurrency)
        backend = CeleryBackend(Settings(redis_url=args.redis, inference_queue=queue), None)
        try:
            rates[label], lat = asyncio.run(drive(backend, jobs, 32))
            row(f"worker {label}", 32, rates[label], lat)
        finally:
            stop_workers(workers)
    print(f"batched / unbatched worker throughput: {rates['batched (conc 16)'] / rates['unbatched (conc 1)']:.2f}")
    local.close()


def bulk_cells(args: argparse.Namespace) -> None:

    with tempfile.TemporaryDirectory() as tmp:
        population = Path(tmp) / "population"
        population.mkdir()
        files = sorted(args.fhir.glob("*.json"))[: args.bulk_patients]
        for f in files:
            (population / f.name).symlink_to(f.resolve())
        for n_workers in args.bulk_workers:
            queue = f"bench-{uuid.uuid4().hex[:6]}"
            workers = start_workers(args.redis, queue, n_workers, 16)
            backend = CeleryBackend(Settings(redis_url=args.redis, inference_queue=queue), None)
            try:
                start = time.perf_counter()
                counts = asyncio.run(score_bulk(backend, population, Path(tmp) / f"out{n_workers}", 25, 4))
                elapsed = time.perf_counter() - start
                print(f"bulk, {n_workers} worker(s): {counts['scored']} patients in {elapsed:.0f} s = "
                      f"{counts['scored'] / elapsed:.2f} patients/s")  # fmt: skip
            finally:
                stop_workers(workers)


if __name__ == "__main__":
    main()
