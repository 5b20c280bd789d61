"""The trust gates between the model and the physician (`services.trust`, `ml.familiarity`).

Each test states what must never reach a card: a recommendation without an indication in the record, a
suggestion its top evidence does not move, a probability claiming certainty, a card for a record unlike the
training data. The stand-in backend returns fixed findings so that each gate is tested alone; the shipped
model on real generator records is in `test_model_trust_generator.py`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from cds_service.cards.builders import EVIDENCE_EXTENSION
from cds_service.core.settings import Settings
from cds_service.hooks.examples import hook_request, prefetch_for
from cds_service.hooks.wire import HookRequest
from cds_service.ml.contract import EvidenceItem, Finding, ScoringJob, ScoringResult
from cds_service.services.answer import HookAnswer, HookAnswerer
from cds_service.services.registry import SERVICES
from cds_service.services.trust import evidence_holds, trusted_findings
from tests.records import WARFARIN

VERSION = "fake@1"


def condition(cid: str, text: str, snomed: str, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"code": status}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": snomed, "display": text}], "text": text},
        "onsetDateTime": "2018-05-02T10:00:00Z",
    }


PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1961-03-04"}
HYPERLIPIDEMIA = condition("c-lipid", "Hyperlipidemia", "55822004")
MIGRAINE = condition("c-migraine", "Migraine", "37796009")


def evidence(drop: float | None, share: float = 0.6, source: str = "Observation/o1") -> EvidenceItem:
    return EvidenceItem(source=source, display="Total cholesterol", time=1.6e9, share=share, drop=drop)


def finding(head: str, token: str, display: str, p: float = 0.6, drop: float | None = 0.2) -> Finding:
    return Finding(head, 0, token, display, p, 0.2, [evidence(drop)])


class FixedBackend:
    name = "fixed"

    def __init__(self, findings: list[Finding], familiarity: dict[str, Any] | None = None) -> None:
        self.findings = findings
        self.familiarity = familiarity

    @property
    def model_version(self) -> str | None:
        return VERSION

    async def score(self, job: ScoringJob, deadline: float) -> ScoringResult:
        found = [f for f in self.findings if f.head == job.head]
        return ScoringResult(VERSION, found, {"forward": 1.0}, familiarity=self.familiarity)

    def close(self) -> None:
        pass


def ask(backend: FixedBackend, service: str, record: list[dict[str, Any]], **context: Any) -> HookAnswer:
    hook = SERVICES[service].hook
    request = HookRequest.model_validate(hook_request(hook, "p1", prefetch_for(record), extra_context=context))

    async def go() -> HookAnswer:
        async with httpx.AsyncClient() as http:
            answerer = HookAnswerer(Settings(dev_mode=True, data_dir=Path("unused")), backend, http)
            return await answerer.handle(SERVICES[service], request)

    return asyncio.run(go())


def order_select(backend: FixedBackend, record: list[dict[str, Any]], draft_text: str) -> HookAnswer:
    draft = {
        "resourceType": "MedicationRequest",
        "id": "d1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": draft_text},
    }
    return ask(
        backend,
        "treatment-recommendations",
        record,
        draftOrders={"resourceType": "Bundle", "entry": [{"resource": draft}]},
        selections=["MedicationRequest/d1"],
    )


def model_cards(answer: HookAnswer) -> list[Any]:
    return [
        c for c in answer.cards if c.source.topic and c.source.topic.code.endswith(("suggestion", "recommendation"))
    ]


def test_a_medication_is_recommended_only_with_an_indication_in_the_record_and_names_it() -> None:
    statin = finding("medication", "RXNORM/312961", "Simvastatin 20 MG Oral Tablet")
    without = order_select(FixedBackend([statin]), [PATIENT, MIGRAINE], "Acetaminophen 325 MG Oral Tablet")
    assert model_cards(without) == [] and without.withheld == ["no-indication"]
    shown = order_select(FixedBackend([statin]), [PATIENT, HYPERLIPIDEMIA], "Acetaminophen 325 MG Oral Tablet")
    (card,) = model_cards(shown)
    assert "Hyperlipidemia" in card.summary and "recorded 2018-05-02" in (card.detail or "")
    assert card.extension[EVIDENCE_EXTENSION]["indication"] == "Condition/c-lipid"
    resolved = condition("c-lipid", "Hyperlipidemia", "55822004", status="resolved")
    gone = order_select(FixedBackend([statin]), [PATIENT, resolved], "Acetaminophen 325 MG Oral Tablet")
    assert model_cards(gone) == [] and gone.withheld == ["no-indication"]


def test_the_issues_patient_gets_neither_migraine_drugs_nor_a_beta_blocker_beside_verapamil() -> None:
    """Atrial fibrillation on warfarin, digoxin, verapamil and simvastatin, no migraine: topiramate has no
    indication in the record; propranolol has one (rate control) but is never chosen beside verapamil."""
    import numpy as np

    from cds_service.ml.recommend import choose, interaction_matrix

    afib = condition("c-af", "Atrial fibrillation", "49436004")
    got = order_select(
        FixedBackend([finding("medication", "RXNORM/199889", "topiramate 100 MG Oral Tablet", 0.9)]),
        [PATIENT, afib],
        "Clarithromycin 500 MG Oral Tablet",
    )
    assert model_cards(got) == [] and got.withheld == ["no-indication"]
    labels = [
        {"token": "RXNORM/856448", "display": "propranolol hydrochloride 40 MG Oral Tablet"},
        {"token": "RXNORM/314076", "display": "Lisinopril 10 MG Oral Tablet"},
    ]
    on = [
        "Warfarin Sodium 5 MG Oral Tablet",
        "Digoxin 0.125 MG Oral Tablet",
        "verapamil hydrochloride 80 MG Oral Tablet",
    ]
    job = ScoringJob("medication", "p1", [], 0.0, avoid_drugs=on, max_findings=4)
    names = [x["display"] for x in labels]
    picked = choose(job, np.asarray([0.99, 0.5], dtype=np.float32), labels, [0.2, 0.2], interaction_matrix(names))
    assert picked == [1]  # propranolol (major with verapamil: AV block) is out; lisinopril stays


def test_a_suggestion_its_top_evidence_does_not_move_is_withheld() -> None:
    weak = finding("diagnosis", "SNOMED/38341003", "Hypertension", drop=0.01)
    unchecked = finding("diagnosis", "SNOMED/44054006", "Diabetes", drop=None)
    strong = finding("diagnosis", "SNOMED/55822004", "Hyperlipidemia", drop=0.08)
    got = ask(FixedBackend([weak, unchecked, strong]), "diagnosis-suggestions", [PATIENT])
    assert [c.summary.split(" (")[0] for c in model_cards(got)] == ["Consider Hyperlipidemia"]
    assert got.withheld == ["weak-evidence", "weak-evidence"]
    # the gate reads the top source by share, not the first listed
    mixed = Finding("diagnosis", 0, "SNOMED/1", "x", 0.5, 0.2, [evidence(0.3, share=0.1), evidence(0.0, share=0.7)])
    assert not evidence_holds(mixed, 0.05)
    shown, withheld = trusted_findings("svc", [strong], [PATIENT], min_drop=0.1)
    assert shown == [] and withheld == ["weak-evidence"]  # the minimum is the setting's, not a constant


def test_no_card_claims_certainty() -> None:
    sure = finding("diagnosis", "SNOMED/55822004", "Hyperlipidemia", p=0.9993)
    (card,) = model_cards(ask(FixedBackend([sure]), "diagnosis-suggestions", [PATIENT]))
    assert "over 95%" in card.summary and "100%" not in card.summary and "99%" not in (card.detail or "")
    assert card.extension[EVIDENCE_EXTENSION]["probability"] <= 0.99


def test_an_unfamiliar_record_gets_no_model_card_but_keeps_its_safety_cards() -> None:
    verdict = {"familiar": False, "failed": ["gap", "age"], "measures": {"gap_days": 2000.0}}
    statin = finding("medication", "RXNORM/312961", "Simvastatin 20 MG Oral Tablet")
    got = order_select(
        FixedBackend([statin], verdict), [PATIENT, HYPERLIPIDEMIA, WARFARIN], "Ibuprofen 400 MG Oral Tablet"
    )
    assert model_cards(got) == []
    assert "unfamiliar-record" in got.reasons and got.withheld == ["unfamiliar:gap", "unfamiliar:age"]
    assert [c.source.topic.code for c in got.cards if c.source.topic] == ["drug-interaction"]
    familiar = {"familiar": True, "failed": [], "measures": {}}
    ok = order_select(FixedBackend([statin], familiar), [PATIENT, HYPERLIPIDEMIA], "Ibuprofen 400 MG Oral Tablet")
    assert len(model_cards(ok)) == 1 and "unfamiliar-record" not in ok.reasons
