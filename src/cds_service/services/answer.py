"""Answering one hook call: validate its context, gather data, run safety rules, score, build cards.

Safety rules run first and need no model, so their cards survive any model failure. Model work gets
what is left of the request's deadline; if it misses, or fails, the answer has fewer cards, and the
reason goes to the log, the metrics and the audit record. Nothing here lets an exception escape for a
bad bundle: the only errors raised are a bad context (400) and unavailable required data (412).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx
from pydantic import ValidationError

from cds_service.cards.builders import allergy_card, diagnosis_card, duplicate_card, interaction_card, medication_card
from cds_service.core.errors import DeadlineMissed
from cds_service.core.settings import Settings
from cds_service.core.telemetry import CACHE_LOOKUPS, DEADLINE_MISSES, DEGRADED, MODEL_SECONDS, PRECOMPUTED
from cds_service.fhir.bundles import entries
from cds_service.fhir.client import FhirClient
from cds_service.fhir.elements import condition_tokens
from cds_service.hooks.prefetch import PatientData, gather
from cds_service.hooks.wire import (
    Card,
    HookRequest,
    OrderSelectContext,
    OrderSignContext,
    PatientContext,
    validate_context,
)
from cds_service.ml.contract import Finding, InferenceBackend, ScoringJob, ScoringResult
from cds_service.safety.orders import (
    Drug,
    active_drugs,
    check_allergies,
    check_duplicates,
    check_interactions,
    conflicts,
    drug_of,
)
from cds_service.services.registry import ServiceSpec
from cds_service.serving.cache import ScoreCache, job_key

log = logging.getLogger(__name__)
MEDICATION_CANDIDATES = 4  # scored and explained per patient; the drafts then filter them
PRECOMPUTE_DEADLINE_S = 30.0


@dataclass
class HookAnswer:
    cards: list[Card] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why the answer is degraded (no PHI)
    model_version: str | None = None
    patient_id: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        return "degraded" if self.reasons else "ok"


class HookDispatcher:
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
        self._background: set[asyncio.Task[None]] = set()

    async def handle(self, service: ServiceSpec, request: HookRequest, received: float | None = None) -> HookAnswer:
        """`received`: time.monotonic() when the request arrived; the deadline counts from there."""
        started = received if received is not None else time.monotonic()
        deadline = started + self.settings.deadline_ms / 1000
        context = validate_context(request.hook, request.context)
        answer = HookAnswer(patient_id=context.patientId)
        client = None
        if request.fhirServer:
            token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
            client = FhirClient(request.fhirServer, token, self.http)
        fetch_deadline = min(deadline, started + self.settings.fhir_timeout_ms / 1000)
        data = await gather(service, request, client, fetch_deadline)
        answer.timings_ms["data"] = (time.monotonic() - started) * 1e3
        for key in data.degraded:
            answer.reasons.append(f"data-{data.origin[key]}:{key}")
            DEGRADED.labels(service=service.id, reason=f"data-{data.origin[key]}").inc()

        drafts: list[Drug] = []
        if service.kind == "treatment":
            job, drafts = self._treatment(service, context, data, answer)
        else:
            job = self._diagnosis_job(context, data)
        answer.timings_ms["rules"] = (time.monotonic() - started) * 1e3 - answer.timings_ms["data"]
        result = await self._score(service, job, deadline, answer)
        if result is not None:
            answer.model_version = result.model_version
            if service.kind == "treatment":
                result.findings = self._against_drafts(result.findings, drafts)
            self._model_cards(service, context, result, answer)
        if service.kind == "diagnosis":
            self._precompute(self._medication_job(context, data))
        answer.timings_ms["total"] = (time.monotonic() - started) * 1e3
        return answer

    def _diagnosis_job(self, context: PatientContext, data: PatientData) -> ScoringJob:
        return ScoringJob(
            head="diagnosis",
            patient_id=context.patientId,
            resources=data.resources,
            cutoff=time.time(),
            encounter_id=context.encounterId,
            exclude=condition_tokens(data.resources),
            max_findings=self.settings.max_cards,
            min_probability=self.settings.min_card_probability,
        )

    def _treatment(
        self, service: ServiceSpec, context: PatientContext, data: PatientData, answer: HookAnswer
    ) -> tuple[ScoringJob, list[Drug]]:
        assert isinstance(context, OrderSignContext)  # validate_context guarantees it for order hooks
        draft_resources = entries(context.draftOrders)
        medications = {
            str(r.get("id")): r for r in draft_resources + data.resources if r.get("resourceType") == "Medication"
        }
        drafts = [d for r in draft_resources if (d := drug_of(r, medications)) is not None]
        if isinstance(context, OrderSelectContext):
            selected = set(context.selections)
            focus = [d for d in drafts if d.reference in selected]
        else:
            focus = drafts
        draft_refs = {d.reference for d in drafts}
        active = active_drugs(data.resources, exclude=draft_refs)
        url = self.settings.model_card_url
        seen: set[frozenset[str]] = set()
        for f in check_interactions(focus, active, drafts):
            pair = frozenset((f.draft.reference, f.other.reference))
            if pair not in seen:
                seen.add(pair)
                answer.cards.append(interaction_card(f, url))
        answer.cards.extend(allergy_card(f, url) for f in check_allergies(focus, data.resources))
        answer.cards.extend(duplicate_card(f, url) for f in check_duplicates(focus, active))
        return self._medication_job(context, data), drafts

    def _medication_job(self, context: PatientContext, data: PatientData) -> ScoringJob:
        """Medication candidates given the record alone (not the drafts), so that the job patient-view
        precomputes is the very job the order hooks look up; drafts filter the candidates afterwards."""
        active = active_drugs(data.resources, exclude=set())
        return ScoringJob(
            head="medication",
            patient_id=context.patientId,
            resources=data.resources,
            cutoff=time.time(),
            encounter_id=context.encounterId,
            known_dx=condition_tokens(data.resources, context.encounterId) if context.encounterId else [],
            exclude=[d.token for d in active if d.token],
            avoid_drugs=[d.name for d in active],
            max_findings=MEDICATION_CANDIDATES,
            min_probability=self.settings.min_card_probability,
        )

    def _against_drafts(self, findings: list[Finding], drafts: list[Drug]) -> list[Finding]:
        tokens = {d.token for d in drafts if d.token}
        names = [d.name for d in drafts]
        kept = [f for f in findings if f.token not in tokens and not conflicts(f.display, names)]
        return kept[: min(2, self.settings.max_cards)]

    def _precompute(self, job: ScoringJob) -> None:
        """patient-view warms the cache for the order hooks that usually follow (fire and forget)."""
        if self.backend is None or self.cache is None:
            return

        async def run() -> None:
            backend, cache = self.backend, self.cache
            assert backend is not None and cache is not None
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

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _score(
        self, service: ServiceSpec, job: ScoringJob, deadline: float, answer: HookAnswer
    ) -> ScoringResult | None:
        if self.backend is None:
            answer.reasons.append("no-model")
            DEGRADED.labels(service=service.id, reason="no-model").inc()
            return None
        key = job_key(job, self.backend.model_version)
        cached = await self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            CACHE_LOOKUPS.labels(result="hit").inc()
            answer.timings_ms["model_cached"] = 1.0
            return cached
        CACHE_LOOKUPS.labels(result="miss").inc()
        try:
            result = await self.backend.score(job, deadline)
        except DeadlineMissed:
            answer.reasons.append("deadline")
            DEADLINE_MISSES.labels(service=service.id).inc()
            DEGRADED.labels(service=service.id, reason="deadline").inc()
            log.warning(
                "%s: model missed the %d ms deadline; answering without model cards",
                service.id,
                self.settings.deadline_ms,
            )
            return None
        except Exception as exc:  # the EHR's workflow must never block on our model failing
            answer.reasons.append("model-error")
            DEGRADED.labels(service=service.id, reason="model-error").inc()
            log.error("%s: scoring failed (%s); answering without model cards", service.id, type(exc).__name__)
            return None
        for stage, ms in result.timings_ms.items():
            MODEL_SECONDS.labels(stage=stage).observe(ms / 1000)
            answer.timings_ms[f"model_{stage}"] = ms
        if self.cache is not None:
            await self.cache.put(key, result)
        return result

    def _model_cards(
        self, service: ServiceSpec, context: PatientContext, result: ScoringResult, answer: HookAnswer
    ) -> None:
        url = self.settings.model_card_url
        for finding in result.findings:
            try:
                if finding.head == "diagnosis":
                    card = diagnosis_card(finding, context.patientId, context.encounterId, result.model_version, url)
                else:
                    card = medication_card(
                        finding, context.patientId, context.encounterId, context.userId, result.model_version, url
                    )
            except ValidationError as exc:  # a card that would break the spec is dropped, not sent
                log.error("%s: dropped a malformed card (%s)", service.id, exc.errors()[0]["msg"])
                DEGRADED.labels(service=service.id, reason="malformed-card").inc()
                continue
            answer.cards.append(card)
