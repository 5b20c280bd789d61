"""The HTTP layer's one error table, through the app (no model, a fake FHIR server, SQLite)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text

from cds_service.api.errors import ANSWERED, response_for
from cds_service.api.main import create_app
from cds_service.core.errors import AuthError, InvalidRequest, PrefetchUnavailable, UnknownService
from cds_service.core.settings import Settings
from cds_service.hooks.examples import hook_request, searchset
from cds_service.services.answer import HookAnswerer, HookCall
from cds_service.services.registry import SERVICES
from tests.records import ASPIRIN_DRAFT, WARFARIN, order_sign, warfarin_aspirin_order_sign
from tests.servers import FakeFhirServer

FHIR = "https://fhir.ehr.test/r4"
DX = "/cds-services/diagnosis-suggestions"
PREFETCH = {"patient": {"resourceType": "Patient", "id": "p1"}, "conditions": searchset([])}
LIMIT = 50_000


def hook_errors(status: str) -> float:
    labels = {"service": "diagnosis-suggestions", "status": status}
    return REGISTRY.get_sample_value("cds_hook_errors_total", labels) or 0.0


def audit(data_dir: Path, hook_instance: str) -> tuple[int, dict[str, Any]]:
    engine = create_engine(f"sqlite:///{data_dir / 'cds.sqlite3'}")
    with engine.connect() as db:
        status, details = db.execute(
            text("SELECT status, details FROM audit_record WHERE hook_instance = :h"), {"h": hook_instance}
        ).one()
    engine.dispose()
    return status, json.loads(details) if isinstance(details, str) else details


@pytest.fixture()
def fhir() -> FakeFhirServer:
    return FakeFhirServer(FHIR)


def client_for(settings: Settings, fhir: FakeFhirServer) -> Iterator[TestClient]:
    with TestClient(create_app(settings, backend=None, fhir_transport=fhir.transport())) as client:
        yield client


@pytest.fixture()
def dev(tmp_path: Path, fhir: FakeFhirServer) -> Iterator[TestClient]:
    yield from client_for(Settings(dev_mode=True, data_dir=tmp_path, max_body_bytes=LIMIT), fhir)


@pytest.fixture()
def secured(tmp_path: Path, fhir: FakeFhirServer) -> Iterator[TestClient]:
    keys: dict[str, object] = {"keys": []}  # an allow-listed issuer whose tokens we never see: every call is refused
    yield from client_for(Settings(data_dir=tmp_path, jwt_jwks={"https://ehr.example/": keys}), fhir)


def test_every_answered_error_has_its_status() -> None:
    samples = [InvalidRequest("x: y"), AuthError("no"), UnknownService("s"), PrefetchUnavailable(["k"], "why")]
    assert {type(e) for e in samples} == set(ANSWERED)
    assert [response_for(e).status_code for e in samples] == [400, 401, 404, 412]


def test_an_unknown_service_is_404_even_with_a_broken_body(dev: TestClient) -> None:
    assert dev.post("/cds-services/nope", json={}).json() == {"detail": "no CDS service named 'nope'"}
    broken = dev.post("/cds-services/nope", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 404
    assert dev.post("/cds-services/nope/feedback", json={}).status_code == 404


def test_a_context_that_does_not_fit_its_hook_is_400_naming_the_field_and_audited(
    dev: TestClient, tmp_path: Path
) -> None:
    body = hook_request("patient-view", "p1", PREFETCH)
    del body["context"]["userId"]
    before = hook_errors("400")
    response = dev.post(DX, json=body)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("context.userId:")
    assert hook_errors("400") == before + 1
    status, details = audit(tmp_path, body["hookInstance"])
    assert (status, details["reasons"]) == (400, ["bad-context"])


def test_unavailable_required_data_is_412_as_an_operation_outcome(dev: TestClient, tmp_path: Path) -> None:
    body = hook_request("patient-view", "p1", None)
    before = hook_errors("412")
    response = dev.post(DX, json=body)
    assert response.status_code == 412
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert "patient, conditions" in response.json()["issue"][0]["diagnostics"]
    assert hook_errors("412") == before + 1
    assert audit(tmp_path, body["hookInstance"])[0] == 412


def test_bodies_over_the_limit_are_413_declared_or_streamed(dev: TestClient) -> None:
    declared = dev.post(DX, content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"})
    streamed = dev.post(DX, content=iter([b"x" * LIMIT, b"x"]), headers={"content-type": "application/json"})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json() == {"detail": f"request body larger than {LIMIT} bytes"}


def test_feedback_that_is_not_json_is_400(dev: TestClient) -> None:
    response = dev.post(f"{DX}/feedback", content=b"nope", headers={"content-type": "application/json"})
    assert response.json() == {"detail": "body: not valid JSON"}


def test_a_rejected_jwt_is_a_bare_401_before_the_body_is_looked_at(secured: TestClient) -> None:
    before = hook_errors("401")
    for body in (hook_request("patient-view", "p1", PREFETCH), {"hook": 5}):
        response = secured.post(DX, json=body, headers={"Authorization": "Bearer abc.def"})
        assert (response.status_code, response.content) == (401, b"")
    assert hook_errors("401") == before + 2
    assert secured.post(f"{DX}/feedback", json={}).status_code == 401
    assert secured.post("/cds-services/nope", json={}).status_code == 404  # no service, nothing to authorise


def test_an_unexpected_failure_is_an_empty_answer_never_a_5xx(
    dev: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(answerer: HookAnswerer, call: HookCall) -> None:
        raise RuntimeError("a bug")

    spec = SERVICES["diagnosis-suggestions"]
    monkeypatch.setitem(SERVICES, spec.id, dataclasses.replace(spec, handler=broken))
    body = hook_request("patient-view", "p1", PREFETCH)
    response = dev.post(DX, json=body)
    assert (response.status_code, response.json()) == (200, {"cards": []})
    assert audit(tmp_path, body["hookInstance"])[1]["reasons"][-1] == "internal-error"


def test_a_failure_after_the_safety_cards_keeps_them(
    dev: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the hostile-client campaign: the catch-all threw away safety cards already built (22 of 156
    answers lost a major warfarin + aspirin warning). A later stage's failure now costs only its own cards."""
    spec = SERVICES["treatment-recommendations-order-sign"]
    real = spec.handler

    async def fails_after_the_safety_cards(answerer: HookAnswerer, call: HookCall) -> None:
        await real(answerer, call)
        raise RuntimeError("a bug in a later stage")

    monkeypatch.setitem(SERVICES, spec.id, dataclasses.replace(spec, handler=fails_after_the_safety_cards))
    body = warfarin_aspirin_order_sign()
    response = dev.post(f"/cds-services/{spec.id}", json=body)
    assert response.status_code == 200
    assert [c["summary"].split(":")[0] for c in response.json()["cards"]] == ["Major interaction"]
    assert "internal-error" in audit(tmp_path, body["hookInstance"])[1]["reasons"]


@pytest.mark.parametrize("key", ["medications", "allergies"])
def test_a_malformed_bundle_keeps_the_other_checks_and_says_what_it_could_not_check(dev: TestClient, key: str) -> None:
    """Found by the campaign: a Bundle whose `entry` is a number emptied the whole answer."""
    body = warfarin_aspirin_order_sign()
    body["prefetch"][key] = {"resourceType": "Bundle", "type": "searchset", "entry": 5}
    response = dev.post("/cds-services/treatment-recommendations-order-sign", json=body)
    assert response.status_code == 200
    summaries = [c["summary"] for c in response.json()["cards"]]
    checked = "Interaction check" if key == "medications" else "Allergy check"
    assert any(s.startswith(f"{checked} covered part of the record") for s in summaries), summaries
    if key == "allergies":  # the interaction with the active warfarin is still found
        assert any(s.startswith("Major interaction") for s in summaries), summaries


def test_missing_data_is_fetched_through_the_fhir_transport(dev: TestClient, fhir: FakeFhirServer) -> None:
    record = [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Condition", "id": "c1"}]
    with fhir.serving(record) as calls:
        response = dev.post(DX, json=hook_request("patient-view", "p1", None, fhir_server=FHIR))
    assert response.status_code == 200
    assert calls["Patient"] == 1 and calls["Condition"] == 1


def test_a_deeply_nested_body_is_a_400_never_a_500(dev: TestClient) -> None:
    """Found by the campaign: 10,000-deep feedback JSON gave a 500 (the validator's recursion)."""
    deep = ('{"feedback": ' + "[" * 10_000 + "]" * 10_000 + "}").encode()
    response = dev.post(f"{DX}/feedback", content=deep, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (400, {"detail": "body: JSON nested too deeply"})


def test_another_patients_prefetched_record_is_never_read_as_this_ones(dev: TestClient, tmp_path: Path) -> None:
    """Found by the campaign: the prefetched Patient was not checked against context.patientId. Another
    patient's Patient resource is dropped (the key counts as partial); the safety checks still run."""
    other = {"resourceType": "Patient", "id": "someone-else", "birthDate": "1930-01-01"}
    body = order_sign([other, WARFARIN], [ASPIRIN_DRAFT])
    response = dev.post("/cds-services/treatment-recommendations-order-sign", json=body)
    assert response.status_code == 200
    assert any(c["summary"].startswith("Major interaction") for c in response.json()["cards"])
    assert "data-partial:patient" in audit(tmp_path, body["hookInstance"])[1]["reasons"]


@pytest.mark.parametrize("field", ["patientId", "userId", "encounterId"])
def test_an_over_long_id_is_a_400_naming_it_before_it_reaches_the_database(dev: TestClient, field: str) -> None:
    """Found by the campaign: over-long ids gave 500s or skipped audit rows."""
    body = hook_request("patient-view", "p1", PREFETCH)
    body["context"][field] = "x" * 10_000
    response = dev.post(DX, json=body)
    assert response.status_code == 400 and response.json()["detail"].startswith(f"context.{field}: ")
