"""Where scoring runs. `InProcessBackend` is the embedded default: one model, one scoring thread.

A single thread because the 2-core default host gains nothing from parallel forwards and loses latency
to thread contention; requests queue instead, and a job whose deadline passed while queued is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from cds_service.core.errors import DeadlineMissed
from cds_service.ml.artifacts import Predictor
from cds_service.ml.contract import ScoringJob, ScoringResult
from cds_service.serving.jobs import run_job
from cds_service.serving.scorer import PatientScorer

log = logging.getLogger(__name__)


class InProcessBackend:
    name = "inprocess"

    def __init__(self, predictor: Predictor) -> None:
        self.scorer = PatientScorer(predictor)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self._pending = 0  # jobs queued or running, including ones whose caller stopped waiting
        self._lock = threading.Lock()
        self._job_seconds = 0.2  # moving average of a job's duration, for admission control

    @classmethod
    def load(cls, model_dir: Path, threads: int | None = None) -> InProcessBackend:
        if threads:
            torch.set_num_threads(threads)
        return cls(Predictor(model_dir))

    @property
    def model_version(self) -> str | None:
        return self.scorer.predictor.version

    def _run(self, job: ScoringJob, deadline: float) -> ScoringResult:
        started = time.monotonic()
        try:
            return run_job(self.scorer, job, deadline)
        finally:
            with self._lock:
                self._pending -= 1
                self._job_seconds = 0.8 * self._job_seconds + 0.2 * (time.monotonic() - started)

    async def score(self, job: ScoringJob, deadline: float) -> ScoringResult:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineMissed("no time left for scoring")
        # Admission control: a job that would only start after its deadline is refused now, so the
        # answer goes out at once and the CPU stays free for jobs that can still make theirs.
        if (self._pending + 1) * self._job_seconds > remaining:
            raise DeadlineMissed(f"shed: {self._pending} jobs ahead")
        with self._lock:
            self._pending += 1
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._run, job, deadline)
        try:
            return await asyncio.wait_for(future, timeout=remaining)
        except TimeoutError as exc:
            raise DeadlineMissed("scoring missed the deadline") from exc

    def warm_up(self, job: ScoringJob) -> None:
        run_job(self.scorer, job)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
