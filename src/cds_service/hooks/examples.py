"""Building hook requests from a patient's FHIR record, as an EHR would (tests, benchmarks, sandboxes).

The prefetch is built for `PATIENT_PREFETCH`, the templates every service declares, so a request made
here is one the services answer without a FHIR server.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from cds_service.hooks.prefetch import PATIENT_PREFETCH, resource_type

# Resource type each prefetch key holds (MedicationRequest key also carries referenced Medications).
KEY_OF_TYPE = {resource_type(template): key for key, template in PATIENT_PREFETCH.items()}


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"fullUrl": f"{r['resourceType']}/{r.get('id')}", "resource": r} for r in resources],
    }


def prefetch_for(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """Prefetch answers for our templates from one patient's resources."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in resources:
        kind = r.get("resourceType")
        key = "medications" if kind == "Medication" else KEY_OF_TYPE.get(str(kind))
        if key is not None:
            by_key[key].append(r)
    out: dict[str, Any] = {}
    for key in PATIENT_PREFETCH:
        if key == "patient":
            out[key] = by_key[key][0] if by_key[key] else None
        else:
            out[key] = searchset(by_key[key])
    return out


def hook_request(
    hook: str,
    patient_id: str,
    prefetch: dict[str, Any] | None = None,
    encounter_id: str | None = None,
    fhir_server: str | None = None,
    access_token: str | None = None,
    extra_context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    context: dict[str, Any] = {"userId": "Practitioner/example", "patientId": patient_id}
    if encounter_id:
        context["encounterId"] = encounter_id
    context.update(extra_context or {})
    request: dict[str, Any] = {"hookInstance": str(uuid.uuid4()), "hook": hook, "context": context}
    if prefetch is not None:
        request["prefetch"] = prefetch
    if fhir_server:
        request["fhirServer"] = fhir_server
        if access_token:
            request["fhirAuthorization"] = {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 300,
                "scope": "user/*.read",
                "subject": "cds-service",
            }
    return request
