"""Scoring on remote workers through Celery and Redis, with graceful degradation.

Redis unreachable, no live worker (no heartbeat in the last few seconds) or a worker that replied with an
error: fall back to in-process scoring when the API holds the model, else give up at once (the answer has
safety cards only). A job
enqueued but not answered by the deadline is a deadline miss. Every fallback is counted by reason.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import redis.asyncio as aioredis
from kombu.exceptions import OperationalError

from cds_service.core.errors import DeadlineMissed
from cds_service.core.settings import Settings
from cds_service.core.telemetry import BATCH_SIZE, FALLBACKS, QUEUE_WAIT
from cds_service.ml.contract import InferenceBackend, ScoringJob, ScoringResult
from cds_service.workers.celery_app import make_celery
from cds_service.workers.protocol import (
    DEADLINE_MISSED,
    SCORE_TASK,
    WORKER_ERROR,
    WORKER_STALE_S,
    heartbeat_key,
    job_key_ttl_s,
    new_job_key,
    new_reply_key,
)

log = logging.getLogger(__name__)


class CeleryBackend:
    name = "celery"

    def __init__(self, settings: Settings, fallback: InferenceBackend | None) -> None:
        self.settings = settings
        self.app = make_celery(settings)
        self.fallback = fallback
        self._async_redis: aioredis.Redis | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._waiters = ThreadPoolExecutor(max_workers=settings.max_waiting_requests, thread_name_prefix="celery-wait")
        self._redis = redis.Redis.from_url(settings.redis_url or "", socket_timeout=0.5, socket_connect_timeout=0.5)

    async def _blocking(self, deadline: float, fn: Any, *args: Any) -> Any:
        # Celery's client is blocking: each call holds a thread. The loop's default executor has only
        # cpu+4 threads, which would queue requests behind each other past their deadlines; and a slow
        # Redis must not hold the request past its deadline either.
        call = functools.partial(fn, *args)
        future = asyncio.get_running_loop().run_in_executor(self._waiters, call)
        try:
            return await asyncio.wait_for(future, timeout=max(deadline - time.monotonic(), 0.001))
        except TimeoutError as exc:
            raise DeadlineMissed("Redis too slow for the deadline") from exc

    @property
    def model_version(self) -> str | None:
        return self.fallback.model_version if self.fallback is not None else None

    def _workers_alive(self) -> bool:
        key = heartbeat_key(self.settings.inference_queue)
        return int(self._redis.zcount(key, time.time() - WORKER_STALE_S, "+inf")) > 0

    async def _fall_back(self, job: ScoringJob, deadline: float, reason: str) -> ScoringResult:
        FALLBACKS.labels(reason=reason).inc()
        if self.fallback is None:
            raise DeadlineMissed(f"{reason}; no in-process model to fall back to")
        log.warning("celery backend unavailable (%s): scoring in process", reason)
        return await self.fallback.score(job, deadline)

    def _send(self, job: ScoringJob, expires_s: float, reply_to: str) -> Any:
        job_key = new_job_key()
        self._redis.set(job_key, json.dumps(job.to_json()), ex=job_key_ttl_s(expires_s))
        return self.app.send_task(
            SCORE_TASK,
            args=[job_key, time.time(), reply_to],
            queue=self.settings.inference_queue,
            expires=expires_s,
            ignore_result=True,
        )

    def _replies(self) -> aioredis.Redis:
        # redis.asyncio clients belong to one event loop; the API has one, tests may run several.
        loop = asyncio.get_running_loop()
        if self._async_redis is None or self._async_loop is not loop:
            # No socket timeout: BLPOP's own timeout bounds the wait (a closed connection still errors).
            self._async_redis = aioredis.from_url(
                self.settings.redis_url or "", socket_connect_timeout=0.5, socket_timeout=None
            )
            self._async_loop = loop
        return self._async_redis

    async def score(self, job: ScoringJob, deadline: float) -> ScoringResult:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineMissed("no time left for scoring")
        job.deadline_at = time.time() + remaining
        try:
            alive = await self._blocking(deadline, self._workers_alive)
        except redis.RedisError:
            return await self._fall_back(job, deadline, "redis-down")
        if not alive:
            return await self._fall_back(job, deadline, "no-worker")
        reply_to = new_reply_key()
        try:
            await self._blocking(deadline, self._send, job, remaining, reply_to)
        except (OperationalError, redis.RedisError, OSError):
            return await self._fall_back(job, deadline, "redis-down")
        wait = deadline - time.monotonic()
        try:
            popped = (
                await asyncio.wait_for(self._replies().blpop([reply_to], timeout=max(wait, 0.01)), wait + 1.0)
                if wait > 0
                else None
            )
        except (redis.RedisError, OSError, TimeoutError) as exc:
            FALLBACKS.labels(reason="redis-down").inc()
            raise DeadlineMissed("lost Redis while waiting") from exc
        if popped is None:
            FALLBACKS.labels(reason="deadline").inc()
            raise DeadlineMissed("no worker answer before the deadline")
        payload = json.loads(popped[1])
        if WORKER_ERROR in payload:  # the worker failed at once: fall back with the time that is left
            return await self._fall_back(job, deadline, "worker-error")
        if DEADLINE_MISSED in payload:
            raise DeadlineMissed(str(payload[DEADLINE_MISSED]))
        result = ScoringResult.from_json(payload)
        BATCH_SIZE.observe(result.batch_size)
        QUEUE_WAIT.observe(result.queue_wait_ms / 1000)
        return result

    async def aclose(self) -> None:
        """Close this loop's Redis connections (call from the loop that used them)."""
        if self._async_redis is not None:
            await self._async_redis.aclose()
            self._async_redis = None

    def close(self) -> None:
        if self.fallback is not None:
            self.fallback.close()
        self._redis.close()
        self._waiters.shutdown(wait=False, cancel_futures=True)
