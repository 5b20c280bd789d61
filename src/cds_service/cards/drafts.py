"""FHIR R4 resources that suggestions create: a provisional Condition, a proposed MedicationRequest."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cds_service.fhir.canonical import CONDITION_PROFILE, MEDICATION_REQUEST_PROFILE
from cds_service.fhir.elements import token_system_url

TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"


def _concept(token: str, display: str) -> dict[str, Any]:
    code = token.split("/", 1)[1] if "/" in token else token
    coding: dict[str, Any] = {"code": code, "display": display}
    system = token_system_url(token)
    if system:
        coding["system"] = system
    return {"coding": [coding], "text": display}


def _now() -> str:
    return datetime.now(tz=UTC).replace(microsecond=0).isoformat()


def provisional_condition(token: str, display: str, patient_id: str, encounter_id: str | None) -> dict[str, Any]:
    category = "encounter-diagnosis" if encounter_id else "problem-list-item"
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "meta": {"profile": [CONDITION_PROFILE]},
        "clinicalStatus": {"coding": [{"system": f"{TERMINOLOGY}/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": f"{TERMINOLOGY}/condition-ver-status", "code": "provisional"}]},
        "category": [{"coding": [{"system": f"{TERMINOLOGY}/condition-category", "code": category}]}],
        "code": _concept(token, display),
        "subject": {"reference": f"Patient/{patient_id}"},
        "recordedDate": _now(),
    }
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    return resource


def proposed_medication_request(
    token: str, display: str, patient_id: str, encounter_id: str | None, requester: str | None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "meta": {"profile": [MEDICATION_REQUEST_PROFILE]},
        "status": "draft",
        "intent": "proposal",
        "medicationCodeableConcept": _concept(token, display),
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": _now(),
    }
    if encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    if requester and requester.startswith(("Practitioner/", "PractitionerRole/")):
        resource["requester"] = {"reference": requester}
    return resource
