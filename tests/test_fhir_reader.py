"""Lenient reading: broken and foreign input gives counted warnings, never a traceback."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# What reading each spec example's FHIR content yields: (resources read, by type; warnings, by kind), worked
# out from the examples themselves. Every other example holds no FHIR resource at all.
SPEC_EXAMPLE_READS: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "action-create-example.json": ({"MedicationRequest": 1}, {}),  # a card action's resource
    "action-update-example.json": ({"ServiceRequest": 1}, {}),
    "response-systemActions-example.json": ({"ServiceRequest": 1}, {}),
    # draftOrders Bundles with no `type` (CDS clients send them so): read, with a warning
    "context-draftOrders-no-medicationRequestId.json": ({"MedicationRequest": 1}, {"bundle-without-type": 1}),
    "context-draftOrders-with-medicationRequestId.json": ({"MedicationRequest": 1}, {"bundle-without-type": 1}),
    "hook-appointment-book-context-1.fragment.json": ({"Appointment": 2}, {"bundle-without-type": 1}),
    "hook-appointment-book-context-2.fragment.json": ({"Appointment": 1}, {"bundle-without-type": 1}),
    "hook-order-select-r4.v1.0.1-no-bundle-type.json": (
        {"NutritionOrder": 1, "MedicationRequest": 1},
        {"bundle-without-type": 1},
    ),
    "hook-order-sign-r4.v1.0.1-no-bundle-type.json": (
        {"NutritionOrder": 1, "MedicationRequest": 1},
        {"bundle-without-type": 1},
    ),
    # Library 1.0.1's appointments: a bare array of resources, no Bundle
    "hook-appointment-book-context-1.v1.0.1-array.fragment.json": ({"Appointment": 2}, {}),
    # DSTU2's MedicationOrder is no R4 type: skipped, and said so; its NutritionOrder is read
    "hook-order-select-dstu2.json": ({"NutritionOrder": 1}, {"other-version-resource": 1}),
    "hook-order-sign-dstu2.fragment.json": ({"NutritionOrder": 1}, {"other-version-resource": 1}),
    # R4 and STU3 draft orders: both types exist in R4
    "hook-order-select-r4.json": ({"NutritionOrder": 1, "MedicationRequest": 1}, {}),
    "hook-order-select-stu3.json": ({"NutritionOrder": 1, "MedicationRequest": 1}, {}),
    "hook-order-sign-r4.json": ({"NutritionOrder": 1, "MedicationRequest": 1}, {}),
    "hook-order-sign-stu3.json": ({"NutritionOrder": 1, "MedicationRequest": 1}, {}),
    # prefetch: a Patient, and an Observation inside a searchset Bundle ("user" is a plain string)
    "prefetch-data-example.json": ({"Patient": 1, "Observation": 1}, {}),
    "request-patient-view.json": ({"Patient": 1}, {}),
}


def _fhir_documents(node: Any) -> Iterator[dict[str, Any]]:
    """The outermost JSON objects with a `resourceType` (resources or Bundles) anywhere in a document."""
    if isinstance(node, dict):
        if "resourceType" in node:
            yield node
            return
        for value in node.values():
            yield from _fhir_documents(value)
    elif isinstance(node, list):
        for item in node:
            yield from _fhir_documents(item)


def _raw_resource_types(text: str) -> Counter[str]:
    """Every non-Bundle resourceType in the file's text, counted without parsing any structure."""
    return Counter(t for t in re.findall(r'"resourceType"\s*:\s*"([A-Za-z]+)"', text) if t != "Bundle")


def test_every_spec_example_parses_and_reads_without_losing_a_resource() -> None:
    names = sorted(p.name for p in SPEC_EXAMPLES.glob("*.json"))
    assert len(names) > 40
    assert set(SPEC_EXAMPLE_READS) <= set(names)
    for name in names:
        doc = load_example(name)
        assert isinstance(doc, dict), name
        report = ReadReport()
        read = [r for d in _fhir_documents(doc) for r in iter_document_resources(d, report, origin=name)]
        types, warnings = SPEC_EXAMPLE_READS.get(name, ({}, {}))
        assert Counter(r["resourceType"] for r in read) == Counter(types), name
        assert report.resources == len(read), name
        assert dict(report.warnings) == warnings, (name, report.messages)
        # nothing is lost silently: each resource in the file is either read or skipped with a warning
        skipped = Counter(m.split(": ")[-1].split()[0] for m in report.messages if "not an R4 resource type" in m)
        assert Counter(r["resourceType"] for r in read) + skipped == _raw_resource_types(
            (SPEC_EXAMPLES / name).read_text()
        ), name
