"""Training and serving share the caps on known diagnoses and note pieces through the model's config.json,
never through constants copied into each side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cds_service.core.settings import Settings
from cds_service.ml.artifacts import Predictor
from cds_service.timeline.events import Note, PatientTimeline


def _model_with_caps(tmp_path: Path, known_dx: int, note_pieces: int) -> Path:
    shipped = Settings().resolved_model_dir
    out = tmp_path / "model"
    shutil.copytree(shipped, out, ignore=shutil.ignore_patterns("evaluation", "*.md"))
    config = json.loads((out / "config.json").read_text())
    config["encode"].update(max_known_dx=known_dx, max_note_pieces=note_pieces)
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_live_featurisation_reads_the_caps_from_the_model(tmp_path: Path) -> None:
    predictor = Predictor(_model_with_caps(tmp_path, known_dx=2, note_pieces=5))
    timeline = PatientTimeline("p", birth_time=0.0, sex="female")
    long_note = "Patient presents with chest pain and shortness of breath for three days. " * 20
    timeline.notes.append(Note(time=100.0, source="DocumentReference/n1", text=long_note))
    known = ["SNOMED/44054006", "SNOMED/38341003", "SNOMED/55822004", "SNOMED/49436004"]
    live = predictor.featurizer.featurize(timeline, cutoff=200.0, known_dx=known, max_notes=2)
    assert len(live.known_dx) == 2
    assert [len(p) for p in live.history.note_pieces] == [5]


def test_shipped_model_states_its_caps() -> None:
    config = json.loads((Settings().resolved_model_dir / "config.json").read_text())["encode"]
    assert config["max_known_dx"] == 8 and config["max_note_pieces"] == 128
    predictor = Predictor(Settings().resolved_model_dir)
    assert predictor.featurizer.config.max_known_dx == 8
    assert predictor.featurizer.config.max_note_pieces == 128
