"""A model directory: `Predictor` loads one (weights, vocabulary, labels, calibration), `save_model` writes one.

The directory is the unit that ships: `config.json` carries every setting that training and serving must
share (model sizes, the encoder window, the caps on known diagnoses and note pieces), so live
featurisation reads them from the model rather than from constants that could drift.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file, save_file

from cds_service.data.dataset import Dataset
from cds_service.data.note_tokenizer import NOTE_MODEL_FILE, NoteTokenizer
from cds_service.ml.concepts import ConceptMap
from cds_service.ml.familiarity import load_guard
from cds_service.ml.features import (
    EncodeConfig,
    TokenSpace,
    WideSpace,
)
from cds_service.ml.live import LiveFeaturizer
from cds_service.ml.modeling import HistoryEncoderModel, ModelConfig, pick_device
from cds_service.ml.recommend import interaction_matrix

log = logging.getLogger(__name__)


def file_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


class Predictor:
    def __init__(self, model_dir: Path, device: torch.device | None = None) -> None:
        self.model_dir = model_dir
        config = json.loads((model_dir / "config.json").read_text())
        self.model_config = ModelConfig(**config["model"])
        encode_config = config["encode"]
        encode_config["encounter_classes"] = tuple(encode_config.get("encounter_classes", ()))
        self.encode_config = EncodeConfig(**encode_config)
        vocab = json.loads((model_dir / "vocab.json").read_text())
        self.vocab: list[str] = vocab["tokens"]
        self.labels: dict[str, list[dict[str, Any]]] = json.loads((model_dir / "labels.json").read_text())
        self.calibration: dict[str, Any] = json.loads((model_dir / "calibration.json").read_text())
        self.space = TokenSpace(self.model_config.n_codes, self.model_config.n_note_pieces)
        bins_path = model_dir / "value_bins.json"
        value_bins = json.loads(bins_path.read_text()) if bins_path.is_file() else {}
        notes_path = model_dir / NOTE_MODEL_FILE
        self.note_tokenizer = NoteTokenizer(notes_path) if notes_path.is_file() else None
        concepts = (
            ConceptMap(self.vocab, vocab["display"], vocab["train_counts"])
            if "display" in vocab and "train_counts" in vocab
            else None
        )
        self.featurizer = LiveFeaturizer(self.vocab, value_bins, self.note_tokenizer, self.encode_config, concepts)
        self.device = device or pick_device()
        self.model = HistoryEncoderModel(self.model_config)
        self.model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
        scale = self.calibration.get("residual_scale", {})  # absent before it was fitted: the whole residual
        self.model.residual_scale.copy_(torch.tensor([scale.get("diagnosis", 1.0), scale.get("medication", 1.0)]))
        self.model.to(self.device).eval()
        self.guard = load_guard(model_dir)  # None: every record is unfamiliar (fail closed)
        self.version = f"{model_dir.name}@{file_digest(model_dir / 'model.safetensors')!s:.12}"

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

    def code_map(self, tokens: list[str]) -> npt.NDArray[np.int64]:
        """Another vocabulary's code ids mapped onto this model's by token (unknown tokens: id 1)."""
        index = {t: i for i, t in enumerate(self.vocab)}
        return np.asarray([index.get(t, 1) for t in tokens], dtype=np.int64)


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
