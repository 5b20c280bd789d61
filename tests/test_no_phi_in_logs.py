"""No PHI in logs, tested (hardening issue): realistic traffic with real generator patients, every logger
at DEBUG as an operator chasing a problem would set it, and the captured log scanned for every name, birth
date, address, phone number, identifier and patient id in the bundles.

Found by the campaign: patient ids in 341 log lines through the httpx INFO logger (FHIR query URLs).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds_service.api.main import create_app
from cds_service.core.settings import Settings
from cds_service.hooks.examples import hook_request, prefetch_for
from tests.conftest import bundle_resources
from tests.servers import FakeFhirServer

FHIR = "https://fhir.ehr.test/r4"
TOKEN = "secret-ehr-access-token-123"


def phi_of(resources: list[dict[str, Any]]) -> set[str]:
    """The identifying strings of one patient's record (those long enough to be found by accident only
    if they are really there)."""
    out: set[str] = set()
    for r in resources:
        if r.get("resourceType") != "Patient":
            continue
        out.add(str(r["id"]))
        if r.get("birthDate"):
            out.add(str(r["birthDate"]))
        for name in r.get("name", []):
            out.update(n for n in [name.get("family"), *name.get("given", [])] if isinstance(n, str))
        for address in r.get("address", []):
            out.update(line for line in address.get("line", []) if isinstance(line, str))
        for telecom in r.get("telecom", []):
            if isinstance(telecom.get("value"), str):
                out.add(telecom["value"])
        for identifier in r.get("identifier", []):
            if isinstance(identifier.get("value"), str):
                out.add(identifier["value"])
    return {s for s in out if len(s) >= 5}


def test_realistic_traffic_leaves_no_phi_in_the_log(
    synthea_fhir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    patients = [resources for _, resources in bundle_resources(synthea_fhir)][:3]
    fhir = FakeFhirServer(FHIR, TOKEN)
    settings = Settings(dev_mode=True, data_dir=tmp_path, deadline_ms=20_000, fhir_timeout_ms=10_000)
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings, backend="load", fhir_transport=fhir.transport())) as client:
        for resources in patients:
            pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
            with fhir.serving(resources):  # no prefetch: everything fetched, patient ids in every URL
                fetched = hook_request("patient-view", pid, None, fhir_server=FHIR, access_token=TOKEN)
                assert client.post("/cds-services/diagnosis-suggestions", json=fetched).status_code == 200
            draft = {
                "resourceType": "MedicationRequest",
                "id": "d1",
                "status": "draft",
                "intent": "order",
                "subject": {"reference": f"Patient/{pid}"},
                "medicationCodeableConcept": {"text": "Aspirin 325 MG Oral Tablet"},
            }
            order = hook_request(
                "order-sign",
                pid,
                prefetch_for(resources),
                extra_context={"draftOrders": {"resourceType": "Bundle", "entry": [{"resource": draft}]}},
            )
            assert client.post("/cds-services/treatment-recommendations-order-sign", json=order).status_code == 200
            broken = dict(order, prefetch={**order["prefetch"], "allergies": {"resourceType": "Bundle", "entry": 5}})
            assert client.post("/cds-services/treatment-recommendations-order-sign", json=broken).status_code == 200
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert len(caplog.records) > 20  # the traffic was logged: the scan below is not over an empty log
    phi = set().union(*(phi_of(p) for p in patients))
    assert phi and not [s for s in phi if s in text], [s for s in phi if s in text][:5]
    assert TOKEN not in text
