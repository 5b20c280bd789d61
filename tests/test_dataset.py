"""Timelines and datasets from real generator output (small cohorts, both generators)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cds_service.data.build import BuildOptions, build_dataset, patient_split
from cds_service.data.dataset import load_dataset
from cds_service.data.labels import encounter_labels, is_disorder
from cds_service.fhir.elements import code_token, ref_id
from cds_service.fhir.reader import ReadReport
from cds_service.timeline.builder import build_timelines
from tests.conftest import bundle_resources

SMALL = BuildOptions(min_label_count=1, min_token_count=1, note_vocab_size=500)


@pytest.fixture(scope="module")
def synthea_timelines(synthea_fhir: Path) -> list[Any]:
    return list(build_timelines([synthea_fhir], ReadReport()))


def test_timeline_events_point_at_resources_in_the_record(synthea_fhir: Path, synthea_timelines: list[Any]) -> None:
    ids = {f"{r['resourceType']}/{r['id']}" for _, rs in bundle_resources(synthea_fhir) for r in rs}
    for timeline in synthea_timelines:
        assert timeline.events and timeline.notes and timeline.birth_time is not None
        assert all(e.source in ids for e in timeline.events)
        assert all(n.source in ids for n in timeline.notes)
        assert all(
            e.token.split("/", 1)[0] in {"SNOMED", "RXNORM", "LOINC", "CVX", "ACTCODE", "TEXT"}
            or e.token.split("/", 1)[0] == "OTHER"
            for e in timeline.events
        )
        times = [e.time for e in timeline.events]
        assert times == sorted(times)


def test_notes_are_decoded_text(synthea_timelines: list[Any]) -> None:
    note = synthea_timelines[0].notes[-1]
    assert "# Chief Complaint" in note.text or "Chief" in note.text
    assert note.source.startswith("DocumentReference/")


def test_no_input_at_or_after_the_label_encounter(synthea_timelines: list[Any]) -> None:
    checked = 0
    for timeline in synthea_timelines:
        for lab in encounter_labels(timeline):
            history = timeline.before(lab.start, exclude_encounter=lab.encounter_id)
            assert history.events, "a sample needs history"
            assert all(e.time < lab.start for e in history.events)
            assert all(n.time < lab.start for n in history.notes)
            # the label encounter's own note lists its diagnoses: it must never be an input
            assert all(e.encounter != lab.encounter_id for e in history.events)
            assert all(n.encounter != lab.encounter_id for n in history.notes)
            # and without the explicit exclusion the time rule alone already keeps it out
            assert timeline.before(lab.start).notes == history.notes
            checked += 1
    assert checked > 50


def _expected_labels(resources: list[dict[str, Any]]) -> dict[str, set[str]]:
    """New-onset disorder labels recomputed straight from the FHIR record, independently of the builder."""
    encounters = {r["id"]: r["period"]["start"] for r in resources if r["resourceType"] == "Encounter"}
    conditions = [
        (encounters[ref_id(r["encounter"]["reference"])], r)
        for r in resources
        if r["resourceType"] == "Condition" and "encounter" in r
    ]
    seen: set[str] = set()
    expected: dict[str, set[str]] = {}
    for _, cond in sorted(conditions, key=lambda x: x[0]):
        token, display = code_token(cond["code"])  # type: ignore[misc]
        eid = ref_id(cond["encounter"]["reference"])
        if token not in seen and is_disorder(token, display):
            expected.setdefault(eid, set()).add(token)
        seen.add(token)
    return expected


def test_labels_match_the_record(synthea_fhir: Path, synthea_timelines: list[Any]) -> None:
    by_patient = {t.patient_id: t for t in synthea_timelines}
    compared = 0
    for _, resources in bundle_resources(synthea_fhir):
        patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        expected = _expected_labels(resources)
        got = {lab.encounter_id: set(lab.diagnoses) for lab in encounter_labels(by_patient[patient_id])}
        for eid, labels in got.items():
            assert labels == expected.get(eid, set())
            compared += bool(labels)
        meds = {lab.encounter_id: set(lab.medications) for lab in encounter_labels(by_patient[patient_id])}
        for r in resources:
            if r["resourceType"] == "MedicationRequest" and ref_id(r["encounter"]["reference"]) in meds:
                assert code_token(r["medicationCodeableConcept"])[0] in meds[ref_id(r["encounter"]["reference"])]
    assert compared > 0
    social = [
        t
        for t in synthea_timelines
        for lab in encounter_labels(t)
        for x in lab.diagnoses
        if "(finding)" in x or "(situation)" in x
    ]
    assert social == []


def _epoch(value: str) -> float:
    """A FHIR dateTime as epoch seconds (UTC when it carries no offset)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def test_dataset_from_synthea(synthea_fhir: Path, tmp_path: Path) -> None:
    manifest = build_dataset([synthea_fhir], tmp_path / "ds", BuildOptions(**{**vars(SMALL), "generator": "synthea"}))
    ds = load_dataset(tmp_path / "ds")
    assert manifest["counts"]["patients"] == 6
    assert ds.manifest["generator"] == "synthea"
    assert len(ds.arrays["sample_patient"]) == manifest["counts"]["samples"] > 0
    assert ds.label_matrix("dx").shape == (manifest["counts"]["samples"], len(ds.diagnosis_labels))
    assert ds.label_matrix("dx").sum() > 0 and ds.label_matrix("med").sum() > 0
    assert (tmp_path / "ds" / "notes.model").is_file()
    # every sample has at least one event strictly before its cutoff
    offsets = ds.arrays["patient_events_offsets"]
    for s in range(len(ds.arrays["sample_patient"])):
        p = ds.arrays["sample_patient"][s]
        times = ds.arrays["event_time"][offsets[p] : offsets[p + 1]]
        assert (times < ds.arrays["sample_time"][s]).any()
    # split is by patient: no patient in two splits, and the manifest counts agree
    splits = ds.sample_split()
    for name, i in (("train", 0), ("validation", 1), ("test", 2)):
        assert manifest["splits"][name]["samples"] == int((splits == i).sum())
    # Whose is each patient row? Read from the FHIR record itself: the patient whose encounters start at the
    # cutoffs (encounter starts) of the row's samples.
    starts = {
        next(r["id"] for r in resources if r["resourceType"] == "Patient"): {
            _epoch(r["period"]["start"]) for r in resources if r["resourceType"] == "Encounter"
        }
        for _, resources in bundle_resources(synthea_fhir)
    }
    sample_patient = ds.arrays["sample_patient"]
    owner: dict[int, str] = {}
    for row in np.unique(sample_patient):
        cutoffs = set(ds.arrays["sample_time"][sample_patient == row].tolist())
        owners = [pid for pid, times in starts.items() if cutoffs <= times]
        assert len(owners) == 1, (row, owners)
        owner[int(row)] = owners[0]
    assert len(set(owner.values())) == len(owner) > 1  # no patient is two rows, which could sit in two splits
    split_of = {pid: {int(x) for x in splits[np.isin(sample_patient, [r for r, p in owner.items() if p == pid])]}
                for pid in set(owner.values())}  # fmt: skip
    assert all(len(found) == 1 for found in split_of.values()), split_of  # each patient's samples: one split
    in_split = [{pid for pid, found in split_of.items() if i in found} for i in range(3)]
    assert not (in_split[0] & in_split[1] or in_split[0] & in_split[2] or in_split[1] & in_split[2])
    # and that split is the patient's own, from a hash of its id: never assigned sample by sample
    for s, row in enumerate(sample_patient):
        assert splits[s] == patient_split(owner[int(row)], manifest["seed"]), s


def test_dataset_from_clinosim(clinosim_fhir: Path, tmp_path: Path) -> None:
    manifest = build_dataset([clinosim_fhir], tmp_path / "ds", BuildOptions(**{**vars(SMALL), "generator": "clinosim"}))
    ds = load_dataset(tmp_path / "ds")
    assert manifest["counts"]["patients"] >= 5
    assert manifest["counts"]["notes"] > 0
    assert any(t.startswith("ICD10CM/") for t in ds.vocab)
    assert ds.label_matrix("med").sum() > 0


def _as_server_searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The same record as a FHIR server would return it: relative references, absolute fullUrls."""
    types = {r["id"]: r["resourceType"] for r in resources}
    text = re.sub(r'"urn:uuid:([^"]+)"', lambda m: f'"{types.get(m[1], "Unknown")}/{m[1]}"', json.dumps(resources))
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in json.loads(text)
        ],
    }


def test_other_tools_bundles_build_the_same_dataset(synthea_fhir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    for path, resources in bundle_resources(synthea_fhir):
        (other / path.name).write_text(json.dumps(_as_server_searchset(resources)))
    a = build_dataset([synthea_fhir], tmp_path / "a", SMALL)
    b = build_dataset([other], tmp_path / "b", SMALL)
    assert a["counts"] == b["counts"] and a["labels"] == b["labels"]


def test_cli_build_survives_broken_files(synthea_fhir: Path, tmp_path: Path) -> None:
    messy = tmp_path / "messy"
    messy.mkdir()
    first = sorted(synthea_fhir.glob("*.json"))[0]
    (messy / "good.json").write_bytes(first.read_bytes())
    (messy / "empty.json").write_bytes(b"")
    (messy / "broken.json").write_text('{"resourceType": "Bundle", "entry": [')
    (messy / "dstu2.json").write_text(
        json.dumps(
            {
                "resourceType": "Bundle",
                "entry": [
                    {"resource": {"resourceType": "MedicationOrder", "id": "m"}},
                    {"resource": {"resourceType": "Spaceship", "id": "s"}},
                ],
            }
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cds_service.cli",
            "data",
            "build",
            "--fhir",
            str(messy),
            "--out",
            str(tmp_path / "ds"),
            "--min-label-count",
            "1",
            "--min-token-count",
            "1",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CDS_LOG_LEVEL": "WARNING"},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    skipped = summary["read_report"]["skipped"]
    for kind in ("empty-file", "invalid-json", "other-version-resource", "unknown-resource", "bundle-without-type"):
        assert skipped.get(kind, 0) >= 1, kind
    assert summary["counts"]["patients"] == 1


def test_cli_build_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cds_service.cli",
            "data",
            "build",
            "--fhir",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "ds"),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert "no such file or directory" in result.stderr and "Traceback" not in result.stderr


def test_dataset_arrays_are_consistent(synthea_fhir: Path, tmp_path: Path) -> None:
    build_dataset([synthea_fhir], tmp_path / "ds", SMALL)
    ds = load_dataset(tmp_path / "ds")
    n_events = ds.arrays["patient_events_offsets"][-1]
    assert n_events == len(ds.arrays["event_time"]) == len(ds.arrays["event_token"])
    assert ds.arrays["event_token"].max() < len(ds.vocab)
    assert np.all(np.diff(ds.arrays["sample_dx_offsets"]) >= 0)
