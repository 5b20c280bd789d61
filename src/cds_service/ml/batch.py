"""Offline batch scoring of dataset samples with a loaded model (evaluation, recalibration).

The dataset's code ids are mapped onto the model's vocabulary by token, so a model can score a dataset
built by another run (or from another generator); notes are used only when both were tokenised by the
same SentencePiece model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from cds_service.data.dataset import Dataset
from cds_service.data.note_tokenizer import NOTE_MODEL_FILE
from cds_service.ml.artifacts import Predictor, file_digest
from cds_service.ml.features import Encoded, encode, history_from_dataset, known_dx_matrix, pad_batch, wide_rows
from cds_service.ml.tensors import predict_logits, sigmoid, to_tensors

log = logging.getLogger(__name__)


@dataclass
class Scores:
    diagnosis: npt.NDArray[np.float32]  # calibrated probabilities (samples x labels)
    medication: npt.NDArray[np.float32]


def calibrated(predictor: Predictor, dx: npt.NDArray[np.float32], med: npt.NDArray[np.float32]) -> Scores:
    t = predictor.calibration["temperature"]
    return Scores(sigmoid(dx / t["diagnosis"]), sigmoid(med / t["medication"]))


def score_dataset(predictor: Predictor, ds: Dataset, samples: npt.NDArray[Any], use_notes: bool = True) -> Scores:
    """Calibrated scores for dataset samples."""
    encoded, known = encode_dataset(predictor, ds, samples, use_notes)
    dx, med = predict_logits(predictor.model, encoded, known)
    return calibrated(predictor, dx, med)


def encode_dataset(
    predictor: Predictor, ds: Dataset, samples: npt.NDArray[Any], use_notes: bool = True
) -> tuple[list[Encoded], npt.NDArray[np.int64]]:
    """Model inputs and known-diagnosis ids of dataset samples, in the model's vocabulary."""
    code_map = predictor.code_map(ds.vocab)
    same_notes = file_digest(ds.path / NOTE_MODEL_FILE) == file_digest(predictor.model_dir / NOTE_MODEL_FILE)
    if use_notes and not same_notes:
        log.warning("dataset notes were tokenised by another SentencePiece model: scoring without notes")
    config = predictor.encode_config
    cfg = replace(config, note_tokens=config.note_tokens if use_notes and same_notes else 0)
    encoded = []
    for i in samples:
        h = history_from_dataset(ds, int(i))
        h.event_token = code_map[h.event_token]
        encoded.append(encode(h, predictor.space, cfg)[0])
    known_ids = known_dx_matrix(ds, samples, config.max_known_dx)
    known: npt.NDArray[np.int64] = code_map[known_ids] * (known_ids > 0)
    return encoded, known


@torch.no_grad()
def score_dataset_wide_only(
    predictor: Predictor, ds: Dataset, samples: npt.NDArray[Any], batch_size: int = 1024
) -> Scores:
    """Probabilities of the wide branch alone: L2 logistic regression on the baseline's bag-of-codes
    features, fitted on every training sample (stage 1 of training), before the encoder's residual.
    Not temperature-scaled (its own objective calibrates it, as the baselines' does)."""
    model, wide = predictor.model, predictor.wide_space
    if model.wide is None or wide is None:
        raise ValueError(f"{predictor.model_dir.name} has no wide branch")
    code_map = predictor.code_map(ds.vocab)
    logits = []
    for start in range(0, len(samples), batch_size):
        rows = wide_rows(ds, samples[start : start + batch_size], wide, code_map)
        out = model.wide_logits(to_tensors(pad_batch(rows), predictor.device))
        assert out is not None
        logits.append(out.float().cpu().numpy())
    n_dx = predictor.model_config.n_diagnoses
    both = np.concatenate(logits) if logits else np.zeros((0, n_dx), np.float32)
    return Scores(sigmoid(both[:, :n_dx]), sigmoid(both[:, n_dx:]))
