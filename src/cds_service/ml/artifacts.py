"""A trained model loaded from its directory, scoring dataset samples or live timelines with calibration."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file, save_file

from cds_service.data.dataset import Dataset
from cds_service.data.note_tokenizer import NOTE_MODEL_FILE, NoteTokenizer
from cds_service.ml.batch import Scores
from cds_service.ml.features import (
    EncodeConfig,
    TokenSpace,
    WideSpace,
    encode,
    history_from_dataset,
    known_dx_matrix,
    pad_batch,
    wide_rows,
)
from cds_service.ml.live import LiveFeaturizer
from cds_service.ml.modeling import HistoryEncoderModel, ModelConfig, pick_device
from cds_service.ml.recommend import interaction_matrix
from cds_service.ml.tensors import predict_logits, sigmoid, to_tensors

log = logging.getLogger(__name__)


def _file_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


class Predictor:
    def __init__(self, model_dir: Path, device: torch.device | None = None) -> None:
        self.model_dir = model_dir
        config = json.loads((model_dir / "config.json").read_text())
        self.model_config = ModelConfig(**config["model"])
        encode_config = config["encode"]
        encode_config["encounter_classes"] = tuple(encode_config.get("encounter_classes", ()))
        self.encode_config = EncodeConfig(**encode_config)
        self.vocab: list[str] = json.loads((model_dir / "vocab.json").read_text())["tokens"]
        self.labels: dict[str, list[dict[str, Any]]] = json.loads((model_dir / "labels.json").read_text())
        self.calibration: dict[str, Any] = json.loads((model_dir / "calibration.json").read_text())
        self.space = TokenSpace(self.model_config.n_codes, self.model_config.n_note_pieces)
        bins_path = model_dir / "value_bins.json"
        value_bins = json.loads(bins_path.read_text()) if bins_path.is_file() else {}
        notes_path = model_dir / NOTE_MODEL_FILE
        self.note_tokenizer = NoteTokenizer(notes_path) if notes_path.is_file() else None
        self.featurizer = LiveFeaturizer(self.vocab, value_bins, self.note_tokenizer)
        self.device = device or pick_device()
        self.model = HistoryEncoderModel(self.model_config)
        self.model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
        scale = self.calibration.get("residual_scale", {})  # absent before it was fitted: the whole residual
        self.model.residual_scale.copy_(torch.tensor([scale.get("diagnosis", 1.0), scale.get("medication", 1.0)]))
        self.model.to(self.device).eval()
        self.version = f"{model_dir.name}@{_file_digest(model_dir / 'model.safetensors')!s:.12}"

    @property
    def thresholds(self) -> dict[str, list[float]]:
        return dict(self.calibration["thresholds"])

    @property
    def wide_space(self) -> WideSpace | None:
        """Columns of the wide branch (None for a model without one)."""
        if self.model.wide is None:
            return None
        return WideSpace(self.space.n_codes, tuple(self.encode_config.encounter_classes))

    @cached_property
    def medication_interactions(self) -> npt.NDArray[np.float32]:
        """Medication labels x labels, 1 where the cited table says the two interact."""
        return interaction_matrix([str(x.get("display", "")) for x in self.labels["medication"]])

    def calibrate(self, head: str, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits / float(self.calibration["temperature"][head]))

    def _calibrated(self, dx: npt.NDArray[np.float32], med: npt.NDArray[np.float32]) -> Scores:
        t = self.calibration["temperature"]
        return Scores(sigmoid(dx / t["diagnosis"]), sigmoid(med / t["medication"]))

    def score_dataset(self, ds: Dataset, samples: npt.NDArray[Any], use_notes: bool = True) -> Scores:
        """Scores for dataset samples; the dataset's code and label ids are mapped onto the model's by token."""
        encoded, known = self.encode_dataset(ds, samples, use_notes)
        dx, med = predict_logits(self.model, encoded, known)
        return self._calibrated(dx, med)

    def encode_dataset(
        self, ds: Dataset, samples: npt.NDArray[Any], use_notes: bool = True
    ) -> tuple[list[dict[str, npt.NDArray[Any]]], npt.NDArray[np.int64]]:
        """Model inputs and known-diagnosis ids of dataset samples, in the model's vocabulary."""
        index = {t: i for i, t in enumerate(self.vocab)}
        code_map = np.asarray([index.get(t, 1) for t in ds.vocab], dtype=np.int64)
        same_notes = _file_digest(ds.path / NOTE_MODEL_FILE) == _file_digest(self.model_dir / NOTE_MODEL_FILE)
        if use_notes and not same_notes:
            log.warning("dataset notes were tokenised by another SentencePiece model: scoring without notes")
        cfg = replace(self.encode_config, note_tokens=self.encode_config.note_tokens if use_notes and same_notes else 0)
        encoded = []
        for i in samples:
            h = history_from_dataset(ds, int(i))
            h.event_token = code_map[h.event_token]
            encoded.append(encode(h, self.space, cfg)[0])
        known_ids = known_dx_matrix(ds, samples)
        known: npt.NDArray[np.int64] = code_map[known_ids] * (known_ids > 0)
        return encoded, known

    @torch.no_grad()
    def score_dataset_wide_only(self, ds: Dataset, samples: npt.NDArray[Any], batch_size: int = 1024) -> Scores:
        """Probabilities of the wide branch alone: L2 logistic regression on the baseline's bag-of-codes
        features, fitted on every training sample (stage 1 of training), before the encoder's residual.
        Not temperature-scaled (its own objective calibrates it, as the baselines' does)."""
        if self.model.wide is None:
            raise ValueError(f"{self.model_dir.name} has no wide branch")
        index = {t: i for i, t in enumerate(self.vocab)}
        code_map = np.asarray([index.get(t, 1) for t in ds.vocab], dtype=np.int64)
        wide = self.wide_space
        assert wide is not None
        logits = []
        for start in range(0, len(samples), batch_size):
            rows = wide_rows(ds, samples[start : start + batch_size], wide, code_map)
            out = self.model.wide_logits(to_tensors(pad_batch(rows), self.device))
            assert out is not None
            logits.append(out.float().cpu().numpy())
        both = np.concatenate(logits) if logits else np.zeros((0, self.model_config.n_diagnoses), np.float32)
        n_dx = self.model_config.n_diagnoses
        return Scores(sigmoid(both[:, :n_dx]), sigmoid(both[:, n_dx:]))


def save_model(
    model: HistoryEncoderModel,
    ds: Dataset,
    out: Path,
    enc_cfg: EncodeConfig,
    calibration: dict[str, Any],
    training: dict[str, Any],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    config = {"model": model.config.to_dict(), "encode": asdict(enc_cfg), "dataset": ds.manifest.get("generator")}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "labels.json").write_text(json.dumps(ds.manifest["labels"], indent=2))
    (out / "calibration.json").write_text(json.dumps(calibration, indent=2))
    (out / "training.json").write_text(json.dumps(training, indent=2))
    for name in ("vocab.json", "value_bins.json", NOTE_MODEL_FILE):
        if (ds.path / name).is_file():
            shutil.copyfile(ds.path / name, out / name)
