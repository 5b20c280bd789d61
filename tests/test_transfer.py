"""The transfer report's pieces on small hand-made inputs: the id map through the concept fallback, medication
labels grouped by ingredient, the model's value bins, the unknown-code shares."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cds_service.data.dataset import Dataset
from cds_service.evaluation.transfer import (
    concept_code_map,
    family_kind,
    figures,
    group_labels,
    group_max,
    label_ingredients,
    repeat_orders,
    served_value_bins,
    token_kinds,
    unknown_shares,
)
from cds_service.ml.concepts import ConceptMap
from cds_service.timeline.events import EventKind

# A model vocabulary as `vocab.json` holds it: Synthea-style clinical drugs and a SNOMED condition.
MODEL_TOKENS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "RXNORM/314231",
    "RXNORM/312961",
    "RXNORM/308136",
    "SNOMED/59621000",
    "LOINC/8867-4",
]
MODEL_DISPLAYS = [
    "",
    "",
    "",
    "Simvastatin 10 MG Oral Tablet",
    "Simvastatin 20 MG Oral Tablet",
    "amLODIPine 2.5 MG Oral Tablet",
    "Essential hypertension (disorder)",
    "Heart rate",
]
MODEL_COUNTS = [0, 0, 0, 50, 400, 30, 900, 5000]


def _concepts() -> ConceptMap:
    return ConceptMap(MODEL_TOKENS, MODEL_DISPLAYS, MODEL_COUNTS)


def test_new_rxnorm_code_of_a_known_ingredient_maps_to_the_models_product() -> None:
    tokens = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "RXNORM/36567",  # ingredient-level simvastatin, as clinosim writes it
        "RXNORM/17767",  # ingredient-level amlodipine
        "RXNORM/99999999",  # a code and display nobody resolves
        "SNOMED/59621000",  # the same code: mapped by token
        "SNOMED/1201005",  # another code of the family, same normalised display
        "ICD10CM/I10",  # same meaning, other family: display matching stays within a family
        "LOINC/8867-4",
    ]
    displays = [
        "",
        "",
        "",
        "Simvastatin (Zocor)",
        "Amlodipine (Norvasc)",
        "Quuxaprazine",
        "Essential hypertension",
        "Essential hypertension",
        "Essential (primary) hypertension",
        "Heart rate",
    ]
    kinds = [family_kind(t) for t in tokens]
    mapped = concept_code_map(MODEL_TOKENS, _concepts(), tokens, displays, kinds)
    # simvastatin: the model's most frequent simvastatin product (20 MG, count 400), not the 10 MG one
    assert mapped.tolist() == [0, 1, 2, 4, 5, 1, 6, 6, 1, 7]
    # without the fallback only exact tokens map
    plain = concept_code_map(MODEL_TOKENS, None, tokens, displays, kinds)
    assert plain.tolist() == [0, 1, 2, 1, 1, 1, 6, 1, 1, 7]


def test_text_medication_needs_its_event_kind() -> None:
    tokens, displays = ["TEXT/simvastatin"], ["Simvastatin"]
    as_medication = concept_code_map(MODEL_TOKENS, _concepts(), tokens, displays, [EventKind.MEDICATION])
    by_family = concept_code_map(MODEL_TOKENS, _concepts(), tokens, displays, [family_kind(tokens[0])])
    assert as_medication.tolist() == [4]
    assert by_family.tolist() == [1]


def _dataset(vocab: list[str], arrays: dict[str, np.ndarray]) -> Dataset:
    return Dataset(Path("unused"), {}, vocab, arrays)


def test_token_kinds_take_the_recorded_kind_else_the_family() -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "TEXT/simvastatin", "RXNORM/36567", "SNOMED/1201005"]
    ds = _dataset(
        vocab,
        {
            "event_token": np.array([3, 3, 3, 5], dtype=np.int32),
            "event_kind": np.array([3, 3, 5, 2], dtype=np.int8),
        },
    )
    kinds = token_kinds(ds)
    assert kinds[3] is EventKind.MEDICATION  # two medication events, one procedure
    assert kinds[4] is EventKind.MEDICATION  # never an event: RxNorm family
    assert kinds[5] is EventKind.CONDITION


def test_medications_grouped_by_ingredient_take_the_best_product() -> None:
    model_labels = [
        {"token": "RXNORM/314231", "display": "Simvastatin 10 MG Oral Tablet"},
        {"token": "RXNORM/308136", "display": "amLODIPine 2.5 MG Oral Tablet"},
        {"token": "RXNORM/312961", "display": "Simvastatin 20 MG Oral Tablet"},
        {"token": "RXNORM/749762", "display": "Seasonique 91 Day Pack"},
    ]
    target_labels = [
        {"token": "RXNORM/29046", "display": "Lisinopril (Zestril)"},
        {"token": "RXNORM/36567", "display": "Simvastatin (Zocor)"},
        {"token": "TEXT/simvastatin", "display": "Simvastatin"},
        {"token": "TEXT/nebulized", "display": "Nebulized"},
    ]
    model_sets, target_sets = label_ingredients(model_labels), label_ingredients(target_labels)
    assert model_sets[0] == model_sets[2] == frozenset({"simvastatin"})
    assert target_sets[3] == frozenset()  # unresolved: never a group
    groups = group_labels(model_sets, target_sets)
    assert groups.names == ["simvastatin"]  # amlodipine and lisinopril are each on one side only
    assert groups.model_columns == [[0, 2]]
    assert groups.target_columns == [[1, 2]]
    scores = np.array([[0.2, 0.9, 0.7, 0.1], [0.6, 0.1, 0.3, 0.8]], dtype=np.float32)
    assert group_max(scores, groups.model_columns)[:, 0].tolist() == pytest.approx([0.7, 0.6])
    targets = np.array([[0, 0, 1, 0], [1, 0, 0, 0]], dtype=np.float32)
    assert group_max(targets, groups.target_columns).tolist() == [[1.0], [0.0]]


def test_values_binned_with_the_models_edges_for_observations_only() -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "LOINC/8867-4", "LOINC/0000-0"]
    nan = math.nan
    ds = _dataset(
        vocab,
        {
            "event_token": np.array([3, 3, 3, 3, 3, 4], dtype=np.int32),
            "event_kind": np.array([4, 4, 4, 4, 3, 4], dtype=np.int8),
            "event_value": np.array([50.0, 70.0, 90.0, nan, 90.0, 5.0]),
        },
    )
    bins = served_value_bins(ds, {"LOINC/8867-4": [60.0, 80.0]})
    assert bins.tolist() == [1, 2, 3, 0, 0, 0]  # NaN, a non-observation and a token without edges: no bin


def test_unknown_shares_count_the_splits_events() -> None:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "LOINC/8867-4", "ICD10CM/I10"]
    ds = _dataset(
        vocab,
        {
            "patient_events_offsets": np.array([0, 2, 6]),
            "patient_split": np.array([0, 2]),  # the second patient is in the test split
            "event_token": np.array([4, 4, 3, 3, 3, 4], dtype=np.int32),
        },
    )
    shares = unknown_shares(ds, "test", {"map": np.array([0, 1, 2, 3, 1])})
    assert shares["events"] == 4
    assert shares["map"] == pytest.approx(0.25)
    assert shares["by_family"]["ICD10CM"]["map"] == 1.0
    assert shares["by_family"]["LOINC"]["event_share"] == pytest.approx(0.75)


def test_figures_of_an_empty_subset_are_undefined_not_errors() -> None:
    y = np.array([[1, 0], [0, 1]], dtype=np.float32)
    s = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    assert figures(y, s)["recall@1"] == 1.0
    empty = figures(y[:0], s[:0])
    assert empty["samples"] == 0
    assert math.isnan(empty["recall@5"])


def test_repeat_orders_by_hand() -> None:
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0]], dtype=np.float32)
    held = np.array([[True, False], [False, False], [False, True], [True, True]])
    r = repeat_orders(y, held)
    assert r["positives"] == 3
    assert r["positives_already_in_history"] == pytest.approx(2 / 3, abs=1e-4)
    assert r["order_rate_when_in_history"] == pytest.approx(2 / 4)
    assert r["order_rate_when_not_in_history"] == pytest.approx(1 / 4)
