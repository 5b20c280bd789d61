"""The cited drug-interaction table and ingredient matching on the names generators write."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

from cds_service.fhir.reader import ReadReport
from cds_service.safety.interactions import (
    SEVERITIES,
    ingredients_of,
    interacting_pairs,
    interaction_table,
    interactions_between,
)
from cds_service.timeline.builder import build_timelines
from cds_service.timeline.events import EventKind


def test_every_row_is_cited_and_well_formed() -> None:
    text = resources.files("cds_service.safety").joinpath("drug_interactions.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    assert rows and set(rows[0]) == {"ingredient_a", "ingredient_b", "severity", "mechanism", "source"}
    for row in rows:
        assert row["severity"] in SEVERITIES
        assert row["source"].startswith(("FDA label:", "Phansalkar")), row
        assert row["ingredient_a"] != row["ingredient_b"]
    assert len(interaction_table()) == len(rows)  # no duplicate pairs


def test_ingredients_come_from_generator_style_names() -> None:
    assert ingredients_of("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet") == {"oxycodone"}
    assert ingredients_of("Sulfamethoxazole / Trimethoprim (Bactrim)") == {"sulfamethoxazole", "trimethoprim"}
    assert ingredients_of("Warfarin (Coumadin)") == {"warfarin"}
    assert ingredients_of("Amoxicillin 500 MG Oral Tablet") == frozenset()


def test_interactions_are_symmetric_and_ranked() -> None:
    ab = interactions_between("Warfarin (Coumadin)", "Ibuprofen 200 MG Oral Tablet")
    ba = interactions_between("Ibuprofen 200 MG Oral Tablet", "Warfarin (Coumadin)")
    assert ab == ba and ab[0].severity == "major"
    pairs = interacting_pairs(["Methotrexate 2.5 MG Oral Tablet", "Ibuprofen 100 MG Oral Tablet", "Amoxicillin"])
    assert [(a, b) for a, b, _ in pairs] == [("Ibuprofen 100 MG Oral Tablet", "Methotrexate 2.5 MG Oral Tablet")]


def test_table_covers_drugs_the_generators_prescribe(synthea_fhir: Path, clinosim_fhir: Path) -> None:
    names = {
        e.display
        for t in build_timelines([synthea_fhir, clinosim_fhir], ReadReport())
        for e in t.events
        if e.kind is EventKind.MEDICATION
    }
    matched = {i for n in names for i in ingredients_of(n)}
    assert len(matched) >= 5, matched
