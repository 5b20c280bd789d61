"""Lenient reading: broken and foreign input gives counted warnings, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds_service.fhir.reader import ReadReport, iter_document_resources, iter_file_resources
from cds_service.timeline.builder import TimelineBuilder
from tests.conftest import SPEC_EXAMPLES, load_example


def read_file(path: Path) -> tuple[list[dict], ReadReport]:
    report = ReadReport()
    return list(iter_file_resources(path, report)), report


def test_bundle_without_type_is_read_with_a_warning() -> None:
    request = load_example("hook-order-select-r4.v1.0.1-no-bundle-type.json")
    report = ReadReport()
    resources = list(iter_document_resources(request["context"]["draftOrders"], report))
    assert [r["resourceType"] for r in resources] == ["NutritionOrder", "MedicationRequest"]
    assert report.warnings["bundle-without-type"] == 1


def test_dstu2_medication_order_is_skipped_as_other_version() -> None:
    request = load_example("hook-order-select-dstu2.json")
    report = ReadReport()
    resources = list(iter_document_resources(request["context"]["draftOrders"], report))
    assert all(r["resourceType"] != "MedicationOrder" for r in resources)
    assert report.warnings["other-version-resource"] >= 1
    assert any("MedicationOrder is not an R4 resource type" in m for m in report.messages)


def test_unknown_resource_type_is_skipped(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Spaceship", "id": "x"}},
            {"resource": {"resourceType": "Patient", "id": "p1", "unknownField": {"nested": True}}},
        ],
    }
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle))
    resources, report = read_file(path)
    assert [r["id"] for r in resources] == ["p1"]  # unknown fields are read leniently
    assert report.warnings["unknown-resource"] == 1


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("empty.json", b"", "empty-file"),
        ("broken.json", b'{"resourceType": "Bundle", "entry": [', "invalid-json"),
        ("array.json", b"[1, 2, 3]", "not-a-resource"),
        ("latin1.json", b'{"resourceType": "Patient", "name": "\xe9"}', "unreadable-file"),
        ("lines.ndjson", b'{"resourceType": "Patient", "id": "a"}\nnot json\n', "invalid-json"),
    ],
)
def test_broken_files_give_a_named_warning(tmp_path: Path, name: str, content: bytes, kind: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    _, report = read_file(path)
    assert report.warnings[kind] == 1
    assert any(name in m for m in report.messages)


def test_malformed_resources_cost_only_themselves() -> None:
    resources = [
        {"resourceType": "Patient", "id": "p", "birthDate": "1970-01-01", "gender": "female"},
        {
            "resourceType": "Condition",
            "id": "c1",
            "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}]},
            "onsetDateTime": "2020-01-01",
        },
        {"resourceType": "Condition", "id": "c2", "code": "not-a-concept", "onsetDateTime": 5},
        {
            "resourceType": "Observation",
            "id": "o1",
            "component": "oops",
            "effectiveDateTime": "2020-02-01",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        },
        {"resourceType": "MedicationRequest", "id": "m1", "authoredOn": "not a date"},
    ]
    builder = TimelineBuilder()
    timeline = builder.build("p", resources)
    assert [e.source for e in timeline.events] == ["Condition/c1"]
    assert builder.report.warnings["uncoded-resource"] >= 1
    assert sum(builder.report.warnings.values()) >= 2


def test_every_spec_example_parses() -> None:
    names = sorted(p.name for p in SPEC_EXAMPLES.glob("*.json"))
    assert len(names) > 40
    for name in names:
        doc = load_example(name)
        assert isinstance(doc, dict), name
