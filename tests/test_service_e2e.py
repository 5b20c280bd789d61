"""End to end: a real uvicorn server with the shipped model, driven as an EHR would drive it."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.medicationrequest import MedicationRequest
from sqlalchemy import create_engine, text

from cds_service.cards.builders import EVIDENCE_EXTENSION
from cds_service.conformance.profiles import conformance_resources, problems
from cds_service.core.settings import Settings
from cds_service.hooks.examples import hook_request, prefetch_for
from cds_service.safety.interactions import interactions_between
from cds_service.safety.orders import active_drugs
from tests.card_rules import card_problems
from tests.conftest import SPEC_EXAMPLES, bundle_resources, load_example
from tests.servers import FakeFhirServer, free_port, running_server

FHIR = "https://fhir.ehr.test/r4"
PROFILE_OF = {r["type"]: r for r in conformance_resources().values() if r["resourceType"] == "StructureDefinition"}
TOKEN = "secret-ehr-access-token-123"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cds-data")


@pytest.fixture(scope="module")
def fhir() -> FakeFhirServer:
    """The EHR's FHIR server; it serves a patient only inside `fhir.serving(...)`, else answers 503."""
    return FakeFhirServer(FHIR, TOKEN)


@pytest.fixture(scope="module")
def server(data_dir: Path, fhir: FakeFhirServer) -> Iterator[str]:
    port = free_port()
    settings = Settings(
        dev_mode=True,
        data_dir=data_dir,
        public_url=f"http://127.0.0.1:{port}",
        min_card_probability=0.0,  # the interim model is weak: show its best guesses so cards can be checked
        min_evidence_drop=0.0,  # likewise its evidence gate (tested on its own in test_model_trust*.py)
        deadline_ms=20_000,  # CI machines are slow and shared; the deadline has its own test
        fhir_timeout_ms=10_000,
    )
    with running_server(settings, port, fhir.transport()) as url:
        yield url


@pytest.fixture(scope="module")
def patients(synthea_fhir: Path) -> list[list[dict[str, Any]]]:
    return [resources for _, resources in bundle_resources(synthea_fhir)]


def patient_id(resources: list[dict[str, Any]]) -> str:
    return str(next(r["id"] for r in resources if r["resourceType"] == "Patient"))


@pytest.fixture(scope="module")
def carded(server: str, patients: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """The patients whose patient-view gets model cards: the others' records are unfamiliar to the model
    (dead patients scored years later, ages beyond training), which the familiarity guard answers with none."""
    out = []
    for resources in patients:
        request = hook_request("patient-view", patient_id(resources), prefetch_for(resources))
        if post(f"{server}/cds-services/diagnosis-suggestions", request).json()["cards"]:
            out.append(resources)
    assert len(out) >= 2, "the generator fixture should hold at least two patients the model knows"
    return out


def post(url: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(url, json=body, timeout=60, **kw)


def check_cards(cards: list[dict[str, Any]], resources: list[dict[str, Any]]) -> None:
    present = {f"{r['resourceType']}/{r.get('id')}" for r in resources}
    for card in cards:
        assert card_problems(card) == [], card["summary"]
        for suggestion in card.get("suggestions", []):
            for action in suggestion["actions"]:
                if action["type"] == "create":
                    kind = action["resource"]["resourceType"]
                    model = {"Condition": Condition, "MedicationRequest": MedicationRequest}[kind]
                    model.model_validate(action["resource"])  # parses as FHIR R4B
                    sd = PROFILE_OF[kind]
                    assert problems(action["resource"], sd) == []  # and conforms to our profile
        evidence = card.get("extension", {}).get(EVIDENCE_EXTENSION, {}).get("evidence", [])
        for item in evidence:
            assert item["reference"] in present, item["reference"]


def test_discovery_lists_services_with_cds_hooks_2_prefetch(server: str) -> None:
    services = httpx.get(f"{server}/cds-services").json()["services"]
    assert {s["hook"] for s in services} == {"patient-view", "encounter-start", "order-select", "order-sign"}
    for s in services:
        for template in s["prefetch"].values():
            tokens = re.findall(r"\{\{(.*?)\}\}", template)
            assert tokens and all(t.startswith("context.") for t in tokens)


def test_patient_view_with_prefetch_returns_valid_cards_with_evidence(
    server: str, carded: list[list[dict[str, Any]]]
) -> None:
    seen_evidence = 0
    for resources in carded[:3]:
        request = hook_request("patient-view", patient_id(resources), prefetch_for(resources))
        response = post(f"{server}/cds-services/diagnosis-suggestions", request)
        assert response.status_code == 200
        cards = response.json()["cards"]
        assert cards, "min_card_probability=0 must surface the model's top suggestions"
        check_cards(cards, resources)
        seen_evidence += sum(len(c["extension"][EVIDENCE_EXTENSION].get("evidence", [])) for c in cards)
        known = {c["code"]["coding"][0]["code"] for c in resources if c["resourceType"] == "Condition"}
        for card in cards:  # never suggest what is already on the record
            created = card["suggestions"][0]["actions"][0]["resource"]
            assert created["code"]["coding"][0]["code"] not in known
    assert seen_evidence > 0


def test_patient_view_without_prefetch_fetches_from_the_fhir_server(
    server: str, fhir: FakeFhirServer, carded: list[list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    resources = carded[0]
    request = hook_request("patient-view", patient_id(resources), None, fhir_server=FHIR, access_token=TOKEN)
    with fhir.serving(resources) as calls, caplog.at_level(logging.DEBUG):  # Observation answers in two pages
        response = post(f"{server}/cds-services/diagnosis-suggestions", request)
    assert response.status_code == 200
    assert calls["Observation"] == 2  # both pages
    assert {"Condition", "MedicationRequest", "Encounter"} <= set(calls)
    cards = response.json()["cards"]
    assert cards
    check_cards(cards, resources)
    assert TOKEN not in caplog.text


def test_412_when_data_is_neither_prefetched_nor_fetchable(server: str, patients: list[list[dict[str, Any]]]) -> None:
    request = hook_request("patient-view", patient_id(patients[0]), None)
    response = post(f"{server}/cds-services/diagnosis-suggestions", request)
    assert response.status_code == 412
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "conditions" in outcome["issue"][0]["diagnostics"]


def audit_of(data_dir: Path, hook_instance: str) -> tuple[str, dict[str, Any]]:
    """(outcome, details) of the audit record of one hook call."""
    engine = create_engine(f"sqlite:///{data_dir / 'cds.sqlite3'}")
    with engine.connect() as db:
        outcome, details = db.execute(
            text("SELECT outcome, details FROM audit_record WHERE hook_instance = :h"), {"h": hook_instance}
        ).one()
    engine.dispose()
    return str(outcome), json.loads(details) if isinstance(details, str) else details


def test_a_null_prefetch_key_is_no_data_while_an_absent_one_is_still_412(
    server: str, fhir: FakeFhirServer, data_dir: Path, carded: list[list[dict[str, Any]]]
) -> None:
    patient = carded[0]
    resources = [r for r in patient if r["resourceType"] != "Condition"]  # a patient with no conditions
    prefetch = prefetch_for(resources) | {"conditions": None}  # CDS Hooks 2.0: null is "no data"
    request = hook_request("patient-view", patient_id(resources), prefetch)
    response = post(f"{server}/cds-services/diagnosis-suggestions", request)
    assert response.status_code == 200, response.text
    check_cards(response.json()["cards"], resources)
    outcome, details = audit_of(data_dir, request["hookInstance"])
    assert not any("conditions" in r for r in details["reasons"]), details["reasons"]
    assert outcome == "ok", details["reasons"]

    offered = hook_request("patient-view", patient_id(resources), prefetch, fhir_server=FHIR, access_token=TOKEN)
    with fhir.serving(patient) as calls:
        assert post(f"{server}/cds-services/diagnosis-suggestions", offered).status_code == 200
    assert calls["Condition"] == 0  # a server was offered, and still nothing was fetched for a null key

    absent = hook_request(
        "patient-view", patient_id(resources), {k: v for k, v in prefetch.items() if k != "conditions"}
    )
    refused = post(f"{server}/cds-services/diagnosis-suggestions", absent)
    assert refused.status_code == 412
    assert "conditions" in refused.json()["issue"][0]["diagnostics"]


# Drafts tried against the patient's active drugs, each a different mechanism (CYP3A4, bleeding, QT ...).
CANDIDATE_DRAFTS = (
    "Clarithromycin 500 MG Oral Tablet",
    "Ibuprofen 400 MG Oral Tablet",
    "Fluconazole 150 MG Oral Tablet",
    "Spironolactone 25 MG Oral Tablet",
    "Tramadol Hydrochloride 50 MG Oral Tablet",
)


def _interacting_draft(resources: list[dict[str, Any]]) -> tuple[dict[str, Any], str] | None:
    for drug in active_drugs(resources, set()):
        for candidate in CANDIDATE_DRAFTS:
            if interactions_between(candidate, drug.name):
                draft = {
                    "resourceType": "MedicationRequest",
                    "id": "draft-1",
                    "status": "draft",
                    "intent": "order",
                    "subject": {"reference": f"Patient/{patient_id(resources)}"},
                    "medicationCodeableConcept": {"text": candidate},
                }
                return draft, drug.reference
    return None


def test_order_select_with_an_interacting_draft_warns_and_offers_to_remove_it(
    server: str, patients: list[list[dict[str, Any]]]
) -> None:
    found = [(r, d) for r in patients if (d := _interacting_draft(r)) is not None]
    assert found, "the seeded cohort has a patient on a drug from the interaction table"
    resources, (draft, active_ref) = found[0]
    context = {
        "selections": ["MedicationRequest/draft-1"],
        "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]},
    }  # draftOrders: a Bundle with no type, as CDS clients send
    request = hook_request("order-select", patient_id(resources), prefetch_for(resources), extra_context=context)
    response = post(f"{server}/cds-services/treatment-recommendations", request)
    assert response.status_code == 200
    cards = response.json()["cards"]
    check_cards(cards, resources)
    warnings = [c for c in cards if c["source"]["topic"]["code"] == "drug-interaction"]
    assert warnings and warnings[0]["indicator"] in ("warning", "critical")
    action = warnings[0]["suggestions"][0]["actions"][0]
    assert action == {"type": "delete", "description": action["description"], "resourceId": "MedicationRequest/draft-1"}
    assert active_ref in warnings[0]["detail"].replace("\\", "")
    assert all(r["display"] for r in warnings[0]["overrideReasons"])


def _spec_request(name: str) -> tuple[str, dict[str, Any]]:
    hooks = ("patient-view", "encounter-start", "order-select", "order-sign", "appointment-book")
    if name.startswith("hook-"):
        hook = next(h for h in hooks if h in name)
    else:
        hook = "order-sign" if "draftOrders" in name else "patient-view"
    service = {
        "patient-view": "diagnosis-suggestions",
        "encounter-start": "diagnosis-suggestions-encounter-start",
        "order-select": "treatment-recommendations",
        "order-sign": "treatment-recommendations-order-sign",
        "appointment-book": "diagnosis-suggestions",
    }[hook]
    body = {
        "hookInstance": str(uuid.uuid4()),
        "hook": hook,
        **load_example(name),
        "prefetch": load_example("prefetch-data-example.json")["prefetch"],
    }
    return service, body


SPEC_REQUESTS = sorted(
    p.name for p in SPEC_EXAMPLES.glob("*.json") if p.name.startswith(("hook-", "context-", "request-"))
)


_NO_CONDITIONS = "Prefetch data conditions missing and no fhirServer to fetch from"
_NO_ORDER_DATA = "Prefetch data conditions, medications, allergies missing and no fhirServer to fetch from"
# the spec's example fhirServer is plain http on a public host: the EHR's token is never sent there
_UNREACHABLE = (
    "Prefetch data patient, conditions missing and the fhirServer may not be called "
    "(https required, or not in CDS_FHIR_ALLOWED_ORIGINS)"
)
# What each spec example gets, sent as `_spec_request` sends it (with the spec's prefetch example: "patient",
# "hemoglobin-a1c" and "user", so none of the other data our services require; and no fhirServer):
# (status, the field a 400's detail names first, or a 412's diagnostics). None gets a 200.
SPEC_EXAMPLE_ANSWERS: dict[str, tuple[int, str]] = {
    # draftOrders contexts, sent as order-sign: they show only encounterId and draftOrders, and order-sign
    # requires userId and patientId (userId is checked first)
    "context-draftOrders-no-medicationRequestId.json": (400, "context.userId"),
    "context-draftOrders-with-medicationRequestId.json": (400, "context.userId"),
    # a patientId alone, sent as patient-view: patient-view requires userId too
    "context-patientId-only.json": (400, "context.userId"),
    # appointment-book: no service of ours answers it (sent to the patient-view service, which refuses the hook)
    "hook-appointment-book-context-1.fragment.json": (400, "hook"),
    "hook-appointment-book-context-1.v1.0.1-array.fragment.json": (400, "hook"),
    "hook-appointment-book-context-2.fragment.json": (400, "hook"),
    # valid contexts, but required data neither prefetched (the spec's prefetch has "patient", no "conditions")
    # nor fetchable (no fhirServer): 412 naming what is missing
    "hook-encounter-start-context.fragment.json": (412, _NO_CONDITIONS),
    "hook-patient-view-context-1.fragment.json": (412, _NO_CONDITIONS),
    "hook-patient-view-context-2.fragment.json": (412, _NO_CONDITIONS),
    # the order hooks' three required keys, likewise; DSTU2 and STU3 drafts included: the data is gathered
    # before any draft order is read, so their FHIR version never comes into it
    "hook-order-select-dstu2.json": (412, _NO_ORDER_DATA),
    "hook-order-select-r4.json": (412, _NO_ORDER_DATA),
    "hook-order-select-r4.v1.0.1-no-bundle-type.json": (412, _NO_ORDER_DATA),
    "hook-order-select-stu3.json": (412, _NO_ORDER_DATA),
    "hook-order-sign-dstu2.fragment.json": (412, _NO_ORDER_DATA),
    "hook-order-sign-r4.json": (412, _NO_ORDER_DATA),
    "hook-order-sign-r4.v1.0.1-no-bundle-type.json": (412, _NO_ORDER_DATA),
    "hook-order-sign-stu3.json": (412, _NO_ORDER_DATA),
    # a whole request, sent as is: its prefetch holds only "patientToGreet", and its fhirServer (the spec's)
    # is plain http, so it is not called
    "request-patient-view.json": (412, _UNREACHABLE),
    # patient-view without the required context.patientId (a known non-conformance of the spec's example)
    "request-with-extension.json": (400, "context.patientId"),
}


@pytest.mark.parametrize("name", SPEC_REQUESTS)
def test_every_spec_example_gets_a_well_formed_answer(server: str, name: str) -> None:
    assert name in SPEC_EXAMPLE_ANSWERS, f"a new spec example: add what {name} must get"
    status, expected = SPEC_EXAMPLE_ANSWERS[name]
    if name.startswith("request-"):
        body = load_example(name)
        service = "diagnosis-suggestions"
    else:
        service, body = _spec_request(name)
    response = post(f"{server}/cds-services/{service}", body)  # the spec's example FHIR servers answer 503
    assert response.status_code == status, response.text
    if status == 200:
        for card in response.json()["cards"]:
            assert card_problems(card) == []
    elif status == 400:
        assert response.json()["detail"].startswith(f"{expected}: ")  # names the field
    else:
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["diagnostics"] == expected


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b.update(hookInstance="not-a-uuid"), "hookInstance"),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b.update(context="x"), "context"),
        (lambda b: b.update(fhirServer="ftp://x"), "fhirServer"),
        (lambda b: b.update(fhirAuthorization={"access_token": "t"}), "fhirAuthorization"),
        (lambda b: b.update(hook="order-sign"), "hook"),
    ],
)
def test_malformed_requests_are_400_naming_the_field(
    server: str, patients: list[list[dict[str, Any]]], mutate: Any, field: str
) -> None:
    body = hook_request("patient-view", patient_id(patients[0]), prefetch_for(patients[0]))
    mutate(body)
    response = post(f"{server}/cds-services/diagnosis-suggestions", body)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(field)


def test_broken_json_unknown_service_and_huge_bodies(server: str) -> None:
    bad = httpx.post(
        f"{server}/cds-services/diagnosis-suggestions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400
    assert httpx.post(f"{server}/cds-services/nope", json={}).status_code == 404
    huge = httpx.post(f"{server}/cds-services/diagnosis-suggestions", content=b"x" * 21_000_000, timeout=60)
    assert huge.status_code == 413
    assert httpx.get(f"{server}/healthz").status_code == 200  # still up


def test_hostile_bundles_degrade_instead_of_failing(
    server: str, data_dir: Path, patients: list[list[dict[str, Any]]]
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def missing_data_count() -> float:
        for family in text_string_to_metric_families(httpx.get(f"{server}/metrics").text):
            for sample in family.samples:
                labels = {"service": "diagnosis-suggestions", "reason": "data-missing"}
                if sample.name == "cds_degraded_responses_total" and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    resources = patients[1]
    prefetch = prefetch_for(resources)
    prefetch["observations"] = {"resourceType": "OperationOutcome", "issue": []}  # EHR could not prefetch
    prefetch["procedures"] = {"resourceType": "Bundle", "entry": [1, None, {"resource": "x"}, {"resource": {}}]}
    prefetch["encounters"] = "garbage"
    conditions = prefetch["conditions"]["entry"]
    conditions.append({"resource": {"resourceType": "Condition", "id": "bad", "code": 5, "onsetDateTime": "x"}})
    conditions.append({"resource": {"resourceType": "Condition", "id": "deep", "code": {"coding": [[[[{}]]]]}}})
    request = hook_request("patient-view", patient_id(resources), prefetch)
    before = missing_data_count()
    response = post(f"{server}/cds-services/diagnosis-suggestions", request)
    assert response.status_code == 200
    for card in response.json()["cards"]:
        assert card_problems(card) == []
    # Observations (an OperationOutcome) and encounters (not FHIR) could not be had (no fhirServer): the answer
    # is degraded for exactly those two, by key in the audit record and counted in the metric. Procedures (a
    # Bundle whose junk entries are skipped) and conditions (the malformed ones cost only themselves) are not.
    outcome, details = audit_of(data_dir, request["hookInstance"])
    assert outcome == "degraded"
    assert sorted(details["reasons"]) == ["data-missing:encounters", "data-missing:observations"]
    assert missing_data_count() == before + 2


def test_feedback_is_validated_stored_once_and_audited(server: str, data_dir: Path, carded: list[Any]) -> None:
    request = hook_request("patient-view", patient_id(carded[-1]), prefetch_for(carded[-1]))
    cards = post(f"{server}/cds-services/diagnosis-suggestions", request).json()["cards"]
    card = cards[0]
    accepted = {
        "card": card["uuid"],
        "outcome": "accepted",
        "outcomeTimestamp": "2026-11-23T10:00:00Z",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
    }
    url = f"{server}/cds-services/diagnosis-suggestions/feedback"
    first = post(url, {"feedback": [accepted]}).json()
    again = post(url, accepted).json()  # a single item, delivered twice
    assert (first["stored"], again["stored"]) == (1, 0)
    for example in (
        "feedback-accepted.json",
        "feedback-overridden-no-reason.json",
        "feedback-overridden-with-reason.json",
    ):
        assert post(url, load_example(example)).status_code == 200
    bad = post(url, {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-23T10:00:00Z"})
    assert bad.status_code == 400 and "acceptedSuggestions" in bad.json()["detail"]

    engine = create_engine(f"sqlite:///{data_dir / 'cds.sqlite3'}")
    with engine.connect() as db:
        rows = db.execute(
            text("SELECT known_card, accepted_suggestions FROM feedback_record WHERE card_id = :c"), {"c": card["uuid"]}
        ).all()
        audit = db.execute(
            text("SELECT service, model_version, card_ids FROM audit_record WHERE hook_instance = :h"),
            {"h": request["hookInstance"]},
        ).one()
    assert len(rows) == 1 and rows[0][0]
    assert audit[0] == "diagnosis-suggestions" and audit[1].startswith("synthea-cpu@")
    assert set(json.loads(audit[2])) == {c["uuid"] for c in cards}


def test_cors_preflight_allows_authorization(server: str) -> None:
    response = httpx.options(
        f"{server}/cds-services/diagnosis-suggestions",
        headers={
            "Origin": "https://ehr.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_openapi_documents_the_hook_endpoints(server: str) -> None:
    spec = httpx.get(f"{server}/openapi.json").json()
    post_op = spec["paths"]["/cds-services/{service_id}"]["post"]
    assert "HookRequest" in json.dumps(post_op["requestBody"])
    assert {"200", "400", "401", "412", "413"} <= set(post_op["responses"])


def test_a_missed_deadline_still_answers_with_safety_cards(
    tmp_path: Path, patients: list[list[dict[str, Any]]]
) -> None:
    found = [(r, d) for r in patients if (d := _interacting_draft(r)) is not None]
    resources, (draft, _) = found[0]
    settings = Settings(dev_mode=True, data_dir=tmp_path, deadline_ms=1, min_card_probability=0.0)
    context = {"draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]}}
    request = hook_request("order-sign", patient_id(resources), prefetch_for(resources), extra_context=context)
    with running_server(settings) as url:
        response = post(f"{url}/cds-services/treatment-recommendations-order-sign", request)
        metrics = httpx.get(f"{url}/metrics").text
    assert response.status_code == 200
    topics = {c["source"]["topic"]["code"] for c in response.json()["cards"]}
    assert topics == {"drug-interaction"}  # the model's cards missed the deadline, the safety card did not
    assert re.search(r'cds_deadline_misses_total\{service="treatment-recommendations-order-sign"\} [1-9]', metrics)


def test_patient_view_precomputes_what_order_select_needs(server: str, patients: list[list[dict[str, Any]]]) -> None:
    def metric(pattern: str) -> float:
        found = re.search(pattern, httpx.get(f"{server}/metrics").text, re.M)
        return float(found.group(1)) if found else 0.0

    def cache_hits() -> float:
        return metric(r'^cds_score_cache_total\{result="hit"\} ([0-9.e+]+)$')

    def precomputed() -> float:
        return metric(r"^cds_precomputed_total ([0-9.e+]+)$")

    resources = patients[3]
    prefetch = prefetch_for(resources)
    done_before = precomputed()
    post(f"{server}/cds-services/diagnosis-suggestions", hook_request("patient-view", patient_id(resources), prefetch))
    # the precompute runs in the background (well under a second; it counts nothing when an earlier test's
    # order hook already cached this very job, and the cache hit below holds either way)
    deadline = time.monotonic() + 15
    while precomputed() == done_before and time.monotonic() < deadline:
        time.sleep(0.1)
    before = cache_hits()
    draft = {"resourceType": "MedicationRequest", "id": "d9", "status": "draft", "intent": "order",
             "subject": {"reference": f"Patient/{patient_id(resources)}"},
             "medicationCodeableConcept": {"text": "Sterile water 10 ML Injection"}}  # fmt: skip
    context = {"selections": ["MedicationRequest/d9"], "draftOrders": {"resourceType": "Bundle",
               "type": "collection", "entry": [{"resource": draft}]}}  # fmt: skip
    request = hook_request("order-select", patient_id(resources), prefetch, extra_context=context)
    response = post(f"{server}/cds-services/treatment-recommendations", request)
    assert response.status_code == 200
    check_cards(response.json()["cards"], resources)
    assert cache_hits() == before + 1  # answered from what patient-view precomputed


def test_a_malformed_allergy_costs_only_itself_at_order_sign(server: str, data_dir: Path) -> None:
    def med(rid: str, text: str, status: str) -> dict[str, Any]:
        return {"resourceType": "MedicationRequest", "id": rid, "status": status, "intent": "order",
                "subject": {"reference": "Patient/p-iso"}, "medicationCodeableConcept": {"text": text}}  # fmt: skip

    penicillin = {
        "resourceType": "AllergyIntolerance",
        "id": "al-penicillin",
        "patient": {"reference": "Patient/p-iso"},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005"}], "text": "Penicillin"},
        "reaction": [{"substance": {"text": "Amoxicillin"}}],  # matching is by substance name, no drug classes
        "criticality": "high",
    }
    malformed = {"resourceType": "AllergyIntolerance", "id": "al-bad", "clinicalStatus": "active", "code": 5}
    record = [
        {"resourceType": "Patient", "id": "p-iso", "gender": "female", "birthDate": "1950-01-01"},
        med("m-aspirin", "Aspirin 81 MG Oral Tablet", "active"),
        malformed,
        penicillin,
    ]
    drafts = [med("d-warfarin", "Warfarin Sodium 5 MG Oral Tablet", "draft"),
              med("d-amoxicillin", "Amoxicillin 500 MG Oral Capsule", "draft")]  # fmt: skip
    context = {"draftOrders": {"resourceType": "Bundle", "entry": [{"resource": d} for d in drafts]}}
    request = hook_request("order-sign", "p-iso", prefetch_for(record), extra_context=context)
    response = post(f"{server}/cds-services/treatment-recommendations-order-sign", request)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    check_cards(cards, record + drafts)
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for card in cards:
        by_topic.setdefault(card["source"]["topic"]["code"], []).append(card)
    assert any("Warfarin" in c["summary"] and "Aspirin" in c["summary"] for c in by_topic["drug-interaction"])
    assert any("Amoxicillin" in c["summary"] and c["indicator"] == "critical" for c in by_topic["drug-allergy"])
    for card in by_topic.get("medication-recommendation", []):
        assert "allergies: no interaction" not in card["detail"]  # never claims a check it could not finish
    outcome, details = audit_of(data_dir, request["hookInstance"])
    assert outcome == "degraded" and "safety-check-partial:allergies" in details["reasons"]
