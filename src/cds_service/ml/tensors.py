"""Encoded samples to tensors, and batched logits of a model: what training, calibration and batch scoring
share (live scoring batches its own in `serving.scorer`)."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import torch

from cds_service.ml.features import Encoded, pad_batch
from cds_service.ml.modeling import HistoryEncoderModel

log = logging.getLogger(__name__)


def to_tensors(batch: Encoded, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v).to(device) for k, v in batch.items()}


@torch.no_grad()
def predict_logits(
    model: HistoryEncoderModel, encoded: list[Encoded], known: npt.NDArray[np.int64], batch_size: int = 64
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    model.eval()
    device = next(model.parameters()).device
    dx, med = [], []
    for start in range(0, len(encoded), batch_size):
        batch = to_tensors(pad_batch(encoded[start : start + batch_size]), device)
        out = model(batch, torch.from_numpy(known[start : start + batch_size]).to(device))
        dx.append(out.dx_logits.float().cpu().numpy())
        med.append(out.med_logits.float().cpu().numpy())
    return np.concatenate(dx), np.concatenate(med)


@torch.no_grad()
def predict_wide_logits(
    model: HistoryEncoderModel, encoded: list[Encoded], batch_size: int = 256
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The wide branch's logits alone, split into the two heads."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(encoded), batch_size):
        wide = model.wide_logits(to_tensors(pad_batch(encoded[start : start + batch_size]), device))
        assert wide is not None
        out.append(wide.float().cpu().numpy())
    both = np.concatenate(out)
    n_dx = model.config.n_diagnoses
    return both[:, :n_dx], both[:, n_dx:]


def sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    # exp(-logaddexp(0, -x)) = 1 / (1 + exp(-x)) without overflow for very negative logits
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))).astype(np.float32)
