"""Micro-batching inside one worker process: jobs from concurrent tasks share one forward pass.

Celery runs B tasks at once on a thread pool (`--pool threads --concurrency B`); each task hands its job to
the batcher and waits. The batcher thread takes the first job, then whatever else arrives within
`max_wait_s` (up to `max_batch`), runs them together and hands each caller its own result.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

from cds_service.core.errors import DeadlineMissed
from cds_service.ml.contract import ScoringJob, ScoringResult
from cds_service.serving.jobs import run_jobs
from cds_service.serving.scorer import PatientScorer

log = logging.getLogger(__name__)

Outcome = ScoringResult | DeadlineMissed


class MicroBatcher:
    def __init__(self, scorer: PatientScorer, max_batch: int, max_wait_s: float) -> None:
        self.scorer = scorer
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue[tuple[ScoringJob, Future[Outcome]]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: ScoringJob) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        self._queue.put((job, future))
        return future

    def _collect(self) -> list[tuple[ScoringJob, Future[Outcome]]]:
        batch = [self._queue.get()]
        until = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = until - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            jobs = [job for job, _ in batch]
            try:
                outcomes = run_jobs(self.scorer, jobs, [job.monotonic_deadline() for job in jobs])
            except Exception as exc:  # one bad batch must not kill the worker's batcher
                log.error("batch of %d failed: %s", len(batch), type(exc).__name__)  # no message: it may hold PHI
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                future.set_result(outcome)
