"""Gathering a patient's data for a hook: prefetch first, the EHR's FHIR server for what is missing.

Failure policy, per prefetch key: a value that is absent, `null`, an OperationOutcome or not FHIR is
fetched from `fhirServer` (with the hook's bearer token); a paginated Bundle has its further pages
fetched. If a key the service requires can be had neither way, the hook answers 412; an optional key
that cannot be had is left out and reported (the answer degrades, it is not refused).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cds_service.core.errors import FhirFetchError, PrefetchUnavailable
from cds_service.fhir.bundles import entries, next_link
from cds_service.fhir.client import FhirClient
from cds_service.hooks.wire import HookRequest
from cds_service.services.registry import ServiceSpec

log = logging.getLogger(__name__)

TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}


def render(template: str, context: dict[str, Any]) -> str | None:
    """A prefetch template with its tokens filled from the hook context; None if a token has no value."""
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1)
        value: Any = None
        if name.startswith("context."):
            value = context.get(name.removeprefix("context."))
        elif name in USER_TOKENS:
            user = str(context.get("userId", ""))
            kind, _, ident = user.partition("/")
            value = ident if kind == USER_TOKENS[name] else None
        if not isinstance(value, str | int) or value == "":
            missing = True
            return ""
        return quote(str(value), safe="")

    rendered = TOKEN.sub(fill, template)
    return None if missing else rendered


@dataclass
class PatientData:
    resources: list[dict[str, Any]] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # key -> prefetch | fetched | partial | missing

    @property
    def degraded(self) -> list[str]:
        return sorted(k for k, v in self.origin.items() if v in ("partial", "missing"))


def _usable(key: str, value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return False
    kind = value["resourceType"]
    if kind == "OperationOutcome":
        return False
    expected = PATIENT_PREFETCH[key].split("?")[0].split("/")[0]
    return bool(kind == "Bundle" or kind == expected)


async def _one(key: str, request: HookRequest, client: FhirClient | None, deadline: float) -> tuple[str, list[Any]]:
    value = (request.prefetch or {}).get(key)
    if isinstance(value, dict) and _usable(key, value):
        if value.get("resourceType") != "Bundle":
            return "prefetch", [value]
        if next_link(value) is None:
            return "prefetch", entries(value)
        if client is None:
            return "partial", entries(value)
        try:
            return "prefetch", await client.search_all(value, deadline)
        except FhirFetchError as exc:
            log.warning("prefetch %s: further pages failed: %s", key, exc)
            return "partial", entries(value)
    if value is not None:
        log.info(
            "prefetch %s unusable (%s): fetching",
            key,
            value.get("resourceType") if isinstance(value, dict) else type(value).__name__,
        )
    query = render(PATIENT_PREFETCH[key], request.context)
    if client is None or query is None:
        return "missing", []
    try:
        first = await client.read(query, deadline)
    except FhirFetchError as exc:
        log.warning("fetch %s failed: %s", key, exc)
        return "missing", []
    if first.get("resourceType") == "Bundle":
        try:
            return "fetched", await client.search_all(first, deadline)
        except FhirFetchError as exc:
            log.warning("fetch %s: further pages failed: %s", key, exc)
            return "partial", entries(first)
    return ("fetched", [first]) if _usable(key, first) else ("missing", [])


async def gather(service: ServiceSpec, request: HookRequest, client: FhirClient | None, deadline: float) -> PatientData:
    keys = list(PATIENT_PREFETCH)
    results = await asyncio.gather(*(_one(k, request, client, deadline) for k in keys))
    data = PatientData()
    for key, (origin, found) in zip(keys, results, strict=True):
        data.origin[key] = origin
        data.resources.extend(r for r in found if isinstance(r, dict))
    missing = [k for k in service.required if data.origin[k] == "missing"]
    if missing:
        reason = "no fhirServer to fetch from" if client is None else "the FHIR server could not provide it"
        raise PrefetchUnavailable(missing, reason)
    if data.degraded:
        log.warning("answering with incomplete data: %s", ", ".join(data.degraded))
    return data


PATIENT_PREFETCH: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "medications": "MedicationRequest?patient={{context.patientId}}",
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    "encounters": "Encounter?patient={{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}",
    "immunizations": "Immunization?patient={{context.patientId}}",
    "notes": "DocumentReference?patient={{context.patientId}}",
}
