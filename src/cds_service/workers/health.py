"""Worker liveness: a heartbeat in Redis that the API reads before enqueueing, and the container probe."""

from __future__ import annotations

import logging
import socket
import threading
import time

import redis

from cds_service.core.settings import Settings
from cds_service.workers.celery_app import DEFAULT_REDIS
from cds_service.workers.protocol import HEARTBEAT_EVERY_S, heartbeat_key

log = logging.getLogger(__name__)


def worker_alive_here(settings: Settings, stale_s: float = 5.0) -> bool:
    """Whether a worker on this host sent a heartbeat recently (the container's readiness/liveness)."""
    client = redis.Redis.from_url(settings.redis_url or DEFAULT_REDIS, socket_timeout=2.0)
    prefix = f"{socket.gethostname()}:"
    key = heartbeat_key(settings.inference_queue)
    beats: list[tuple[bytes, float]] = client.zrange(key, 0, -1, withscores=True)  # type: ignore[assignment]
    return any(name.decode().startswith(prefix) and when > time.time() - stale_s for name, when in beats)


def _beat_forever(settings: Settings, name: str) -> None:
    client = redis.Redis.from_url(settings.redis_url or DEFAULT_REDIS, socket_timeout=1.0)
    key = heartbeat_key(settings.inference_queue)
    while True:
        try:
            client.zadd(key, {name: time.time()})
        except redis.RedisError:
            log.warning("heartbeat failed: Redis unreachable")
        time.sleep(HEARTBEAT_EVERY_S)


def start_heartbeat(settings: Settings) -> None:
    """A daemon thread that tells the API, once a second, that this worker process is alive."""
    name = f"{socket.gethostname()}:{threading.get_native_id()}:{time.time():.0f}"
    threading.Thread(target=_beat_forever, args=(settings, name), name="heartbeat", daemon=True).start()
