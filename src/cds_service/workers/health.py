"""TODO docstring (cds_service.workers.health)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import redis
from celery import signals

from cds_service.core.settings import Settings, get_settings
from cds_service.workers.protocol import HEARTBEAT_EVERY_S, heartbeat_key
from cds_service.workers.tasks import batcher

log = logging.getLogger(__name__)


def worker_alive_here(settings: Settings, stale_s: float = 5.0) -> bool:
    """Whether a worker on this host sent a heartbeat recently (the container's readiness/liveness)."""
    client = redis.Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0", socket_timeout=2.0)
    prefix = f"{socket.gethostname()}:"
    beats: list[tuple[bytes, float]] = client.zrange(heartbeat_key(settings.inference_queue), 0, -1, withscores=True)  # type: ignore[assignment]
    return any(name.decode().startswith(prefix) and when > time.time() - stale_s for name, when in beats)


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
