"""The scoring task a GPU worker runs, and that process's one micro-batcher and model (built after fork).

The message carries only a Redis key (the patient's record is megabytes: the broker's envelope and
base64 encoding of it would cost more than scoring); the reply goes to a per-request Redis list the API
waits on with BLPOP (exact timeouts, no polling). Every outcome replies: a result, a deadline miss or an
error, so the API never waits out its deadline for a worker that failed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from celery import Celery, shared_task, signals

from cds_service.core.errors import DeadlineMissed
from cds_service.core.settings import Settings, get_settings
from cds_service.ml.artifacts import Predictor
from cds_service.ml.contract import ScoringJob
from cds_service.serving.scorer import PatientScorer
from cds_service.workers.batcher import MicroBatcher
from cds_service.workers.celery_app import DEFAULT_REDIS, make_celery
from cds_service.workers.health import start_heartbeat
from cds_service.workers.protocol import DEADLINE_MISSED, REPLY_TTL_S, SCORE_TASK, WORKER_ERROR

log = logging.getLogger(__name__)

_lock = threading.Lock()
_settings: Settings | None = None
_batcher: MicroBatcher | None = None
_redis: redis.Redis | None = None


def worker_app(settings: Settings) -> Celery:
    """The worker process's Celery app, with the scoring task bound to it and these settings injected."""
    global _settings
    _settings = settings
    app = make_celery(settings)
    app.set_current()  # `shared_task` binds `score` to the current app
    return app


def _worker_settings() -> Settings:
    return _settings or get_settings()


def batcher() -> MicroBatcher:
    """This process's micro-batcher and model (built once, after fork)."""
    global _batcher
    with _lock:
        if _batcher is None:
            settings = _worker_settings()
            predictor = Predictor(settings.resolved_model_dir)
            _batcher = MicroBatcher(PatientScorer(predictor), settings.batch_max, settings.batch_wait_ms / 1000)
            log.info("worker model %s on %s", predictor.version, predictor.device)
    return _batcher


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _on_ready(sender: Any = None, **_: Any) -> None:
    batcher()  # load and warm the model before the first request, not during it
    start_heartbeat(_worker_settings())


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(_worker_settings().redis_url or DEFAULT_REDIS)
    return _redis


def _reply(key: str, payload: dict[str, Any]) -> None:
    with _client().pipeline() as pipe:
        pipe.lpush(key, json.dumps(payload))
        pipe.expire(key, REPLY_TTL_S)
        pipe.execute()


@shared_task(name=SCORE_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def score(job_key: str, enqueued_at: float, reply_to: str) -> None:
    """`job_key`: the Redis key holding the job's JSON; `reply_to`: the list the API waits on."""
    queue_wait_ms = (time.time() - enqueued_at) * 1000
    raw = _client().getdel(job_key)
    if raw is None:
        return  # expired: its deadline is long gone
    scoring_job = ScoringJob.from_json(json.loads(raw))
    if scoring_job.deadline_at is not None and time.time() >= scoring_job.deadline_at:
        return  # nobody waits any more: spend no GPU on it
    try:
        outcome = batcher().submit(scoring_job).result()
    except Exception as exc:  # reply at once: the API falls back now instead of waiting out its deadline
        log.error("scoring failed: %s", type(exc).__name__)  # no message: it may quote patient data
        _reply(reply_to, {WORKER_ERROR: type(exc).__name__})
        return
    if isinstance(outcome, DeadlineMissed):
        _reply(reply_to, {DEADLINE_MISSED: str(outcome)})
        return
    result: dict[str, Any] = outcome.to_json()
    result["queue_wait_ms"] = queue_wait_ms
    _reply(reply_to, result)
