"""Small hand-written FHIR records and hook requests that several test modules share (one place for each)."""

from __future__ import annotations

from typing import Any

from cds_service.hooks.examples import hook_request, prefetch_for


def medication_request(rid: str, text: str, status: str = "active", patient: str = "p1") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{patient}"},
        "medicationCodeableConcept": {"text": text},
    }


WARFARIN = medication_request("w1", "Warfarin Sodium 5 MG Oral Tablet")
ASPIRIN_DRAFT = medication_request("d1", "Aspirin 325 MG Oral Tablet", "draft")


def order_sign(record: list[dict[str, Any]], drafts: list[dict[str, Any]], patient: str = "p1") -> dict[str, Any]:
    """An order-sign request with `record` prefetched (a Patient is added when it has none) and `drafts`."""
    if not any(r["resourceType"] == "Patient" for r in record):
        record = [{"resourceType": "Patient", "id": patient}, *record]
    return hook_request(
        "order-sign",
        patient,
        prefetch_for(record),
        extra_context={"draftOrders": {"resourceType": "Bundle", "entry": [{"resource": d} for d in drafts]}},
    )


def warfarin_aspirin_order_sign() -> dict[str, Any]:
    """Active warfarin, aspirin drafted: a major interaction every safety path must keep warning about."""
    return order_sign([WARFARIN], [ASPIRIN_DRAFT])
