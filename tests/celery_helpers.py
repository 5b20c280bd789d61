"""Real worker processes for the scale-out tests: started against real Redis, killed without goodbye."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import redis

from cds_service.workers.protocol import heartbeat_key

REDIS_URL = "redis://127.0.0.1:6379/14"
DOWN_URL = "redis://127.0.0.1:6399/0"  # nothing listens here: Redis as seen when it is stopped


def start_worker(queue: str, concurrency: int = 8) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CDS_REDIS_URL=REDIS_URL, CDS_INFERENCE_QUEUE=queue, CDS_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "cds_service.cli", "worker", "--concurrency", str(concurrency)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    client = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + 90
    while client.zcount(heartbeat_key(queue), time.time() - 2, "+inf") == 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("worker did not start")
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)  # no goodbye: its heartbeat simply goes stale
    proc.wait(timeout=30)
