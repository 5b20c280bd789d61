"""The one Celery app: broker and results in Redis, JSON only, and the worker's model and heartbeat.

Workers: `cds-service worker` (one per GPU) = `celery worker --pool threads --concurrency B -Q <queue>`.
The model is loaded once per worker process, on first need or when the worker starts; the device is
CUDA (bf16 autocast) when present, CPU otherwise. A heartbeat in Redis tells the API a worker is alive.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import redis
from celery import Celery, signals

from cds_service.errors import DeadlineMissed
from cds_service.inference.jobs import ScoringJob
from cds_service.settings import Settings, get_settings

log = logging.getLogger(__name__)
HEARTBEAT_PREFIX = "cds:workers:"  # + queue name: a sorted set of worker -> last heartbeat (epoch s)
HEARTBEAT_EVERY_S = 1.0
SCORE_TASK = "cds.score"
REPLY_TTL_S = 60


def heartbeat_key(queue: str) -> str:
    return HEARTBEAT_PREFIX + queue


def worker_alive_here(settings: Settings, stale_s: float = 5.0) -> bool:
    """Whether a worker on this host sent a heartbeat recently (the container's readiness/liveness)."""
    client = redis.Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0", socket_timeout=2.0)
    prefix = f"{socket.gethostname()}:"
    beats: list[tuple[bytes, float]] = client.zrange(heartbeat_key(settings.inference_queue), 0, -1, withscores=True)  # type: ignore[assignment]
    return any(name.decode().startswith(prefix) and when > time.time() - stale_s for name, when in beats)


def make_celery(settings: Settings) -> Celery:
    url = settings.redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("cds_service", broker=url, backend=url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.inference_queue,
        result_expires=300,
        task_ignore_result=False,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        # The API must learn fast that Redis is gone, not retry for minutes: it has a deadline.
        broker_transport_options={"socket_timeout": 1.0, "socket_connect_timeout": 0.5, "max_retries": 0},
        redis_socket_timeout=1.0,
        redis_socket_connect_timeout=0.5,
        task_publish_retry=False,
    )
    return app


app = make_celery(get_settings())

_lock = threading.Lock()
_batcher: Any = None


def batcher() -> Any:
    """This process's micro-batcher and model (built once, after fork)."""
    global _batcher
    with _lock:
        if _batcher is None:
            from cds_service.inference.predictor import Predictor
            from cds_service.inference.scoring import PatientScorer
            from cds_service.workers.batcher import MicroBatcher

            settings = get_settings()
            predictor = Predictor(settings.resolved_model_dir)
            _batcher = MicroBatcher(PatientScorer(predictor), settings.batch_max, settings.batch_wait_ms / 1000)
            log.info("worker model %s on %s", predictor.version, predictor.device)
    return _batcher


def _heartbeat(name: str) -> None:
    client = redis.Redis.from_url(get_settings().redis_url or "redis://127.0.0.1:6379/0", socket_timeout=1.0)
    while True:
        try:
            client.zadd(heartbeat_key(get_settings().inference_queue), {name: time.time()})
        except redis.RedisError:
            log.warning("heartbeat failed: Redis unreachable")
        time.sleep(HEARTBEAT_EVERY_S)


@signals.worker_ready.connect  # type: ignore[untyped-decorator]
def _on_ready(sender: Any = None, **_: Any) -> None:
    batcher()  # load and warm the model before the first request, not during it
    name = f"{socket.gethostname()}:{threading.get_native_id()}:{time.time():.0f}"
    threading.Thread(target=_heartbeat, args=(name,), name="heartbeat", daemon=True).start()


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
