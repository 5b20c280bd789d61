"""Gathering a hook's data: the caller's templates, prefetch first, the FHIR server for the rest."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from cds_service.core.errors import PrefetchUnavailable
from cds_service.fhir.client import FhirClient
from cds_service.hooks.examples import hook_request, searchset
from cds_service.hooks.prefetch import PATIENT_PREFETCH, PatientData, gather, resource_type
from cds_service.hooks.wire import HookRequest

FHIR = "https://fhir.ehr.test/r4"
TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "labs": "Observation?patient={{context.patientId}}&category=laboratory",
}
PATIENT = {"resourceType": "Patient", "id": "p1"}
LAB = {"resourceType": "Observation", "id": "o1"}


def request(prefetch: dict[str, Any] | None, fhir_server: str | None = None) -> HookRequest:
    return HookRequest.model_validate(hook_request("patient-view", "p1", prefetch, fhir_server=fhir_server))


def run_gather(
    req: HookRequest, required: tuple[str, ...] = (), answer: dict[str, Any] | None = None
) -> tuple[PatientData, list[str]]:
    """gather() against a FHIR server that answers `answer[path]` (404 otherwise); also the paths asked."""
    asked: list[str] = []

    def handler(r: httpx.Request) -> httpx.Response:
        path = r.url.path.removeprefix("/r4/") + (f"?{r.url.query.decode()}" if r.url.query else "")
        asked.append(path)
        found = (answer or {}).get(path)
        return httpx.Response(200, json=found) if found is not None else httpx.Response(404)

    async def go() -> PatientData:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = FhirClient(req.fhirServer, None, http) if req.fhirServer else None
            return await gather(TEMPLATES, required, req, client, time.monotonic() + 5)

    return asyncio.run(go()), asked


def test_only_the_given_templates_are_gathered_and_the_missing_ones_fetched() -> None:
    labs_query = "Observation?patient=p1&category=laboratory"
    data, asked = run_gather(request({"patient": PATIENT}, FHIR), answer={labs_query: searchset([LAB])})
    assert data.origin == {"patient": "prefetch", "labs": "fetched"}
    assert asked == [labs_query]
    assert data.resources == [PATIENT, LAB]


def test_a_required_key_that_cannot_be_had_is_412_naming_it() -> None:
    with pytest.raises(PrefetchUnavailable) as raised:
        run_gather(request({"patient": PATIENT}), required=("patient", "labs"))
    assert raised.value.keys == ["labs"]
    assert "no fhirServer" in raised.value.reason


def test_an_optional_key_that_cannot_be_had_degrades_the_answer() -> None:
    data, _ = run_gather(request({"patient": PATIENT}, FHIR), required=("patient",))
    assert data.origin["labs"] == "missing"
    assert data.degraded == ["labs"]


def test_a_prefetch_value_of_the_wrong_type_or_an_outcome_is_fetched_instead() -> None:
    prefetch = {"patient": {"resourceType": "Condition", "id": "c"}, "labs": {"resourceType": "OperationOutcome"}}
    data, asked = run_gather(request(prefetch, FHIR), answer={"Patient/p1": PATIENT})
    assert sorted(asked) == ["Observation?patient=p1&category=laboratory", "Patient/p1"]  # both asked again
    assert data.origin == {"patient": "fetched", "labs": "missing"}


def test_a_paginated_prefetch_without_a_server_is_partial() -> None:
    page = searchset([LAB]) | {"link": [{"relation": "next", "url": f"{FHIR}/Observation?page=2"}]}
    data, _ = run_gather(request({"patient": PATIENT, "labs": page}))
    assert data.origin["labs"] == "partial"
    assert LAB in data.resources


def test_the_default_templates_use_only_context_tokens_and_name_a_resource_type() -> None:
    for template in PATIENT_PREFETCH.values():
        assert resource_type(template)[0].isupper()
        assert "{{context.patientId}}" in template


def test_a_null_prefetch_value_is_no_data_not_a_request_to_fetch() -> None:
    """CDS Hooks 2.0: `null` is the client saying it has no data for the key (none to fetch)."""
    data, asked = run_gather(request({"patient": PATIENT, "labs": None}, FHIR), required=("patient", "labs"))
    assert asked == []  # nothing fetched, though a server was offered
    assert data.origin == {"patient": "prefetch", "labs": "none"}
    assert data.degraded == []  # complete: an empty result, not a missing one
    assert data.resources == [PATIENT]


def test_a_null_required_key_without_a_server_is_not_412() -> None:
    data, asked = run_gather(request({"patient": PATIENT, "labs": None}), required=("patient", "labs"))
    assert asked == [] and data.origin["labs"] == "none" and data.degraded == []


def test_an_absent_key_is_still_fetched_or_412_when_required() -> None:
    labs_query = "Observation?patient=p1&category=laboratory"
    data, asked = run_gather(request({"patient": PATIENT}, FHIR), answer={labs_query: searchset([LAB])})
    assert asked == [labs_query] and data.origin["labs"] == "fetched"
    with pytest.raises(PrefetchUnavailable) as raised:
        run_gather(request({"patient": PATIENT}), required=("labs",))
    assert raised.value.keys == ["labs"]
