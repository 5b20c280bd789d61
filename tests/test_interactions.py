"""Interactions between drugs as EHRs and generators write them, through the drug knowledge layer."""

from __future__ import annotations

from pathlib import Path

from cds_service.fhir.reader import ReadReport
from cds_service.safety.interactions import drug_known, ingredients_of, interacting_pairs, interactions_between
from cds_service.timeline.builder import build_timelines
from cds_service.timeline.events import EventKind


def test_ingredients_come_from_generator_and_ehr_style_names() -> None:
    assert ingredients_of("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet") == {
        "acetaminophen",
        "oxycodone",
    }
    assert ingredients_of("Sulfamethoxazole / Trimethoprim (Bactrim)") == {"sulfamethoxazole", "trimethoprim"}
    assert ingredients_of("Warfarin (Coumadin)") == {"warfarin"}
    assert ingredients_of("Simvistatin 10 MG") == {"simvastatin"}  # Java Synthea's spelling
    assert ingredients_of("Amoxicillin 500 MG Oral Tablet") == {"amoxicillin"}
    assert not drug_known("Inert Ingredients 1 MG Oral Tablet")


def test_interactions_are_symmetric_and_ranked() -> None:
    ab = interactions_between("Warfarin (Coumadin)", "Ibuprofen 200 MG Oral Tablet")
    ba = interactions_between("Ibuprofen 200 MG Oral Tablet", "Warfarin (Coumadin)")
    assert [i.rule_id for i in ab] == [i.rule_id for i in ba] and ab[0].severity == "major"
    assert all(i.source and i.mechanism and i.advice for i in ab)
    pairs = interacting_pairs(
        ["Methotrexate 2.5 MG Oral Tablet", "Trimethoprim 100 MG Oral Tablet", "Levothyroxine 50 MCG Oral Tablet"]
    )
    assert [(a, b) for a, b, _ in pairs] == [("Methotrexate 2.5 MG Oral Tablet", "Trimethoprim 100 MG Oral Tablet")]


def test_the_clarithromycin_scenario_warns_on_all_four_partners() -> None:
    """Java Synthea's 100-year-old on warfarin, digoxin, verapamil and "Simvistatin 10 MG" (RxNorm 316672)."""
    draft = "Clarithromycin 500 MG Oral Tablet"
    severities = {
        partner: interactions_between(draft, partner)[0].severity if interactions_between(draft, partner) else None
        for partner in (
            "Simvistatin 10 MG",
            "Warfarin Sodium 5 MG Oral Tablet",
            "Digoxin 0.125 MG Oral Tablet",
            "Verapamil Hydrochloride 80 MG Oral Tablet",
        )
    }
    assert severities["Simvistatin 10 MG"] == "contraindicated"
    assert all(severities.values()), severities


def test_usual_combinations_and_class_traps_do_not_warn() -> None:
    for a, b in (
        ("Metformin hydrochloride 500 MG Oral Tablet", "Lisinopril 10 MG Oral Tablet"),
        ("Losartan Potassium 50 MG Oral Tablet", "Hydrochlorothiazide 25 MG Oral Tablet"),
        ("Amlodipine 5 MG Oral Tablet", "Lisinopril 10 MG Oral Tablet"),
        # a macrolide that is no CYP3A4 inhibitor beside a CYP3A4-sensitive statin
        ("Azithromycin 250 MG Oral Tablet", "Simvastatin 20 MG Oral Tablet"),
    ):
        assert interactions_between(a, b) == [], (a, b)


def test_the_generators_drugs_are_known(synthea_fhir: Path, clinosim_fhir: Path) -> None:
    """Nearly every medication the two generators prescribe resolves to an ingredient (the rest are
    supplies and placeholders, which the service reports as not checked rather than as safe)."""
    names = {
        e.display
        for t in build_timelines([synthea_fhir, clinosim_fhir], ReadReport())
        for e in t.events
        if e.kind is EventKind.MEDICATION
    }
    known = [n for n in names if drug_known(n)]
    assert len(names) >= 10 and len(known) / len(names) >= 0.9, sorted(set(names) - set(known))
