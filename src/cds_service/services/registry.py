"""The registry of declared CDS services; discovery is generated from these declarations.

Each discovery entry names exactly one hook, so a service offered on two hooks is declared twice
(`diagnosis-suggestions` on patient-view, `diagnosis-suggestions-encounter-start` on encounter-start).
Prefetch templates use only CDS Hooks 2.0 tokens (`{{context.patientId}}`); no FHIRPath.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds_service.hooks.prefetch import PATIENT_PREFETCH
from cds_service.hooks.wire import Discovery, ServiceDescription


@dataclass(frozen=True)
class ServiceSpec:
    id: str
    hook: str
    kind: str  # "diagnosis" | "treatment": which card builder answers
    title: str
    description: str
    required: tuple[str, ...]  # prefetch keys without which we answer 412

    def describe(self) -> ServiceDescription:
        return ServiceDescription(
            hook=self.hook,
            id=self.id,
            title=self.title,
            description=self.description,
            prefetch=dict(PATIENT_PREFETCH),
            usageRequirements="Read access to the patient's record (the prefetch queries) for the current user.",
        )


_DX = (
    "Suggests likely diagnoses that are not yet on the problem list, with calibrated probability and the "
    "FHIR resources and note passages that drove each suggestion; one click drafts a provisional Condition."
)
_TX = (
    "Checks the selected draft orders against active medications (cited interaction table), allergies and "
    "duplicate therapy, and recommends medications for the patient's conditions with their evidence."
)
_DX_REQUIRED = ("patient", "conditions")
_TX_REQUIRED = ("patient", "conditions", "medications", "allergies")

SERVICES: dict[str, ServiceSpec] = {
    s.id: s
    for s in (
        ServiceSpec("diagnosis-suggestions", "patient-view", "diagnosis", "Diagnosis suggestions", _DX, _DX_REQUIRED),
        ServiceSpec(
            "diagnosis-suggestions-encounter-start",
            "encounter-start",
            "diagnosis",
            "Diagnosis suggestions at encounter start",
            _DX,
            _DX_REQUIRED,
        ),
        ServiceSpec(
            "treatment-recommendations", "order-select", "treatment", "Treatment recommendations", _TX, _TX_REQUIRED
        ),
        ServiceSpec(
            "treatment-recommendations-order-sign",
            "order-sign",
            "treatment",
            "Order safety check at signing",
            _TX,
            _TX_REQUIRED,
        ),
    )
}


def discovery() -> Discovery:
    return Discovery(services=[s.describe() for s in SERVICES.values()])
