"""The one Celery app: broker and results in Redis, JSON only, and the worker's model and heartbeat.

Workers: `cds-service worker` (one per GPU) = `celery worker --pool threads --concurrency B -Q <queue>`.
The model is loaded once per worker process, on first need or when the worker starts; the device is
CUDA (bf16 autocast) when present, CPU otherwise. A heartbeat in Redis tells the API a worker is alive.
"""

from __future__ import annotations

import logging

from celery import Celery

from cds_service.core.settings import Settings, get_settings

log = logging.getLogger(__name__)


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
