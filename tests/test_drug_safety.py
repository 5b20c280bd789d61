"""The order checks on the drug knowledge layer: interactions by mechanism (the Java Synthea clarithromycin
scenario), allergies by ingredient, class and cross-reactive class, duplicate therapy by class, and drugs
we cannot identify reported as not checked rather than as safe."""

from __future__ import annotations

from typing import Any

import pytest

from cds_service.safety.orders import Drug, check_allergies, check_duplicates, unknown_drugs
from tests.test_safety_isolation import allergy, answer, med, order_sign, topics


def _drug(name: str, rxcui: str | None = None) -> Drug:
    return Drug(f"MedicationRequest/{abs(hash(name))}", name, f"RXNORM/{rxcui}" if rxcui else None)


def test_clarithromycin_warns_on_all_four_partners_of_the_java_synthea_patient() -> None:
    record = [
        med("m-warfarin", "Warfarin Sodium 5 MG Oral Tablet"),
        med("m-digoxin", "Digoxin 0.125 MG Oral Tablet"),
        med("m-verapamil", "Verapamil Hydrochloride 80 MG Oral Tablet"),
        med("m-simva", "Simvistatin 10 MG"),
    ]
    got = answer(order_sign(record, med("d-clari", "Clarithromycin 500 MG Oral Tablet", "draft")))
    interaction_cards = [c for c in got.cards if c.source.topic and c.source.topic.code == "drug-interaction"]
    partners = {name for c in interaction_cards for name in ("Warfarin", "Digoxin", "Verapamil", "Simvistatin")
                if name in c.summary}  # fmt: skip
    assert partners == {"Warfarin", "Digoxin", "Verapamil", "Simvistatin"}
    simva = next(c for c in interaction_cards if "Simvistatin" in c.summary)
    assert simva.indicator == "critical" and "Source:" in simva.detail and "Management:" in simva.detail
    assert all(c.suggestions for c in interaction_cards)  # each keeps "remove the draft"


def _allergy(text: str, criticality: str = "high", **extra: Any) -> dict[str, Any]:
    return allergy(f"al-{abs(hash(text))}", clinicalStatus={"coding": [{"code": "active"}]}, code={"text": text},
                   criticality=criticality, **extra)  # fmt: skip


@pytest.mark.parametrize(
    ("recorded", "draft", "match"),
    [
        ("Penicillins", "Amoxicillin 500 MG Oral Capsule", "class"),
        ("Amoxicillin", "Ampicillin 500 MG Oral Capsule", "class"),
        ("Penicillin V Potassium", "Penicillin V Potassium 250 MG Oral Tablet", "ingredient"),
        ("Penicillins", "Cephalexin 500 MG Oral Capsule", "cross-reactive"),
        ("Sulfonamide antibiotics", "Sulfamethoxazole 800 MG / Trimethoprim 160 MG Oral Tablet", "class"),
        ("NSAIDs", "Ibuprofen 400 MG Oral Tablet", "class"),
    ],
)
def test_allergies_match_by_ingredient_class_and_cross_reactivity(recorded: str, draft: str, match: str) -> None:
    found = check_allergies([_drug(draft)], [_allergy(recorded)])
    assert [f.match for f in found] == [match]


def test_cross_reactivity_is_a_warning_and_unrelated_or_refuted_allergies_are_silent() -> None:
    cephalexin = med("d-ceph", "Cephalexin 500 MG Oral Capsule", "draft")
    got = answer(order_sign([_allergy("Penicillins")], cephalexin))
    card = next(c for c in got.cards if c.source.topic and c.source.topic.code == "drug-allergy")
    assert card.indicator == "warning" and "cross-reactive" in card.detail
    refuted = _allergy("Penicillins", verificationStatus={"coding": [{"code": "refuted"}]})
    assert check_allergies([_drug("Amoxicillin 500 MG Oral Capsule")], [refuted]) == []
    # non-antibiotic sulfonamides do not cross-react with a sulfonamide-antibiotic allergy
    assert check_allergies([_drug("Furosemide 40 MG Oral Tablet")], [_allergy("Sulfonamide antibiotics")]) == []
    assert check_allergies([_drug("Metformin 500 MG Oral Tablet")], [_allergy("Penicillins")]) == []


@pytest.mark.parametrize(
    ("draft", "active", "duplicate"),
    [
        ("Atorvastatin 20 MG Oral Tablet", "Simvastatin 40 MG Oral Tablet", True),
        ("Losartan Potassium 50 MG Oral Tablet", "Lisinopril 10 MG Oral Tablet", True),
        ("Naproxen 500 MG Oral Tablet", "Ibuprofen 400 MG Oral Tablet", True),
        ("Apixaban 5 MG Oral Tablet", "Warfarin Sodium 5 MG Oral Tablet", True),
        ("Amlodipine 5 MG / Atorvastatin 10 MG Oral Tablet", "Atorvastatin 40 MG Oral Tablet [Lipitor]", True),
        ("Metformin 500 MG Oral Tablet", "Lisinopril 10 MG Oral Tablet", False),
        ("Hydrochlorothiazide 25 MG Oral Tablet", "Losartan Potassium 50 MG Oral Tablet", False),
    ],
)
def test_duplicate_therapy_by_ingredient_and_class(draft: str, active: str, duplicate: bool) -> None:
    assert bool(check_duplicates([_drug(draft)], [_drug(active)])) is duplicate


def test_a_drug_we_cannot_identify_is_reported_as_not_checked() -> None:
    assert [d.name for d in unknown_drugs([_drug("Zorblax 10 MG Oral Tablet"), _drug("Warfarin 5 MG")])] == [
        "Zorblax 10 MG Oral Tablet"
    ]
    got = answer(order_sign([med("m-warfarin", "Warfarin Sodium 5 MG Oral Tablet")],
                            med("d-unknown", "Zorblax 10 MG Oral Tablet", "draft")))  # fmt: skip
    assert "unknown-drug:draft" in got.reasons
    card = next(c for c in got.cards if "Not checked" in c.summary)
    assert card.indicator == "warning" and "not checked" in card.detail
    assert "drug-interaction" in topics(got.cards)  # the "not checked" card, under the interaction topic


def test_active_drugs_include_statements_and_recent_dispenses_and_administrations() -> None:
    from cds_service.safety.orders import active_drugs

    def res(kind: str, rid: str, status: str, **extra: Any) -> dict[str, Any]:
        return {"resourceType": kind, "id": rid, "status": status,
                "medicationCodeableConcept": {"text": f"Drug{rid} 5 MG Oral Tablet"}, **extra}  # fmt: skip

    record = [
        res("MedicationStatement", "s1", "active"),
        res("MedicationStatement", "s2", "completed"),
        res("MedicationDispense", "d1", "completed", whenHandedOver="2018-06-01"),
        res("MedicationDispense", "d2", "completed", whenHandedOver="2017-06-01"),  # a year before the newest
        res("MedicationAdministration", "a1", "completed", effectiveDateTime="2018-05-20T10:00:00Z"),
        res("MedicationDispense", "d3", "cancelled", whenHandedOver="2018-06-01"),
        res("MedicationDispense", "d4", "completed"),  # undated: counts
    ]
    refs = {d.reference for d in active_drugs(record, set())}
    assert refs == {
        "MedicationStatement/s1",
        "MedicationDispense/d1",
        "MedicationAdministration/a1",
        "MedicationDispense/d4",
    }


def test_a_locally_applied_drug_informs_and_never_blocks() -> None:
    from cds_service.safety.interactions import blocking_interaction, interactions_between

    topical = "Diclofenac Sodium 0.01 MG/MG Topical Gel [Voltaren]"
    found = interactions_between(topical, "Warfarin Sodium 5 MG Oral Tablet")
    assert found and all(i.local for i in found)
    assert blocking_interaction(topical, "Warfarin Sodium 5 MG Oral Tablet") is None
    oral = interactions_between("Diclofenac Sodium 75 MG Delayed Release Oral Tablet", "Warfarin Sodium 5 MG")
    assert oral and not oral[0].local
    # nasal is not local: nasal fluticasone with ritonavir is a systemic (CYP3A4) interaction
    nasal = interactions_between("Fluticasone propionate 0.05 MG/ACTUAT Nasal Spray", "Ritonavir 100 MG Oral Tablet")
    assert nasal and not nasal[0].local
    got = answer(order_sign([med("m-w", "Warfarin Sodium 5 MG Oral Tablet")], med("d-gel", topical, "draft")))
    card = next(c for c in got.cards if c.source.topic and c.source.topic.code == "drug-interaction")
    assert card.indicator == "info" and "Applied locally" in card.detail


def test_every_onc_high_priority_rule_fires_from_ehr_style_displays() -> None:
    """For each rule citing the ONC high-priority list (Phansalkar 2012), a member of each side, written as
    an EHR writes a product, is resolved and warned about at the rule's severity or above."""
    from cds_service.drugs.knowledge import load_knowledge
    from cds_service.drugs.rules import SEVERITIES, is_class_side
    from cds_service.safety.interactions import interactions_between

    knowledge = load_knowledge()

    def member(side: str, other_than: str = "") -> str:
        if not is_class_side(side):
            return side
        members = [m for m in sorted(knowledge.vocabulary.members(side.removeprefix("class:"))) if m != other_than]
        assert members, side
        return members[0]

    checked = 0
    for rule in knowledge.rules:
        if "Phansalkar" not in rule.citation:
            continue
        a = member(rule.side_a)
        b = member(rule.side_b, other_than=a)
        found = interactions_between(f"{a.title()} 10 MG Oral Tablet", f"{b.title()} 20 MG Oral Capsule")
        assert found, (rule.id, a, b)
        assert SEVERITIES.index(found[0].severity) >= SEVERITIES.index(rule.severity), (rule.id, found[0])
        checked += 1
    assert checked >= 15
