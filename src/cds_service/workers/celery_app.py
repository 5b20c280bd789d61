"""The one Celery app factory: broker and results in Redis, JSON only, fail fast when Redis is gone.

Both sides build their app from injected settings: the API's client (`workers.client`) to publish, the
worker process (`workers.tasks.worker_app`) to consume. Nothing is read from the environment at import.
Workers: `cds-service worker` (one per GPU) = `celery worker --pool threads --concurrency B -Q <queue>`.
"""

from __future__ import annotations

from celery import Celery

from cds_service.core.settings import Settings

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def make_celery(settings: Settings) -> Celery:
    url = settings.redis_url or DEFAULT_REDIS
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
