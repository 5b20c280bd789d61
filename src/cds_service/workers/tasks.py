"""TODO docstring (cds_service.workers.tasks)."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis

from cds_service.core.errors import DeadlineMissed
from cds_service.core.settings import get_settings
from cds_service.ml.contract import ScoringJob
from cds_service.workers.celery_app import app
from cds_service.workers.protocol import REPLY_TTL_S, SCORE_TASK

log = logging.getLogger(__name__)


_lock = threading.Lock()


_batcher: Any = None


def batcher() -> Any:
    """This process's micro-batcher and model (built once, after fork)."""
    global _batcher
    with _lock:
        if _batcher is None:
            from cds_service.ml.artifacts import Predictor
            from cds_service.serving.scorer import PatientScorer
            from cds_service.workers.batcher import MicroBatcher

            settings = get_settings()
            predictor = Predictor(settings.resolved_model_dir)
            _batcher = MicroBatcher(PatientScorer(predictor), settings.batch_max, settings.batch_wait_ms / 1000)
            log.info("worker model %s on %s", predictor.version, predictor.device)
    return _batcher


_redis: redis.Redis | None = None


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(get_settings().redis_url or "redis://127.0.0.1:6379/0")
    return _redis


def _reply(key: str, payload: dict[str, Any]) -> None:
    """Results go to a per-request Redis list the API waits on with BLPOP (exact timeouts, no polling)."""
    with _client().pipeline() as pipe:
        pipe.lpush(key, json.dumps(payload))
        pipe.expire(key, REPLY_TTL_S)
        pipe.execute()


@app.task(name=SCORE_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
def score(job_key: str, enqueued_at: float, reply_to: str) -> None:
    """`job_key`: the Redis key holding the job's JSON (the message itself stays small: a patient's
    record is megabytes, and the broker's envelope and base64 encoding of it would cost more than scoring)."""
    queue_wait_ms = (time.time() - enqueued_at) * 1000
    raw = _client().getdel(job_key)
    if raw is None:
        return  # expired: its deadline is long gone
    scoring_job = ScoringJob.from_json(json.loads(raw))
    if scoring_job.deadline_at is not None and time.time() >= scoring_job.deadline_at:
        return  # nobody waits any more: spend no GPU on it
    outcome = batcher().submit(scoring_job).result()
    if isinstance(outcome, DeadlineMissed):
        _reply(reply_to, {"deadline_missed": str(outcome)})
        return
    result: dict[str, Any] = outcome.to_json()
    result["queue_wait_ms"] = queue_wait_ms
    _reply(reply_to, result)
