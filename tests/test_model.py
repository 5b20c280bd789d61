"""The `tiny` profile trained on a real generated cohort: it learns, and saving/loading keeps its scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cds_service.data.dataset import load_dataset
from cds_service.evaluation.metrics import micro_auprc
from cds_service.inference.featurize import EncodeConfig, TokenSpace, encode, history_from_dataset
from cds_service.inference.predictor import Predictor
from cds_service.inference.training import TrainOptions, train


@pytest.fixture(scope="module")
def tiny_model(synthea_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    train(load_dataset(synthea_dataset), out, TrainOptions(profile="tiny", epochs=12, patience=12, lr=3e-3))
    return out


def test_tiny_model_learns_above_the_prior(synthea_dataset: Path, tiny_model: Path) -> None:
    ds = load_dataset(synthea_dataset)
    rows = np.flatnonzero(ds.sample_split() == 0)
    scores = Predictor(tiny_model).score_dataset(ds, rows)
    for head, p in (("med", scores.medication), ("dx", scores.diagnosis)):
        y = ds.label_matrix(head)[rows]
        prior = np.tile(y.mean(0), (len(y), 1))
        # clearly above the prior: at least twice its precision-recall area
        assert micro_auprc(y, p) > 2 * micro_auprc(y, prior), (head, micro_auprc(y, p), micro_auprc(y, prior))


def test_save_and_load_reproduce_scores(synthea_dataset: Path, tiny_model: Path) -> None:
    ds = load_dataset(synthea_dataset)
    rows = np.arange(min(40, len(ds.arrays["sample_patient"])))
    a = Predictor(tiny_model).score_dataset(ds, rows)
    b = Predictor(tiny_model).score_dataset(ds, rows)
    np.testing.assert_array_equal(a.diagnosis, b.diagnosis)
    np.testing.assert_array_equal(a.medication, b.medication)
    for name in ("model.safetensors", "config.json", "vocab.json", "labels.json", "calibration.json", "notes.model"):
        assert (tiny_model / name).is_file(), name


def test_encoding_keeps_only_history_before_the_cutoff(synthea_dataset: Path) -> None:
    ds = load_dataset(synthea_dataset)
    space = TokenSpace(len(ds.vocab), int(ds.manifest["note_vocab_size"]))
    cfg = EncodeConfig(max_len=64, note_tokens=16)
    for sample in range(0, len(ds.arrays["sample_patient"]), 25):
        h = history_from_dataset(ds, sample)
        assert (h.event_time < h.cutoff).all() and (h.note_time < h.cutoff).all()
        features, positions = encode(h, space, cfg)
        assert len(features["input_ids"]) <= 64 and features["input_ids"][0] == 2
        kept = [i for i in positions if i >= 0]
        assert kept == sorted(kept)  # oldest to newest, most recent kept
        if kept:
            assert kept[-1] == len(h.event_time) - 1 or h.event_kind[-1] == 4  # newest event kept (or collapsed lab)
