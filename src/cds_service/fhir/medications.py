"""The one medication resolver: which coded drug a medication resource (MedicationRequest, -Statement,
-Administration) is about, for the timeline (the model's input) and the safety checks alike.

R4 writes the drug inline (`medicationCodeableConcept`) or as a Reference to a Medication, which may be
contained in the resource (`#id`) or elsewhere in the record (`Medication/id`, `urn:uuid:id`, an absolute
URL). A Reference that resolves to nothing still carries its `display`, the last word on the drug's name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cds_service.fhir.elements import ref_id, reference_target

Resource = dict[str, Any]


def medication_index(resources: Iterable[Resource]) -> dict[str, Resource]:
    """The record's Medication resources by id (what references point at)."""
    return {str(r.get("id")): r for r in resources if r.get("resourceType") == "Medication" and r.get("id")}


def medication_concept(resource: Resource, medications: dict[str, Resource]) -> dict[str, Any] | None:
    """The CodeableConcept of the drug `resource` is about, or None when it cannot be resolved."""
    inline = resource.get("medicationCodeableConcept")
    if isinstance(inline, dict):
        return inline
    target = reference_target(resource.get("medicationReference"))
    if target is None:
        return None
    found: Any
    if target.startswith("#"):
        contained = resource.get("contained")
        found = (
            next(
                (c for c in contained if isinstance(c, dict) and c.get("id") == target[1:]),
                None,
            )
            if isinstance(contained, list)
            else None
        )
    else:
        found = medications.get(ref_id(target) or "")
    code = found.get("code") if isinstance(found, dict) else None
    return code if isinstance(code, dict) else None


def medication_reference_display(resource: Resource) -> str:
    """The `display` of the medication Reference, if any (a name without a code)."""
    ref = resource.get("medicationReference")
    display = ref.get("display") if isinstance(ref, dict) else None
    return display if isinstance(display, str) else ""
