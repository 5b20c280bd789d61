"""Order-safety checks isolated from bad data: a malformed resource costs only itself, a failing check only
its own cards, and neither is ever silent (counted, in the answer's reasons, logged without PHI, and the
cards never claim a check that did not run)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from cds_service.core.settings import Settings
from cds_service.hooks.examples import hook_request, prefetch_for
from cds_service.hooks.wire import Card, HookRequest
from cds_service.ml.contract import EvidenceItem, Finding, ScoringJob, ScoringResult
from cds_service.safety.orders import Drug, active_drugs, check_allergies
from cds_service.services import treatment
from cds_service.services.answer import HookAnswer, HookAnswerer
from cds_service.services.registry import SERVICES

SIGN = "treatment-recommendations-order-sign"
PHI = "Jane Doe MRN 4711"  # what an exception message may quote; it must never reach the log


def med(rid: str, text: str, status: str = "active") -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": rid, "status": status, "intent": "order",
            "subject": {"reference": "Patient/p1"}, "medicationCodeableConcept": {"text": text}}  # fmt: skip


def allergy(rid: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "AllergyIntolerance", "id": rid, "patient": {"reference": "Patient/p1"}, **fields}


PENICILLIN = allergy(
    "al-penicillin",
    clinicalStatus={"coding": [{"code": "active"}]},
    code={
        "coding": [{"system": "http://snomed.info/sct", "code": "91936005", "display": "Allergy to penicillin"}],
        "text": "Penicillin",
    },
    reaction=[{"substance": {"text": "Amoxicillin"}, "manifestation": [{"text": "Hives"}]}],
    criticality="high",
)
MALFORMED = {
    "clinicalStatus a string": allergy("al-x9q", clinicalStatus="active", code={"text": "Latex"}),
    "clinicalStatus a list": allergy(
        "al-x9q", clinicalStatus=[{"coding": [{"code": "active"}]}], code={"text": "Latex"}
    ),
    "clinicalStatus.coding a number": allergy("al-x9q", clinicalStatus={"coding": 5}, code={"text": "Latex"}),
    "verificationStatus a string": allergy("al-x9q", verificationStatus="confirmed", code={"text": "Latex"}),
    "code a number": allergy("al-x9q", code=5),
    "reaction a number": allergy("al-x9q", code={"text": "Latex"}, reaction=5),
    "criticality a number": allergy("al-x9q", code={"text": "Amoxicillin"}, criticality=3),
}
WARFARIN = med("d-warfarin", "Warfarin Sodium 5 MG Oral Tablet", "draft")
AMOXICILLIN = med("d-amoxicillin", "Amoxicillin 500 MG Oral Capsule", "draft")
ASPIRIN = med("m-aspirin", "Aspirin 81 MG Oral Tablet")


# The stand-in's metformin needs an indication in the record to be shown (the trust gates).
DIABETES = {
    "resourceType": "Condition",
    "id": "c-diabetes",
    "subject": {"reference": "Patient/p1"},
    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}], "text": "Type 2 diabetes"},
}


def order_sign(record: list[dict[str, Any]], *drafts: dict[str, Any]) -> HookRequest:
    context = {"draftOrders": {"resourceType": "Bundle", "entry": [{"resource": d} for d in drafts]}}
    prefetch = prefetch_for([{"resourceType": "Patient", "id": "p1"}, DIABETES, *record])
    return HookRequest.model_validate(hook_request("order-sign", "p1", prefetch, extra_context=context))


CONFIRMED = EvidenceItem("Condition/c-diabetes", "Type 2 diabetes", 1.6e9, 0.8, drop=0.3)  # passes the evidence gate


class OneMedication:
    """A stand-in model that recommends one medication (so the recommendation card's wording is visible)."""

    name = "fake"
    model_version = "fake@1"

    async def score(self, job: ScoringJob, deadline: float) -> ScoringResult:
        found = (
            []
            if job.head != "medication"
            else [Finding("medication", 0, "RXNORM/860975", "Metformin 500 MG", 0.6, 0.2, [CONFIRMED])]
        )
        return ScoringResult("fake@1", found, {"forward": 1.0})

    def close(self) -> None:
        pass


def answer(request: HookRequest, backend: OneMedication | None = None) -> HookAnswer:
    async def go() -> HookAnswer:
        async with httpx.AsyncClient() as http:
            answerer = HookAnswerer(Settings(dev_mode=True, data_dir=Path("unused")), backend, http)
            return await answerer.handle(SERVICES[SIGN], request)

    return asyncio.run(go())


def topics(cards: list[Card]) -> list[str]:
    return [c.source.topic.code for c in cards if c.source.topic]


def degraded(reason: str) -> float:
    return REGISTRY.get_sample_value("cds_degraded_responses_total", {"service": SIGN, "reason": reason}) or 0.0


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_a_malformed_allergy_costs_only_itself(shape: str) -> None:
    drafts = [Drug("MedicationRequest/d-amoxicillin", "Amoxicillin 500 MG Oral Capsule", None)]
    found = check_allergies(drafts, [MALFORMED[shape], PENICILLIN])
    assert "AllergyIntolerance/al-penicillin" in [f.allergy for f in found]
    assert all(f.criticality is None or isinstance(f.criticality, str) for f in found)


def test_a_medication_status_of_the_wrong_type_is_not_active_and_does_not_raise() -> None:
    odd = [dict(ASPIRIN, status=["active"]), dict(ASPIRIN, id="m2", status={"code": "active"})]
    assert active_drugs([*odd, med("m3", "Metformin 500 MG")], set())[0].reference == "MedicationRequest/m3"


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_a_malformed_allergy_keeps_the_interaction_card_and_is_reported(
    shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = degraded("safety-check-partial:allergies")
    with caplog.at_level(logging.DEBUG):
        got = answer(order_sign([ASPIRIN, MALFORMED[shape]], WARFARIN))
    assert "drug-interaction" in topics(got.cards)
    assert "safety-check-partial:allergies" in got.reasons and got.outcome == "degraded"
    assert degraded("safety-check-partial:allergies") == before + 1
    notice = [c for c in got.cards if c.source.topic and c.source.topic.code == "drug-allergy"]
    assert notice and "not" in notice[0].summary.lower()  # an allergy check that could not read it all says so
    assert "x9q" not in caplog.text  # no resource ids in the log


def test_a_penicillin_allergy_beside_a_malformed_one_still_warns_on_amoxicillin() -> None:
    got = answer(order_sign([ASPIRIN, MALFORMED["clinicalStatus a string"], PENICILLIN], WARFARIN, AMOXICILLIN))
    allergy_cards = [c for c in got.cards if c.source.topic and c.source.topic.code == "drug-allergy"]
    assert any("Amoxicillin" in c.summary and c.indicator == "critical" for c in allergy_cards)
    assert "drug-interaction" in topics(got.cards)
    assert "safety-check-partial:allergies" in got.reasons


def test_the_recommendation_does_not_claim_an_allergy_check_that_did_not_read_every_allergy() -> None:
    clean = answer(order_sign([ASPIRIN, PENICILLIN], WARFARIN), OneMedication())
    [card] = [c for c in clean.cards if c.source.topic and c.source.topic.code == "medication-recommendation"]
    assert "drafts and allergies: no interaction" in (card.detail or "")
    got = answer(order_sign([ASPIRIN, MALFORMED["code a number"]], WARFARIN), OneMedication())
    [card] = [c for c in got.cards if c.source.topic and c.source.topic.code == "medication-recommendation"]
    assert "allergies: no interaction" not in (card.detail or "")
    assert "not checked against allergies" in (card.detail or "").lower()


@pytest.mark.parametrize(
    ("check", "name"), [("duplicates", "check_duplicates"), ("interactions", "check_interactions")]
)
def test_a_failing_check_costs_only_its_own_cards(
    check: str, name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(PHI)

    monkeypatch.setattr(treatment, name, boom)
    before = degraded(f"safety-check-failed:{check}")
    with caplog.at_level(logging.DEBUG):
        got = answer(order_sign([ASPIRIN, PENICILLIN], WARFARIN, AMOXICILLIN))
    assert f"safety-check-failed:{check}" in got.reasons
    assert degraded(f"safety-check-failed:{check}") == before + 1
    assert "drug-allergy" in topics(got.cards)  # the other checks still answered
    if check == "duplicates":
        assert "drug-interaction" in topics(got.cards)
    assert check in caplog.text and "RuntimeError" in caplog.text and PHI not in caplog.text


def test_a_failing_allergy_check_is_never_silence(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise KeyError(PHI)

    monkeypatch.setattr(treatment, "allergy_check", boom)
    with caplog.at_level(logging.DEBUG):
        got = answer(order_sign([ASPIRIN, PENICILLIN], WARFARIN, AMOXICILLIN), OneMedication())
    assert "safety-check-failed:allergies" in got.reasons
    assert "drug-interaction" in topics(got.cards)
    notice = [c for c in got.cards if c.source.topic and c.source.topic.code == "drug-allergy"]
    assert len(notice) == 1 and "not checked" in notice[0].summary.lower()
    [card] = [c for c in got.cards if c.source.topic and c.source.topic.code == "medication-recommendation"]
    assert "allergies: no interaction" not in (card.detail or "")
    assert PHI not in caplog.text and "KeyError" in caplog.text


def test_recommendations_that_fail_do_not_take_the_safety_cards_with_them(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Building the model's job fails (an unforeseen record shape); the safety cards, computed already,
    # must still go out, and the log must not quote the exception's message (it may hold PHI).
    def broken(*_: object) -> None:
        raise RuntimeError("patient p1 has confirmed x")

    monkeypatch.setattr("cds_service.services.treatment.medication_job", broken)
    context = {"encounterId": "e1", "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": WARFARIN}]}}
    prefetch = prefetch_for([{"resourceType": "Patient", "id": "p1"}, ASPIRIN])
    request = HookRequest.model_validate(hook_request("order-sign", "p1", prefetch, extra_context=context))
    with caplog.at_level(logging.DEBUG):
        got = answer(request, OneMedication())
    assert topics(got.cards) == ["drug-interaction"]
    assert "recommendation-error" in got.reasons
    assert "confirmed" not in caplog.text and "RuntimeError" in caplog.text
