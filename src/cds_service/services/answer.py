"""Answering one hook call: what every service shares, around the handler that differs.

The shared part runs once here so that every service fails the same way. Validate the context and
gather the data (the only errors raised: a bad context, `InvalidRequest`, and unavailable required
data, `PrefetchUnavailable`); then the service's handler runs its rules and asks for model scores
through `score`, which serves from the cache or the backend within what is left of the request's
deadline. A model that is absent, late or failing costs the answer its model cards, never the answer:
the reason goes to the log, the metrics and the audit record (`HookAnswer.reasons`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError

from cds_service.cards.builders import diagnosis_card, medication_card
from cds_service.core.errors import DeadlineMissed
from cds_service.core.settings import Settings
from cds_service.core.telemetry import (
    CACHE_LOOKUPS,
    DEADLINE_MISSES,
    DEGRADED,
    FHIR_REFUSED,
    MODEL_SECONDS,
    PRECOMPUTED,
    WITHHELD,
)
from cds_service.fhir.client import FhirClient
from cds_service.hooks.prefetch import PatientData, gather
from cds_service.hooks.wire import Card, HookRequest, PatientContext, validate_context
from cds_service.ml.contract import Finding, InferenceBackend, ScoringJob, ScoringResult
from cds_service.services.spec import ServiceSpec
from cds_service.services.trust import trusted_findings
from cds_service.serving.cache import ScoreCache, job_key

log = logging.getLogger(__name__)
PRECOMPUTE_DEADLINE_S = 30.0  # nobody waits for a precompute; this only bounds a stuck one


@dataclass
class HookAnswer:
    """The cards of one answer and what the audit record needs to explain it."""

    cards: list[Card] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why the answer is degraded (no PHI)
    withheld: list[str] = field(default_factory=list)  # one trust gate per model suggestion not shown
    model_version: str | None = None
    patient_id: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        return "degraded" if self.reasons else "ok"


@dataclass
class HookCall:
    """One hook call being answered: what a handler reads (context, data, deadline) and fills (answer)."""

    service: ServiceSpec
    context: PatientContext
    data: PatientData
    deadline: float  # time.monotonic() by which the answer must be out
    answer: HookAnswer
    started: float  # time.monotonic() when the request arrived
    unchecked: set[str] = field(default_factory=set)  # safety checks that did not fully run: cards never claim them
    unrecognised: int = 0  # drafts and active drugs the drug knowledge layer could not identify (not checked)
    _last_lap: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._last_lap = self.started

    def lap(self, stage: str) -> None:
        """Time since the previous lap (or the request's arrival) as `timings_ms[stage]`."""
        now = time.monotonic()
        self.answer.timings_ms[stage] = (now - self._last_lap) * 1e3
        self._last_lap = now

    def degrade(self, reason: str, label: str | None = None) -> None:
        """Record why the answer has less in it; `label` is the metric's reason when `reason` is too
        fine-grained for a label (it names a prefetch key)."""
        self.answer.reasons.append(reason)
        DEGRADED.labels(service=self.service.id, reason=label or reason).inc()


def fhir_server_allowed(url: str, settings: Settings, issuer: str | None = None) -> bool:
    """Whether the service may send the EHR's token to `url`: on the calling issuer's own list when it has
    one (`CDS_FHIR_ORIGINS_BY_ISSUER`), else on the global allow-list when one is set, else any https origin;
    plain http only in development mode and only on loopback."""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    if issuer is not None and issuer in settings.fhir_origins_by_issuer:
        return origin in {o.rstrip("/").lower() for o in settings.fhir_origins_by_issuer[issuer]}
    if settings.fhir_allowed_origins:
        return origin in {o.rstrip("/").lower() for o in settings.fhir_allowed_origins}
    if parts.scheme == "https":
        return True
    loopback = (parts.hostname or "") in ("localhost", "127.0.0.1", "::1")
    return parts.scheme == "http" and settings.dev_mode and loopback


class HookAnswerer:
    """Answers hook calls for any service; built once per process around the shared backend and cache."""

    def __init__(
        self,
        settings: Settings,
        backend: InferenceBackend | None,
        http: httpx.AsyncClient,
        cache: ScoreCache | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.http = http
        self.cache = cache
        self._background: set[asyncio.Task[None]] = set()  # precomputes, kept alive until done

    async def handle(
        self, service: ServiceSpec, request: HookRequest, received: float | None = None, issuer: str | None = None
    ) -> HookAnswer:
        """`received`: time.monotonic() when the request arrived; the deadline counts from there. `issuer`: the
        verified JWT's `iss` (None in development mode), which decides the FHIR servers it may name."""
        started = received if received is not None else time.monotonic()
        deadline = started + self.settings.deadline_ms / 1000
        context = validate_context(request.hook, request.context)
        fetch_deadline = min(deadline, started + self.settings.fhir_timeout_ms / 1000)
        data = await gather(
            service.prefetch, service.required, request, self._fhir_client(request, issuer), fetch_deadline
        )
        call = HookCall(service, context, data, deadline, HookAnswer(patient_id=context.patientId), started)
        call.lap("data")
        for key in data.degraded:
            call.degrade(f"data-{data.origin[key]}:{key}", f"data-{data.origin[key]}")
        try:
            await service.handler(self, call)
        except Exception as exc:  # keep what is already built: a late failure costs only the cards after it
            call.degrade("internal-error")
            where = exc.__traceback__.tb_frame.f_code.co_name if exc.__traceback__ else "?"
            log.error(
                "%s: unexpected %s in %s; answering with the %d card(s) built before it",
                service.id,
                type(exc).__name__,
                where,
                len(call.answer.cards),
            )
        call.answer.timings_ms["total"] = (time.monotonic() - started) * 1e3
        return call.answer

    def _fhir_client(self, request: HookRequest, issuer: str | None = None) -> FhirClient | None:
        """A client for the hook's `fhirServer` with its token; None when the EHR offered none, or one we
        may not call with a token (`fhir_server_allowed`: refused, counted and logged; the prefetch stands)."""
        if not request.fhirServer:
            return None
        if not fhir_server_allowed(str(request.fhirServer), self.settings, issuer):
            FHIR_REFUSED.inc()
            log.warning("fhirServer refused (not https, or not on CDS_FHIR_ALLOWED_ORIGINS); using the prefetch only")
            return None
        token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
        settings = self.settings
        return FhirClient(
            request.fhirServer,
            token,
            self.http,
            max_bytes=settings.fhir_max_bytes,
            max_requests=settings.fhir_max_requests,
        )

    async def score(self, call: HookCall, job: ScoringJob) -> ScoringResult | None:
        """The model's result for `job` (cached or computed in time), or None with the reason recorded."""
        call.lap("rules")  # whatever the handler did before it needed the model
        if self.backend is None:
            call.degrade("no-model")
            return None
        key = job_key(job, self.backend.model_version)
        result = await self._cached(call, key)
        if result is not None and time.monotonic() > call.deadline:
            # The cached path honours the deadline too: a hit that arrives late (a slow cache, a slow data
            # step before it) is a miss of the deadline, counted, and the answer goes out with what is ready.
            call.degrade("deadline")
            DEADLINE_MISSES.labels(service=call.service.id).inc()
            log.warning(
                "%s: deadline passed by the cached scores' arrival; answering without model cards", call.service.id
            )
            return None
        if result is None:
            result = await self._computed(call, job)
            if result is None:
                return None
            if self.cache is not None:
                await self.cache.put(key, result)
        call.answer.model_version = result.model_version
        unfamiliar = result.unfamiliar
        if unfamiliar is not None:  # the guard's verdict: no model card for a record unlike the training data
            call.degrade("unfamiliar-record")
            for check in unfamiliar:
                call.answer.withheld.append(f"unfamiliar:{check}")
                WITHHELD.labels(service=call.service.id, reason=f"unfamiliar:{check}").inc()
            log.info("%s: record unfamiliar to the model (%s); no model cards", call.service.id, ", ".join(unfamiliar))
            return None
        return result

    async def _cached(self, call: HookCall, key: str) -> ScoringResult | None:
        cached = await self.cache.get(key) if self.cache is not None else None
        CACHE_LOOKUPS.labels(result="miss" if cached is None else "hit").inc()
        if cached is not None:
            call.answer.timings_ms["model_cached"] = 1.0
        return cached

    async def _computed(self, call: HookCall, job: ScoringJob) -> ScoringResult | None:
        assert self.backend is not None  # score() answers without a model before asking
        service = call.service.id
        try:
            result = await self.backend.score(job, call.deadline)
        except DeadlineMissed:
            call.degrade("deadline")
            DEADLINE_MISSES.labels(service=service).inc()
            log.warning(
                "%s: model missed the %d ms deadline; answering without model cards", service, self.settings.deadline_ms
            )
            return None
        except Exception as exc:  # the EHR's workflow must never block on our model failing
            call.degrade("model-error")
            log.error("%s: scoring failed (%s); answering without model cards", service, type(exc).__name__)
            return None
        for stage, ms in result.timings_ms.items():
            MODEL_SECONDS.labels(stage=stage).observe(ms / 1000)
            call.answer.timings_ms[f"model_{stage}"] = ms
        return result

    def model_cards(self, call: HookCall, result: ScoringResult, limit: int | None = None) -> None:
        """A card per finding that passes the trust gates (`services.trust`), at most `limit`; one that would
        break the spec is dropped and counted, never sent."""
        shown, withheld = trusted_findings(
            call.service.id, result.findings, call.data.resources, self.settings.min_evidence_drop
        )
        call.answer.withheld.extend(withheld)
        for finding in shown[: self.settings.max_cards if limit is None else limit]:
            try:
                card = self._card(call, finding, result.model_version)
            except ValidationError as exc:
                log.error("%s: dropped a malformed card (%s)", call.service.id, exc.errors()[0]["msg"])
                DEGRADED.labels(service=call.service.id, reason="malformed-card").inc()
                continue
            call.answer.cards.append(card)

    def _card(self, call: HookCall, finding: Finding, model_version: str) -> Card:
        """The card for a finding of the model's diagnosis or medication head."""
        url, context = self.settings.model_card_url, call.context
        if finding.head == "diagnosis":
            return diagnosis_card(finding, context.patientId, context.encounterId, model_version, url)
        return medication_card(
            finding,
            context.patientId,
            context.encounterId,
            context.userId,
            model_version,
            url,
            allergies_checked="allergies" not in call.unchecked,
            unrecognised=call.unrecognised,
        )

    def precompute(self, job: ScoringJob) -> None:
        """Score `job` in the background into the cache, for a later hook that will ask for it
        (fire and forget: the current answer does not wait, and a failure only costs the head start)."""
        if self.backend is None or self.cache is None:
            return
        task = asyncio.get_running_loop().create_task(self._precompute(self.backend, self.cache, job))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _precompute(self, backend: InferenceBackend, cache: ScoreCache, job: ScoringJob) -> None:
        key = job_key(job, backend.model_version)
        if await cache.get(key) is not None:
            return
        try:
            result = await backend.score(job, time.monotonic() + PRECOMPUTE_DEADLINE_S)
        except Exception as exc:  # precompute is best effort
            log.info("precompute skipped: %s", type(exc).__name__)
            return
        await cache.put(key, result)
        PRECOMPUTED.inc()
