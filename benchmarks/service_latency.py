"""patient-view latency through the real server, beside the bare model forward for the same inputs.

    python benchmarks/service_latency.py --fhir DIR [--requests 40] [--port 8765]

Picks a typical patient (median resource count) and a large one (the largest, at least 5,000 resources)
from a Synthea FHIR directory, starts `cds-service serve --dev` in a subprocess (its own cores and event
loop, as in production), and fires patient-view requests with full prefetch at concurrency 1 and 8.
Prints p50/p95/p99 per case, deadline misses, and the bare model forward (featurised input, one
forward, no explanations) measured in this process; the figure is the ratio p50 / forward.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from cds_service.core.settings import get_settings
from cds_service.fhir.reader import ReadReport, iter_file_resources
from cds_service.hooks.examples import hook_request, prefetch_for
from cds_service.ml.artifacts import Predictor
from cds_service.ml.features import encode, pad_batch
from cds_service.ml.tensors import to_tensors
from cds_service.timeline.builder import TimelineBuilder


def load_patients(fhir: Path, limit: int) -> list[list[dict[str, Any]]]:
    out = []
    for path in sorted(fhir.glob("*.json"))[:limit]:
        resources = list(iter_file_resources(path, ReadReport()))
        if any(r.get("resourceType") == "Patient" for r in resources):
            out.append(resources)
    return out


def pid(resources: list[dict[str, Any]]) -> str:
    return str(next(r["id"] for r in resources if r["resourceType"] == "Patient"))


def forward_ms(predictor: Predictor, resources: list[dict[str, Any]], runs: int = 20) -> float:
    timeline = TimelineBuilder().build(pid(resources), resources)
    live = predictor.featurizer.featurize(timeline, time.time())
    features, _ = encode(live.history, predictor.space, predictor.encode_config)
    batch = to_tensors(pad_batch([features]), predictor.device)
    known = torch.zeros((1, 1), dtype=torch.int64)
    times = []
    with torch.inference_mode():
        for i in range(runs + 3):
            start = time.perf_counter()
            predictor.model(batch, known)
            if i >= 3:
                times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


async def fire(url: str, body: bytes, n: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    async with httpx.AsyncClient(timeout=60) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                start = time.perf_counter()
                response = await client.post(url, content=body, headers={"content-type": "application/json"})
                latencies.append((time.perf_counter() - start) * 1e3)
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def deadline_misses(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return sum(float(m) for m in re.findall(r"^cds_deadline_misses_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fhir", type=Path, required=True, help="a Synthea FHIR directory (cds-service data synth)")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--patients", type=int, default=200, help="patients read to pick typical and large ones")
    args = parser.parse_args()

    patients = sorted(load_patients(args.fhir, args.patients), key=len)
    typical = patients[len(patients) // 2]
    large = patients[-1]
    if len(large) < 5000:
        sys.exit(f"no patient with 5,000+ resources in {args.fhir} (largest: {len(large)}); generate more")

    predictor = Predictor(get_settings().resolved_model_dir)
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as data_dir:
        env = dict(os.environ, CDS_DATA_DIR=data_dir, CDS_LOG_LEVEL="WARNING")
        server = subprocess.Popen(
            [sys.executable, "-m", "cds_service.cli", "serve", "--dev", "--port", str(args.port)], env=env
        )
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            print(f"torch threads (this process) {torch.get_num_threads()}; deadline {get_settings().deadline_ms} ms")
            print(f"{'case':<22} {'conc':>4} {'p50':>7} {'p95':>7} {'p99':>7} {'fwd':>6} {'p50/fwd':>8} {'misses':>6}")
            for name, resources in (("typical", typical), ("large", large)):
                body = json.dumps(hook_request("patient-view", pid(resources), prefetch_for(resources))).encode()
                url = f"{base}/cds-services/diagnosis-suggestions"
                asyncio.run(fire(url, body, 3, 1))  # warm this patient's path
                fwd = forward_ms(predictor, resources)
                for concurrency in (1, 8):
                    before = deadline_misses(base)
                    latencies = asyncio.run(fire(url, body, args.requests, concurrency))
                    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
                    misses = deadline_misses(base) - before
                    label = f"{name} ({len(resources)} res)"
                    print(f"{label:<22} {concurrency:>4} {p50:>7.0f} {p95:>7.0f} {p99:>7.0f} {fwd:>6.1f} "
                          f"{p50 / fwd:>8.1f} {misses:>6.0f}")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
