"""Which FHIR version a resource type belongs to, so R4-only code can skip the others politely."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from fhir.resources.R4B import get_fhir_model_class

ResourceKind = Literal["r4", "other-version", "unknown"]

# Resource types that exist in DSTU2/STU3 but were renamed or removed by R4. CDS clients still send
# them (the CDS Hooks spec's own examples carry DSTU2 MedicationOrder and STU3 ProcedureRequest).
OTHER_VERSION_TYPES = frozenset(
    {
        "MedicationOrder",
        "ProcedureRequest",
        "ReferralRequest",
        "DiagnosticOrder",
        "DeviceUseRequest",
        "DeviceComponent",
        "DeviceMetric",
        "ProcessRequest",
        "ProcessResponse",
        "EligibilityRequest",
        "EligibilityResponse",
        "EnrollmentRequest",
        "EnrollmentResponse",
        "DataElement",
        "ServiceDefinition",
        "Sequence",
        "BodySite",
        "Order",
        "OrderResponse",
    }
)


@lru_cache(maxsize=512)
def classify_resource_type(resource_type: str) -> ResourceKind:
    # R4B is the R4 technical correction; its resource list is R4's plus a handful of additions.
    try:
        get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError, ImportError):
        return "other-version" if resource_type in OTHER_VERSION_TYPES else "unknown"
    return "r4"
