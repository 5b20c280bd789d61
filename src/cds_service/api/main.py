"""The HTTP layer: thin routes over the service registry, the dispatcher, auth and storage.

Status codes, in one place: 400 malformed request (the message names the field), 401 JWT rejected
(bare), 404 unknown service, 412 required data unavailable (OperationOutcome), 413 body too large.
Anything unexpected while answering a hook degrades to `{"cards": []}`, never a 5xx to the EHR.
"""

from __future__ import annotations

import gc
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from cds_service.api.auth import JwtVerifier, ReplayCache
from cds_service.api.limits import BodySizeLimit
from cds_service.core.errors import AuthError, PrefetchUnavailable
from cds_service.core.settings import Settings, get_settings
from cds_service.core.telemetry import CARDS_RETURNED, FEEDBACK, HOOK_ERRORS, REQUEST_LATENCY
from cds_service.hooks.wire import (
    CdsResponse,
    ContextError,
    Discovery,
    FeedbackItem,
    FeedbackRequest,
    HookRequest,
    dump,
)
from cds_service.ml.contract import InferenceBackend
from cds_service.runtime import load_backend
from cds_service.services.answer import HookAnswer, HookDispatcher
from cds_service.services.registry import SERVICES, ServiceSpec, discovery
from cds_service.serving.cache import ScoreCache
from cds_service.storage.db import Store, make_engine, migrate

log = logging.getLogger("cds_service.api")


class AppState:
    """Everything loaded once at start-up."""

    def __init__(
        self,
        settings: Settings,
        backend: InferenceBackend | None,
        store: Store,
        http: httpx.AsyncClient,
        verifier: JwtVerifier,
        replay: ReplayCache,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.store = store
        self.http = http
        self.verifier = verifier
        self.replay = replay
        self.cache = ScoreCache(settings.redis_url, settings.cache_ttl_s)
        self.dispatcher = HookDispatcher(settings, backend, http, self.cache)


def _state(request: Request) -> AppState:
    cds: AppState = request.app.state.cds
    return cds


State = Annotated[AppState, Depends(_state)]


def tune_gc() -> None:
    """Hook bodies are big JSON trees (millions of objects for a large patient): with default
    thresholds the cyclic GC rescans the long-lived model and app objects many times per request.
    Freeze what start-up built and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _operation_outcome(status: int, code: str, message: str) -> JSONResponse:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }
    return JSONResponse(outcome, status_code=status, media_type="application/fhir+json")


def _field_message(exc: ValidationError | RequestValidationError) -> str:
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    return f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid')}"


def create_app(settings: Settings | None = None, backend: InferenceBackend | str | None = "load") -> FastAPI:
    """`backend="load"` loads the configured model at start-up; pass a backend or None to inject one."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.resolved_database_url)
        await run_in_threadpool(migrate, engine)
        chosen = load_backend(settings) if backend == "load" else backend
        tune_gc()
        http = httpx.AsyncClient(follow_redirects=False)
        replay = ReplayCache(settings.redis_url)
        verifier = JwtVerifier(settings, http, replay)
        app.state.cds = AppState(
            settings, chosen if not isinstance(chosen, str) else None, Store(engine), http, verifier, replay
        )
        if not settings.auth_enabled:
            log.warning("!!! DEVELOPMENT MODE: CDS client JWTs are NOT verified. Never expose this to an EHR. !!!")
        yield
        if app.state.cds.backend is not None:
            app.state.cds.backend.close()
        await http.aclose()
        await replay.close()
        await app.state.cds.cache.close()
        engine.dispose()

    app = FastAPI(
        title="cds-service",
        version="0.1.0",
        summary="CDS Hooks 2.0 services: diagnosis suggestions and treatment recommendations with evidence.",
        lifespan=lifespan,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        max_age=600,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        service_id = request.path_params.get("service_id")
        if service_id is not None and service_id not in SERVICES:  # unknown service beats a bad body
            return _problem(404, f"no CDS service named {service_id!r}")
        return _problem(400, _field_message(exc))

    async def authorize(request: Request, cds: AppState, service_id: str) -> None:
        if not cds.settings.auth_enabled:
            return
        base = cds.settings.public_url.rstrip("/")
        audiences = [f"{base}/cds-services/{service_id}", f"{base}{request.url.path}"]
        await cds.verifier.verify(request.headers.get("authorization"), audiences)

    async def admit(service_id: str, request: Request, cds: AppState) -> ServiceSpec | Response:
        """The service called, or the 404/401 answer (the body of a 401 is empty, as the spec asks)."""
        service = SERVICES.get(service_id)
        if service is None:
            return _problem(404, f"no CDS service named {service_id!r}")
        try:
            await authorize(request, cds, service_id)
        except AuthError:
            HOOK_ERRORS.labels(service=service.id, status="401").inc()
            return Response(status_code=401)
        return service

    @app.get("/cds-services", response_model=Discovery, response_model_exclude_none=True, tags=["CDS Hooks"])
    async def discover() -> dict[str, Any]:
        return dump(discovery())

    @app.post(
        "/cds-services/{service_id}",
        response_model=CdsResponse,
        response_model_exclude_none=True,
        tags=["CDS Hooks"],
        responses={
            400: {"description": "Malformed request"},
            401: {"description": "JWT rejected"},
            404: {"description": "Unknown service"},
            412: {"description": "Required data unavailable"},
            413: {"description": "Body too large"},
        },
    )
    async def call_service(service_id: str, payload: HookRequest, request: Request, cds: State) -> Response:
        started = time.perf_counter()
        service = await admit(service_id, request, cds)
        if isinstance(service, Response):
            return service
        if payload.hook != service.hook:
            HOOK_ERRORS.labels(service=service.id, status="400").inc()
            return _problem(400, f"hook: service {service.id!r} answers {service.hook!r}, not {payload.hook!r}")
        status, body, answer = await _answer(cds, service, payload, getattr(request.state, "received", None))
        elapsed = time.perf_counter() - started
        REQUEST_LATENCY.labels(service=service.id, hook=payload.hook).observe(elapsed)
        await _audit(cds, service, payload, status, answer)
        log.info(
            "%s %s hookInstance=%s status=%d cards=%d outcome=%s %.0f ms",
            service.id,
            payload.hook,
            payload.hookInstance,
            status,
            len(answer.cards),
            answer.outcome,
            elapsed * 1e3,
        )
        return body

    async def _answer(
        cds: AppState, service: ServiceSpec, payload: HookRequest, received: float | None
    ) -> tuple[int, Response, HookAnswer]:
        try:
            answer = await cds.dispatcher.handle(service, payload, received)
        except ContextError as exc:
            HOOK_ERRORS.labels(service=service.id, status="400").inc()
            return 400, _problem(400, str(exc)), HookAnswer(reasons=["bad-context"])
        except PrefetchUnavailable as exc:
            HOOK_ERRORS.labels(service=service.id, status="412").inc()
            message = f"Prefetch data {', '.join(exc.keys)} missing and {exc.reason}"
            return 412, _operation_outcome(412, "not-found", message), HookAnswer(reasons=["unavailable"])
        except Exception as exc:  # never block the EHR: an empty answer, counted and logged
            # Type and place only: exception messages can quote patient data, and logs carry no PHI.
            where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            place = f"{Path(where.filename).name}:{where.lineno}" if where else "?"
            log.error("%s: unexpected %s at %s; answering with no cards", service.id, type(exc).__name__, place)
            answer = HookAnswer(reasons=["internal-error"])
        for card in answer.cards:
            CARDS_RETURNED.labels(service=service.id, topic=card.source.topic.code if card.source.topic else "").inc()
        return 200, JSONResponse(dump(CdsResponse(cards=answer.cards))), answer

    async def _audit(
        cds: AppState, service: ServiceSpec, payload: HookRequest, status: int, answer: HookAnswer
    ) -> None:
        record = {
            "service": service.id,
            "hook": payload.hook,
            "hook_instance": payload.hookInstance,
            "patient_id": answer.patient_id,
            "model_version": answer.model_version,
            "status": status,
            "outcome": answer.outcome,
            "card_ids": [c.uuid for c in answer.cards],
            "suggestion_ids": [s.uuid for c in answer.cards for s in c.suggestions or []],
            "details": {
                "timings_ms": {k: round(v, 1) for k, v in answer.timings_ms.items()},
                "reasons": answer.reasons,
                "topics": [c.source.topic.code if c.source.topic else None for c in answer.cards],
            },
        }
        try:
            await run_in_threadpool(cds.store.write_audit, **record)
        except Exception as exc:  # the answer still goes out; the failure is loud
            log.error("audit record NOT written for hookInstance=%s: %s", payload.hookInstance, type(exc).__name__)

    feedback_schema = {
        "oneOf": [
            FeedbackRequest.model_json_schema(ref_template="#/components/schemas/{model}"),
            FeedbackItem.model_json_schema(ref_template="#/components/schemas/{model}"),
        ]
    }

    @app.post(
        "/cds-services/{service_id}/feedback",
        tags=["CDS Hooks"],
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": feedback_schema}}}},
        responses={
            400: {"description": "Malformed feedback"},
            401: {"description": "JWT rejected"},
            404: {"description": "Unknown service"},
        },
    )
    async def feedback(service_id: str, request: Request, cds: State) -> Response:
        service = await admit(service_id, request, cds)
        if isinstance(service, Response):
            return service
        try:
            raw = json.loads(await request.body())
        except ValueError:
            return _problem(400, "body: not valid JSON")
        try:
            if isinstance(raw, dict) and "feedback" in raw:
                items = FeedbackRequest.model_validate(raw).feedback
            else:
                items = [FeedbackItem.model_validate(raw)]
        except ValidationError as exc:
            prefix = "" if isinstance(raw, dict) and "feedback" in raw else "feedback item "
            return _problem(400, prefix + _field_message(exc))
        new = await run_in_threadpool(cds.store.store_feedback, service.id, items)
        for item in new:
            FEEDBACK.labels(service=service.id, outcome=item.outcome).inc()
        return JSONResponse({"received": len(items), "stored": len(new)})

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", tags=["operations"])
    async def readyz(cds: State) -> JSONResponse:
        model = cds.backend.model_version if cds.backend is not None else None
        body = {
            "status": "ready" if model else "degraded (no model: safety cards only)",
            "model": model,
            "auth": "jwt" if cds.settings.auth_enabled else "OFF (dev mode)",
        }
        return JSONResponse(body)

    @app.get("/model-card", response_class=PlainTextResponse, tags=["operations"])
    async def model_card(cds: State) -> PlainTextResponse:
        path = cds.settings.resolved_model_dir / "MODEL_CARD.md"
        text = path.read_text() if path.is_file() else "No model card: no model is loaded."
        return PlainTextResponse(text, media_type="text/markdown")

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
