"""The one place that builds a scoring backend from settings (used by `serve`, through the API, and `score-bulk`).

Kept apart from the API and the services so that they see only the `InferenceBackend` Protocol: which
backend runs (in process, or Celery workers with an in-process fallback) is configuration, decided here.
A missing model is not fatal: the API then answers with safety cards only, and says so at start-up.
"""

from __future__ import annotations

import logging
import time

from cds_service.core.settings import Settings
from cds_service.ml.contract import InferenceBackend, ScoringJob
from cds_service.serving.inprocess import InProcessBackend

log = logging.getLogger(__name__)


def load_backend(settings: Settings) -> InferenceBackend | None:
    """The configured backend, loaded and warmed; None when there is no model to score with."""
    if settings.resolved_backend == "celery":
        from cds_service.workers.client import CeleryBackend  # only a Celery deployment needs the client

        local = _load_inprocess(settings) if settings.fallback_inprocess else None
        log.info(
            "scoring on Celery workers (queue %s); in-process fallback: %s",
            settings.inference_queue,
            "yes" if local else "no",
        )
        return CeleryBackend(settings, local)
    return _load_inprocess(settings)


def _load_inprocess(settings: Settings) -> InProcessBackend | None:
    model_dir = settings.resolved_model_dir
    if not (model_dir / "model.safetensors").is_file():
        log.error("no model at %s: services answer with safety cards only", model_dir)
        return None
    backend = InProcessBackend.load(model_dir, settings.torch_threads)
    started = time.perf_counter()
    # One throwaway job, so that the first real request does not pay for lazy initialisation.
    warm = ScoringJob("diagnosis", "warm-up", [{"resourceType": "Patient", "id": "warm-up"}], time.time())
    backend.warm_up(warm)
    log.info("model %s loaded and warmed in %.0f ms", backend.model_version, (time.perf_counter() - started) * 1e3)
    return backend
