"""Order-safety rules on small hand-written records (each rule's edge, one at a time)."""

from __future__ import annotations

from typing import Any

from cds_service.safety.orders import (
    active_drugs,
    check_allergies,
    check_duplicates,
    check_interactions,
    drug_of,
    drug_words,
)


def med(rid: str, text: str, status: str = "active", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": rid, "status": status, "intent": "order",
            "medicationCodeableConcept": {"text": text}, **extra}  # fmt: skip


def allergy(rid: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "AllergyIntolerance", "id": rid, "code": {"text": text}, **extra}


def test_interactions_with_active_meds_and_other_drafts() -> None:
    active = active_drugs([med("a1", "Warfarin Sodium 5 MG Oral Tablet"), med("a2", "Aspirin 81 MG", "stopped")], set())
    assert [d.reference for d in active] == ["MedicationRequest/a1"]
    drafts = [
        d
        for r in (med("d1", "Ibuprofen 400 MG Oral Tablet"), med("d2", "Methotrexate 2.5 MG Oral Tablet"))
        if (d := drug_of(r, {}))
    ]
    found = check_interactions(drafts[:1], active, drafts)
    pairs = {(f.draft.reference, f.other.reference, f.other_is_draft) for f in found}
    assert pairs == {
        ("MedicationRequest/d1", "MedicationRequest/a1", False),  # ibuprofen + warfarin
        ("MedicationRequest/d1", "MedicationRequest/d2", True),
    }  # ibuprofen + methotrexate draft


def test_medication_by_reference_and_contained() -> None:
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "855332",
                    "display": "Warfarin Sodium 5 MG",
                }
            ]
        },
    }
    by_ref = med("x", "", medicationReference={"reference": "Medication/m1"})
    del by_ref["medicationCodeableConcept"]
    drug = drug_of(by_ref, {"m1": medication})
    assert drug is not None and drug.name == "Warfarin Sodium 5 MG" and drug.token == "RXNORM/855332"
    contained = dict(by_ref, contained=[dict(medication, id="c")], medicationReference={"reference": "#c"})
    assert drug_of(contained, {}) == drug


def test_allergies_match_by_substance_and_respect_status() -> None:
    drafts = [d for d in [drug_of(med("d1", "Amoxicillin 500 MG Oral Capsule"), {})] if d]
    records = [
        allergy("al1", "Amoxicillin", criticality="high"),
        allergy("al2", "Peanut (substance)"),
        allergy("al3", "Amoxicillin", verificationStatus={"coding": [{"code": "refuted"}]}),
        allergy("al4", "Allergic disposition (finding)"),
    ]
    found = check_allergies(drafts, records)
    assert [(f.allergy, f.criticality) for f in found] == [("AllergyIntolerance/al1", "high")]


def test_duplicate_therapy_by_ingredient() -> None:
    assert drug_words("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet") >= {
        "acetaminophen",
        "oxycodone hydrochloride",
    }
    active = active_drugs([med("a1", "Acetaminophen 500 MG Oral Tablet")], set())
    drafts = [d for d in [drug_of(med("d1", "Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG"), {})] if d]
    found = check_duplicates(drafts, active)
    assert [f.shared for f in found] == [("acetaminophen",)]
    other = [d for d in [drug_of(med("d2", "Lisinopril 10 MG Oral Tablet"), {})] if d]
    assert check_duplicates(other, active) == []
