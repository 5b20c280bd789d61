"""One medication resolver for the timeline (the model's input) and the safety checks: a MedicationRequest's
drug written inline, as a referenced Medication (any reference form) or as a contained one is the same drug
to both."""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.fhir.reader import ReadReport
from cds_service.safety.orders import drug_of
from cds_service.timeline.builder import TimelineBuilder
from cds_service.timeline.events import EventKind

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
WARFARIN = {"coding": [{"system": RXNORM, "code": "855332", "display": "Warfarin Sodium 5 MG Oral Tablet"}]}


def _request(**medication: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "rx1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2020-03-01T10:00:00Z",
        **medication,
    }


FORMS = {
    "inline": (_request(medicationCodeableConcept=WARFARIN), []),
    "contained": (
        _request(
            contained=[{"resourceType": "Medication", "id": "med1", "code": WARFARIN}],
            medicationReference={"reference": "#med1"},
        ),
        [],
    ),
    "referenced": (
        _request(medicationReference={"reference": "Medication/m9"}),
        [{"resourceType": "Medication", "id": "m9", "code": WARFARIN}],
    ),
    "urn-uuid": (
        _request(medicationReference={"reference": "urn:uuid:m9"}),
        [{"resourceType": "Medication", "id": "m9", "code": WARFARIN}],
    ),
    "absolute-url": (
        _request(medicationReference={"reference": "https://ehr.example/fhir/Medication/m9"}),
        [{"resourceType": "Medication", "id": "m9", "code": WARFARIN}],
    ),
}


@pytest.mark.parametrize("form", FORMS)
def test_timeline_and_safety_see_the_same_drug(form: str) -> None:
    request, others = FORMS[form]
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "female"}
    timeline = TimelineBuilder(ReadReport()).build("p1", [patient, request, *others])
    meds = [e for e in timeline.events if e.kind is EventKind.MEDICATION]
    assert [(e.token, e.source) for e in meds] == [("RXNORM/855332", "MedicationRequest/rx1")], form
    drug = drug_of(request, {str(m["id"]): m for m in others})
    assert drug is not None and drug.token == "RXNORM/855332" and "Warfarin" in drug.name, form
