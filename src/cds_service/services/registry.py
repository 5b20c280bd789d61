"""The registry of declared CDS services; discovery is generated from these declarations.

Each discovery entry names exactly one hook, so a service offered on two hooks is declared twice
(`diagnosis-suggestions` on patient-view, `diagnosis-suggestions-encounter-start` on encounter-start),
with the same handler. Every service asks for the whole record (`PATIENT_PREFETCH`), because the model
reads all of it; what differs is which keys it cannot answer without (`required`: 412 when missing).
"""

from __future__ import annotations

from cds_service.core.errors import UnknownService
from cds_service.hooks.prefetch import PATIENT_PREFETCH
from cds_service.hooks.wire import Discovery
from cds_service.services.diagnosis import suggest_diagnoses
from cds_service.services.spec import ServiceSpec
from cds_service.services.treatment import check_orders

_DX = (
    "Suggests likely diagnoses that are not yet on the problem list, with calibrated probability and the "
    "FHIR resources and note passages that drove each suggestion; one click drafts a provisional Condition."
)
_TX = (
    "Checks the selected draft orders against active medications (cited interaction table), allergies and "
    "duplicate therapy, and recommends medications for the patient's conditions with their evidence."
)
_DX_REQUIRED = ("patient", "conditions")
_TX_REQUIRED = ("patient", "conditions", "medications", "allergies")  # the safety rules need all four

SERVICES: dict[str, ServiceSpec] = {
    s.id: s
    for s in (
        ServiceSpec(
            id="diagnosis-suggestions",
            hook="patient-view",
            title="Diagnosis suggestions",
            description=_DX,
            required=_DX_REQUIRED,
            prefetch=PATIENT_PREFETCH,
            handler=suggest_diagnoses,
        ),
        ServiceSpec(
            id="diagnosis-suggestions-encounter-start",
            hook="encounter-start",
            title="Diagnosis suggestions at encounter start",
            description=_DX,
            required=_DX_REQUIRED,
            prefetch=PATIENT_PREFETCH,
            handler=suggest_diagnoses,
        ),
        ServiceSpec(
            id="treatment-recommendations",
            hook="order-select",
            title="Treatment recommendations",
            description=_TX,
            required=_TX_REQUIRED,
            prefetch=PATIENT_PREFETCH,
            handler=check_orders,
        ),
        ServiceSpec(
            id="treatment-recommendations-order-sign",
            hook="order-sign",
            title="Order safety check at signing",
            description=_TX,
            required=_TX_REQUIRED,
            prefetch=PATIENT_PREFETCH,
            handler=check_orders,
        ),
    )
}


def service_named(service_id: str) -> ServiceSpec:
    """The declared service, or `UnknownService` (404)."""
    service = SERVICES.get(service_id)
    if service is None:
        raise UnknownService(service_id)
    return service


def discovery() -> Discovery:
    return Discovery(services=[s.describe() for s in SERVICES.values()])
