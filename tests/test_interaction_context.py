"""Contextual factors of interaction rules, read from a record (`safety.context`), and their place on the card.

Records are written the way EHRs send them: ICD-10-CM and SNOMED codes, text-only conditions, eye drops beside
tablets, observations with and without values. Each test would fail if the factor were read wrongly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cds_service.cards.builders import interaction_card
from cds_service.drugs.knowledge import load_knowledge
from cds_service.safety.context import PDDI_ASSESS, PDDI_AVOID_UNLESS, RecordContext, recommended_action
from cds_service.safety.orders import Drug, InteractionFinding, check_interactions

NOW = datetime(2026, 12, 1, tzinfo=UTC)
WARFARIN = Drug("MedicationRequest/w", "Warfarin Sodium 5 MG Oral Tablet [Coumadin]", None)
IBUPROFEN = Drug("MedicationRequest/draft", "Ibuprofen 400 MG Oral Tablet", None)
PAIR = {WARFARIN.reference, IBUPROFEN.reference}


def patient(born: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p", "birthDate": born}


def condition(text: str, system: str | None = None, code: str | None = None, **extra: Any) -> dict[str, Any]:
    coding = [{"system": system, "code": code, "display": text}] if system else []
    return {"resourceType": "Condition", "id": text[:8], "code": {"coding": coding, "text": text}, **extra}


def observation(loinc: str, value: Any, when: str = "2026-11-01", unit: str = "mmol/L") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"o{loinc}{when}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc, "display": f"lab {loinc}"}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit} if not isinstance(value, str) else value,
    }


def factors(resources: list[dict[str, Any]], others: list[Drug] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    record = RecordContext(resources, [WARFARIN, IBUPROFEN, *others], now=NOW)
    rule = load_knowledge().rules.by_id("pddi-warfarin-nsaid")
    return {f.factor: f for f in record.factors_of(rule.context, exclude=PAIR)}


def test_age_counts_from_the_birth_date_and_is_absent_without_one() -> None:
    assert factors([patient("1950-06-01")])["age_65_or_older"].evidence == "aged 76"
    assert not factors([patient("1990-06-01")])["age_65_or_older"].present
    assert not factors([])["age_65_or_older"].present  # no Patient: not found, never guessed


def test_gi_bleeding_by_icd10_prefix_snomed_or_words_and_never_from_a_refuted_condition() -> None:
    icd = condition("Melena", "http://hl7.org/fhir/sid/icd-10-cm", "K92.1")
    assert factors([icd])["history_gi_bleed"].present
    snomed = condition("Peptic ulcer", "http://snomed.info/sct", "13200003", onsetDateTime="2019-04-02")
    assert factors([snomed])["history_gi_bleed"].evidence == "peptic ulcer (2019-04-02)"
    assert factors([condition("History of duodenal ulcer, healed")])["history_gi_bleed"].present  # text only
    refuted = dict(icd, verificationStatus={"coding": [{"code": "refuted"}]})
    assert not factors([refuted])["history_gi_bleed"].present
    # words inside other words do not count, and an unrelated K code does not either
    assert not factors([condition("Ulcerative colitis", "http://hl7.org/fhir/sid/icd-10-cm", "K51.90")])[
        "history_gi_bleed"
    ].present


def test_drug_factors_count_systemic_products_of_the_class_only() -> None:
    oral = Drug("MedicationRequest/pred", "predniSONE 10 MG Oral Tablet", None)
    drops = Drug("MedicationRequest/eye", "Prednisolone Acetate 10 MG/ML Ophthalmic Suspension", None)
    assert factors([], [oral])["systemic_corticosteroid"].evidence == oral.name
    assert not factors([], [drops])["systemic_corticosteroid"].present
    ppi = Drug("MedicationStatement/ppi", "Pantoprazole Sodium 40 MG Delayed Release Oral Tablet [Protonix]", None)
    assert factors([], [ppi])["ppi_or_misoprostol"].present
    # the pair itself never counts as its own context (warfarin is no PPI, but an excluded draft must not count)
    assert not factors([], [])["ppi_or_misoprostol"].present


def test_observations_take_the_latest_value_against_the_threshold() -> None:
    digoxin = load_knowledge().rules.by_id("pddi-digoxin-cyclosporine")
    record = RecordContext(
        [
            observation("2823-3", 3.1, "2026-10-01"),
            observation("2823-3", 4.2, "2025-01-01"),  # older: not the one shown
            observation("33914-3", 42, "2026-09-01", "mL/min/{1.73_m2}"),
            observation("19123-9", "not a quantity"),  # unreadable: not found, never an error
        ],
        [],
        now=NOW,
    )
    found = {f.factor: f for f in record.factors_of(digoxin.context)}
    assert found["serum_potassium"].evidence == "lab 2823-3: 3.1 mmol/L (2026-10-01)"
    assert found["renal_impairment"].present and "42" in found["renal_impairment"].evidence
    assert not found["serum_magnesium"].present
    high = RecordContext([observation("33914-3", 88, unit="mL/min")], [], now=NOW)
    assert not {f.factor: f for f in high.factors_of(digoxin.context)}["renal_impairment"].present


def test_the_pddi_tier_follows_the_guides_tree() -> None:
    old = factors([patient("1940-01-01")])
    assert recommended_action(tuple(old.values())) == PDDI_AVOID_UNLESS
    ppi = Drug("MedicationRequest/ppi", "Omeprazole 20 MG Delayed Release Oral Capsule", None)
    assert recommended_action(tuple(factors([patient("1940-01-01")], [ppi]).values())) == PDDI_ASSESS
    assert recommended_action(tuple(factors([patient("1990-01-01")]).values())) == PDDI_ASSESS


def test_the_card_names_present_factors_and_stands_without_any() -> None:
    (finding,) = check_interactions([IBUPROFEN], [WARFARIN], [IBUPROFEN])
    assert isinstance(finding, InteractionFinding)
    bare = interaction_card(finding)
    assert "Raises the risk" not in (bare.detail or "") and bare.indicator == "warning"
    rich = interaction_card(finding, None, tuple(factors([patient("1940-01-01")]).values()))
    assert "Raises the risk: patient aged 65 or older (aged 86)" in (rich.detail or "")
    assert f"**{PDDI_AVOID_UNLESS}**" in (rich.detail or "")
    assert rich.indicator == bare.indicator  # context informs the advice; the severity tier stays the rule's
