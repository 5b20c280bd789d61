"""The services layer: declarations, discovery, and the answer path with a stand-in model."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from cds_service.core.errors import DeadlineMissed, InvalidRequest, UnknownService
from cds_service.core.settings import Settings
from cds_service.hooks.examples import hook_request, prefetch_for
from cds_service.hooks.wire import HookRequest
from cds_service.ml.contract import EvidenceItem, Finding, ScoringJob, ScoringResult
from cds_service.safety.orders import Drug
from cds_service.services.answer import HookAnswer, HookAnswerer
from cds_service.services.registry import SERVICES, discovery, service_named
from cds_service.services.treatment import against_drafts
from cds_service.serving.cache import ScoreCache

VERSION = "fake@1"
RECORD: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "p1"},
    {  # the indication the stand-in's metformin needs to be shown (the trust gates)
        "resourceType": "Condition",
        "id": "c1",
        "subject": {"reference": "Patient/p1"},
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}],
            "text": "Type 2 diabetes",
        },
    },
    {
        "resourceType": "MedicationRequest",
        "id": "m1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "Methotrexate 2.5 MG Oral Tablet"},
    },
]
DRAFT = {
    "resourceType": "MedicationRequest",
    "id": "d1",
    "status": "draft",
    "intent": "order",
    "subject": {"reference": "Patient/p1"},
    "medicationCodeableConcept": {"text": "Trimethoprim 100 MG Oral Tablet"},
}


def finding(head: str, token: str, display: str, probability: float = 0.6) -> Finding:
    """A finding whose top evidence was confirmed to move it (the trust gates' evidence check)."""
    evidence = [EvidenceItem("Condition/c1", "Type 2 diabetes", 1.6e9, 0.8, drop=0.3)]
    return Finding(head, 0, token, display, probability, 0.2, evidence)


class FakeBackend:
    """Scores by head from a fixed list; or raises `fail`. Records the jobs it was given."""

    name = "fake"

    def __init__(self, findings: dict[str, list[Finding]], fail: Exception | None = None) -> None:
        self.findings = findings
        self.fail = fail
        self.jobs: list[ScoringJob] = []

    @property
    def model_version(self) -> str | None:
        return VERSION

    async def score(self, job: ScoringJob, deadline: float) -> ScoringResult:
        self.jobs.append(job)
        if self.fail is not None:
            raise self.fail
        return ScoringResult(VERSION, list(self.findings.get(job.head, [])), {"forward": 1.0})

    def close(self) -> None:
        pass


FINDINGS = {
    "diagnosis": [finding("diagnosis", "SNOMED/38341003", "Hypertension")],
    "medication": [finding("medication", "RXNORM/860975", "Metformin 500 MG Oral Tablet")],
}


def view_request() -> HookRequest:
    return HookRequest.model_validate(hook_request("patient-view", "p1", prefetch_for(RECORD)))


def order_request(hook: str = "order-sign") -> HookRequest:
    context: dict[str, Any] = {"draftOrders": {"resourceType": "Bundle", "entry": [{"resource": DRAFT}]}}
    if hook == "order-select":
        context["selections"] = ["MedicationRequest/d1"]
    return HookRequest.model_validate(hook_request(hook, "p1", prefetch_for(RECORD), extra_context=context))


def topics(answer: HookAnswer) -> list[str]:
    return [c.source.topic.code for c in answer.cards if c.source.topic]


async def answer(backend: FakeBackend | None, service_id: str, req: HookRequest, **kw: Any) -> HookAnswer:
    async with httpx.AsyncClient() as http:
        answerer = HookAnswerer(Settings(dev_mode=True, data_dir=Path("unused")), backend, http, kw.get("cache"))
        return await answerer.handle(SERVICES[service_id], req)


def test_discovery_entries_come_from_each_specs_own_templates() -> None:
    entries = {d.id: d for d in discovery().services}
    assert set(entries) == set(SERVICES)
    for spec in SERVICES.values():
        assert entries[spec.id].prefetch == dict(spec.prefetch)
        assert entries[spec.id].hook == spec.hook
        assert set(spec.required) <= set(spec.prefetch)


def test_a_required_key_without_a_template_is_refused_when_declared() -> None:
    spec = SERVICES["diagnosis-suggestions"]
    with pytest.raises(ValueError, match="labs"):
        dataclasses.replace(spec, required=("patient", "labs"))


def test_an_unknown_service_id_is_unknown_service() -> None:
    assert service_named("diagnosis-suggestions") is SERVICES["diagnosis-suggestions"]
    with pytest.raises(UnknownService, match="nope"):
        service_named("nope")


def test_a_context_that_does_not_fit_the_hook_is_invalid_request_naming_the_field() -> None:
    req = HookRequest.model_validate(hook_request("order-sign", "p1", prefetch_for(RECORD)))  # no draftOrders
    with pytest.raises(InvalidRequest, match=r"^context\.draftOrders"):
        asyncio.run(answer(None, "treatment-recommendations-order-sign", req))


def test_safety_cards_survive_a_model_that_misses_its_deadline() -> None:
    backend = FakeBackend(FINDINGS, fail=DeadlineMissed("late"))
    got = asyncio.run(answer(backend, "treatment-recommendations-order-sign", order_request()))
    assert topics(got) == ["drug-interaction"]
    assert got.reasons == ["deadline"]
    assert {"data", "rules", "total"} <= set(got.timings_ms)


def test_without_a_model_the_answer_is_safety_cards_and_says_why() -> None:
    got = asyncio.run(answer(None, "treatment-recommendations", order_request("order-select")))
    assert topics(got) == ["drug-interaction"]
    assert got.reasons == ["no-model"] and got.model_version is None


def test_a_failing_model_is_a_reason_not_an_exception() -> None:
    backend = FakeBackend(FINDINGS, fail=RuntimeError("boom"))
    got = asyncio.run(answer(backend, "diagnosis-suggestions", view_request()))
    assert got.cards == [] and got.reasons == ["model-error"]


def test_recommendations_exclude_what_is_drafted_or_conflicts_with_a_draft() -> None:
    drafts = [Drug("MedicationRequest/d1", "Trimethoprim 100 MG Oral Tablet", "RXNORM/198334")]
    candidates = [
        finding("medication", "RXNORM/198334", "Trimethoprim 100 MG Oral Tablet"),  # drafted already
        finding("medication", "RXNORM/105585", "Methotrexate 2.5 MG Oral Tablet"),  # interacts with the draft
        finding("medication", "RXNORM/860975", "Metformin 500 MG Oral Tablet"),
        # with trimethoprim a moderate interaction (hyperkalaemia): warned on a draft, but not blocking
        finding("medication", "RXNORM/314076", "Lisinopril 10 MG Oral Tablet"),
        finding("medication", "RXNORM/617310", "Atorvastatin 20 MG Oral Tablet"),
    ]
    kept = against_drafts(candidates, drafts)
    assert [f.display.split()[0] for f in kept] == ["Metformin", "Lisinopril", "Atorvastatin"]


def test_patient_view_precomputes_the_job_the_order_hooks_then_read_from_the_cache() -> None:
    def precomputed() -> float:
        return REGISTRY.get_sample_value("cds_precomputed_total") or 0.0

    async def visit() -> tuple[HookAnswer, HookAnswer, FakeBackend]:
        backend = FakeBackend(FINDINGS)
        cache = ScoreCache(None, 60)
        async with httpx.AsyncClient() as http:
            answerer = HookAnswerer(Settings(dev_mode=True, data_dir=Path("unused")), backend, http, cache)
            before = precomputed()
            view = await answerer.handle(SERVICES["diagnosis-suggestions"], view_request())
            for _ in range(200):  # the precompute runs in the background
                if precomputed() > before:
                    break
                await asyncio.sleep(0.01)
            order = await answerer.handle(SERVICES["treatment-recommendations"], order_request("order-select"))
        return view, order, backend

    view, order, backend = asyncio.run(visit())
    assert topics(view) == ["diagnosis-suggestion"] and view.model_version == VERSION
    assert [j.head for j in backend.jobs] == ["diagnosis", "medication"]  # the order hook did not score again
    assert "model_cached" in order.timings_ms
    assert topics(order) == ["drug-interaction", "medication-recommendation"]


def test_the_cached_path_honours_the_deadline_and_counts_the_miss() -> None:
    """Found by the campaign: on the cached path the deadline was not enforced, and cds_deadline_misses_total
    stayed 0 while 2,000 answers were late at the client."""

    class SlowCache(ScoreCache):
        async def get(self, key: str) -> ScoringResult | None:
            await asyncio.sleep(0.3)  # past the 100 ms deadline below
            return await super().get(key)

    def misses() -> float:
        return REGISTRY.get_sample_value("cds_deadline_misses_total", {"service": "diagnosis-suggestions"}) or 0.0

    async def visit() -> HookAnswer:
        cache = SlowCache(None, 60)
        backend = FakeBackend(FINDINGS)
        async with httpx.AsyncClient() as http:
            settings = Settings(dev_mode=True, data_dir=Path("unused"), deadline_ms=100)
            answerer = HookAnswerer(settings, backend, http, cache)
            job_answer = await HookAnswerer(
                Settings(dev_mode=True, data_dir=Path("unused")), backend, http, cache
            ).handle(
                SERVICES["diagnosis-suggestions"], view_request()
            )  # fills the cache (no deadline trouble: the default deadline is generous)
            assert job_answer.cards
            return await answerer.handle(SERVICES["diagnosis-suggestions"], view_request())

    before = misses()
    late = asyncio.run(visit())
    assert late.cards == [] and "deadline" in late.reasons
    assert misses() == before + 1
