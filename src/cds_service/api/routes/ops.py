"""Operations endpoints: liveness, readiness, the model card and Prometheus metrics.

Readiness says "degraded" rather than failing when no model is loaded: the services still answer
with safety cards, so the pod should stay in rotation; what is running is visible at a glance.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cds_service.api.deps import BackendDep, ResourcesDep, SettingsDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/readyz")
async def readyz(backend: BackendDep, settings: SettingsDep, resources: ResourcesDep) -> JSONResponse:
    """Each dependency's state: a failing database or Redis degrades the service (audit records spool
    locally, replay checks run in process) but never takes it out of rotation."""
    model = backend.model_version if backend is not None else None
    database = resources.audit.database_state
    redis = resources.verifier.replay.redis_state
    degraded = [name for name, state in (("database", database), ("redis", redis)) if state == "down"]
    status = "ready" if model and not degraded else "degraded"
    body = {
        "status": status,
        "model": model or "none (safety cards only)",
        "auth": "jwt" if settings.auth_enabled else "OFF (dev mode)",
        "database": database,
        "audit_spooled": resources.audit.spooled(),
        "redis": redis,
    }
    return JSONResponse(body)


@router.get("/model-card", response_class=PlainTextResponse)
async def model_card(settings: SettingsDep) -> PlainTextResponse:
    path = settings.resolved_model_dir / "MODEL_CARD.md"
    text = path.read_text() if path.is_file() else "No model card: no model is loaded."
    return PlainTextResponse(text, media_type="text/markdown")


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
