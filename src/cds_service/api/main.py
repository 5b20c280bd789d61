"""The FastAPI application: what is built once at start-up, the middleware, and the routers.

Heavy objects (database engine and migrations, the scoring backend, HTTP clients, the JWT verifier,
the score cache) are built in the lifespan, once per process, and closed in reverse order at shutdown.
Routes live in `api.routes`, one module per resource; the status codes they answer with, in
`api.errors`; what they receive, in `api.deps`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from cds_service.api import errors
from cds_service.api.auth import JwtVerifier, ReplayCache
from cds_service.api.deps import Resources
from cds_service.api.limits import BodySizeLimit
from cds_service.api.routes import discovery, feedback, hooks, ops
from cds_service.api.timing import ArrivalStamp
from cds_service.core.settings import Settings, get_settings
from cds_service.core.telemetry import quiet_phi_loggers
from cds_service.drugs.knowledge import load_knowledge
from cds_service.ml.contract import InferenceBackend
from cds_service.runtime import load_backend
from cds_service.services.answer import HookAnswerer
from cds_service.serving.cache import ScoreCache
from cds_service.storage.db import Store, make_engine, migrate
from cds_service.storage.spool import AuditWriter

log = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def tune_gc() -> None:
    """Hook bodies are big JSON trees (millions of objects for a large patient): with default
    thresholds the cyclic GC rescans the long-lived model and app objects many times per request.
    Freeze what start-up built and collect young objects less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def create_app(
    settings: Settings | None = None,
    backend: InferenceBackend | str | None = "load",
    fhir_transport: httpx.AsyncBaseTransport | None = None,
) -> FastAPI:
    """`backend="load"` loads the configured model at start-up; pass a backend or None to inject one.
    `fhir_transport` carries the calls to EHRs' FHIR servers (tests hand in an `httpx.MockTransport`)."""
    quiet_phi_loggers()
    settings = settings or get_settings()
    app = FastAPI(
        title="cds-service",
        version="0.1.0",
        summary="CDS Hooks 2.0 services: diagnosis suggestions and treatment recommendations with evidence.",
        lifespan=_lifespan(settings, backend, fhir_transport),
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        max_age=600,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ArrivalStamp)  # added last, so outermost: the deadline starts before the body is read
    errors.install(app)
    for module in (discovery, hooks, feedback, ops):
        app.include_router(module.router)
    return app


def _lifespan(
    settings: Settings, backend: InferenceBackend | str | None, fhir_transport: httpx.AsyncBaseTransport | None
) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            app.state.cds = await _start(settings, backend, fhir_transport, stack)
            if not settings.auth_enabled:
                log.warning("!!! DEVELOPMENT MODE: CDS client JWTs are NOT verified. Never expose this to an EHR. !!!")
            yield

    return lifespan


async def _start(
    settings: Settings,
    backend: InferenceBackend | str | None,
    fhir_transport: httpx.AsyncBaseTransport | None,
    stack: AsyncExitStack,
) -> Resources:
    """Build what requests share; `stack` closes each of them at shutdown."""
    knowledge = load_knowledge()  # the drug knowledge, schema- and cross-checked: a broken file stops start-up
    log.info("drug knowledge: %d ingredients, %d interaction rules", len(knowledge.vocabulary.ingredients),
             len(knowledge.rules))  # fmt: skip
    engine = make_engine(settings.resolved_database_url)
    stack.callback(engine.dispose)
    await run_in_threadpool(migrate, engine)
    chosen = load_backend(settings) if backend == "load" else backend
    scoring = None if isinstance(chosen, str) else chosen
    if scoring is not None:
        stack.callback(scoring.close)
    tune_gc()  # after the model: it is the bulk of what start-up built
    # Two clients: the FHIR one may be a test's fake, the JWKS one must stay the real network.
    fhir_http = httpx.AsyncClient(follow_redirects=False, transport=fhir_transport)
    stack.push_async_callback(fhir_http.aclose)
    auth_http = httpx.AsyncClient(follow_redirects=False)
    stack.push_async_callback(auth_http.aclose)
    replay = ReplayCache(settings.redis_url)
    stack.push_async_callback(replay.close)
    cache = ScoreCache(settings.redis_url, settings.cache_ttl_s)
    stack.push_async_callback(cache.close)
    store = Store(engine)
    audit = AuditWriter(store, settings.data_dir, settings.db_timeout_ms / 1000)
    if audit.spooled():  # records spooled before a restart go in first
        await run_in_threadpool(audit.replay)
    replayer = asyncio.get_running_loop().create_task(audit.replay_forever())
    stack.callback(replayer.cancel)
    return Resources(
        settings=settings,
        backend=scoring,
        store=store,
        answerer=HookAnswerer(settings, scoring, fhir_http, cache),
        verifier=JwtVerifier(settings, auth_http, replay),
        audit=audit,
    )
