"""Gathering a patient's data for a hook: prefetch first, the EHR's FHIR server for what is missing.

Failure policy, per prefetch key: a key present with the value `null` is the client saying it has no
data for it (CDS Hooks 2.0: a patient with no conditions), so it is an empty result that is complete
(origin "none"): nothing is fetched, it is never a 412 and never a degradation. A key that is absent, or
whose value is an OperationOutcome or not FHIR, is fetched from `fhirServer` (with the hook's bearer
token); a paginated Bundle has its further pages fetched. If a key the service requires can be had
neither way, the hook answers 412; an optional key that cannot be had is left out and reported (the
answer degrades, it is not refused).

The templates and the required keys are the caller's (each service declares its own); this module only
knows the CDS Hooks rules for filling and honouring them, so the protocol layer never depends on the
services built over it. `PATIENT_PREFETCH` is the default set those services declare.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cds_service.core.errors import FhirFetchError, PrefetchUnavailable
from cds_service.fhir.bundles import entries, next_link
from cds_service.fhir.client import FhirClient
from cds_service.hooks.wire import HookRequest

log = logging.getLogger(__name__)

# The whole record an answer may draw on, as CDS Hooks 2.0 tokens only (no FHIRPath): the prefetch the
# registry declares for every service, and the shape `hooks.examples` builds requests in.
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
    """The resources gathered for one hook call, and where each key's came from (the degradation reasons)."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # key -> prefetch | none | fetched | partial | missing

    @property
    def degraded(self) -> list[str]:
        return sorted(k for k, v in self.origin.items() if v in ("partial", "missing"))


def resource_type(template: str) -> str:
    """The resource type a template asks for: `Patient/{{context.patientId}}` and `Patient?...` both `Patient`."""
    return template.split("?")[0].split("/")[0]


def _usable(template: str, value: Any) -> bool:
    """A FHIR resource of the type the template asks for, or a Bundle; an OperationOutcome is the EHR
    saying it could not prefetch, so it is not data."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        return False
    kind = value["resourceType"]
    if kind == "OperationOutcome":
        return False
    return bool(kind == "Bundle" or kind == resource_type(template))


async def _all_pages(
    key: str, bundle: dict[str, Any], client: FhirClient | None, deadline: float
) -> tuple[str, list[Any]]:
    """A prefetched Bundle's resources, with its further pages when it has them and we can fetch them."""
    if "entry" in bundle and not isinstance(bundle["entry"], list):
        log.warning("prefetch %s: Bundle.entry is not a list; answering without it", key)
        return "partial", []
    if next_link(bundle) is None:
        return "prefetch", entries(bundle)
    if client is None:
        return "partial", entries(bundle)
    try:
        return "prefetch", await client.search_all(bundle, deadline)
    except FhirFetchError as exc:
        log.warning("prefetch %s: further pages failed: %s", key, exc)
        return "partial", entries(bundle)


async def _fetch(
    key: str, template: str, context: dict[str, Any], client: FhirClient | None, deadline: float
) -> tuple[str, list[Any]]:
    """The template's query asked of the FHIR server, all pages; "missing" when it cannot be asked or fails."""
    query = render(template, context)
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
    return ("fetched", [first]) if _usable(template, first) else ("missing", [])


async def _one(
    key: str, template: str, request: HookRequest, client: FhirClient | None, deadline: float
) -> tuple[str, list[Any]]:
    """(origin, resources) for one prefetch key: the prefetched value if usable, nothing if it is `null`
    (the client has no data: complete, not missing), else a fetch (absent or unusable)."""
    prefetch = request.prefetch or {}
    if key in prefetch and prefetch[key] is None:
        return "none", []
    value = prefetch.get(key)
    if isinstance(value, dict) and _usable(template, value):
        if value.get("resourceType") != "Bundle":
            return "prefetch", [value]
        return await _all_pages(key, value, client, deadline)
    if value is not None:
        log.info(
            "prefetch %s unusable (%s): fetching",
            key,
            value.get("resourceType") if isinstance(value, dict) else type(value).__name__,
        )
    return await _fetch(key, template, request.context, client, deadline)


def belongs_to(resource: dict[str, Any], patient_id: str) -> bool:
    """False for a prefetched Patient whose id is not the hook's `context.patientId` (another patient's record
    must not be read as this one's: age, sex). References inside other resources are not compared: real
    requests write them inconsistently (the HL7 PDDI CDS guide's own test requests name `Patient/patient-x`
    in the context and `Patient/x` in every reference), and dropping them would drop the medication list."""
    if not patient_id or resource.get("resourceType") != "Patient" or "id" not in resource:
        return True
    return str(resource["id"]).removeprefix("Patient/") == patient_id.removeprefix("Patient/")


async def gather(
    templates: Mapping[str, str],
    required: Sequence[str],
    request: HookRequest,
    client: FhirClient | None,
    deadline: float,
) -> PatientData:
    """Every template's data, fetched concurrently; `PrefetchUnavailable` if a `required` key is missing.

    Each key in `required` must be a key of `templates` (a required key with no template could never be had).
    """
    keys = list(templates)
    results = await asyncio.gather(*(_one(k, templates[k], request, client, deadline) for k in keys))
    data = PatientData()
    patient_id = str(request.context.get("patientId", ""))
    for key, (origin, found) in zip(keys, results, strict=True):
        mine = [r for r in found if isinstance(r, dict) and belongs_to(r, patient_id)]
        if len(mine) < sum(isinstance(r, dict) for r in found):  # another patient's data: never mixed in
            log.warning("prefetch %s: dropped a Patient that is not context.patientId", key)
            origin = "partial" if origin != "missing" else origin
        data.origin[key] = origin
        data.resources.extend(mine)
    missing = [k for k in required if data.origin[k] == "missing"]
    if missing:
        if client is not None:
            reason = "the FHIR server could not provide it"
        elif request.fhirServer:
            reason = "the fhirServer may not be called (https required, or not in CDS_FHIR_ALLOWED_ORIGINS)"
        else:
            reason = "no fhirServer to fetch from"
        raise PrefetchUnavailable(missing, reason)
    if data.degraded:
        log.warning("answering with incomplete data: %s", ", ".join(data.degraded))
    return data
