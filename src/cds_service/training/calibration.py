"""Calibration fitted on validation after training: the residual scale per head (how much of the encoder's
correction over the wide branch to keep), one temperature per head, then per-label decision thresholds.

`calibrate` is shared by `train` and `recalibrate`, so a model recalibrated on a site's own data is
calibrated exactly the way training calibrated it."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cds_service.ml.features import Encoded
from cds_service.ml.modeling import HistoryEncoderModel
from cds_service.ml.tensors import predict_logits, predict_wide_logits, sigmoid

log = logging.getLogger(__name__)


RESIDUAL_SCALES = np.linspace(0.0, 1.0, 21)


def calibrate(
    model: HistoryEncoderModel,
    encoded: list[Encoded],
    known: npt.NDArray[np.int64],
    y_dx: npt.NDArray[np.float32],
    y_med: npt.NDArray[np.float32],
) -> dict[str, Any]:
    """Per head on validation: the share of the encoder's residual to keep (wide models), the temperature,
    then the decision thresholds. Sets the model's `residual_scale`; returns calibration.json's content."""
    heads = ("diagnosis", "medication")
    scale = {head: 1.0 for head in heads}
    model.residual_scale.fill_(1.0)
    val_dx, val_med = predict_logits(model, encoded, known)
    if model.wide is not None:
        wide_dx, wide_med = predict_wide_logits(model, encoded)
        for head, total, wide, y in (("diagnosis", val_dx, wide_dx, y_dx), ("medication", val_med, wide_med, y_med)):
            scale[head] = fit_residual_scale(total, wide, y)
        model.residual_scale.copy_(torch.tensor([scale[h] for h in heads]))
        val_dx, val_med = predict_logits(model, encoded, known)
    t_dx, t_med = fit_temperature(val_dx, y_dx), fit_temperature(val_med, y_med)
    return {
        "residual_scale": scale,
        "temperature": {"diagnosis": t_dx, "medication": t_med},
        "thresholds": {
            "diagnosis": fit_thresholds(sigmoid(val_dx / t_dx), y_dx),
            "medication": fit_thresholds(sigmoid(val_med / t_med), y_med),
        },
        "validation_samples": len(encoded),
    }


def fit_residual_scale(
    total: npt.NDArray[np.float32], wide: npt.NDArray[np.float32], y: npt.NDArray[np.float32]
) -> float:
    """The scale in [0, 1] of the encoder's residual (total - wide) with the lowest validation log-loss after
    temperature scaling: the encoder keeps only as much of its correction as held-out data supports (on
    Synthea its diagnosis residual overfits: half of it beats all of it and none of it)."""
    if not len(total):
        return 1.0
    residual = total - wide
    best, best_loss = 1.0, float("inf")
    for a in RESIDUAL_SCALES:
        z = wide + float(a) * residual
        t = fit_temperature(z, y)
        loss = float(nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(z / t), torch.from_numpy(y)))
        if loss < best_loss - 1e-12:
            best, best_loss = round(float(a), 4), loss
    return best


def fit_temperature(logits: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> float:
    """One temperature per head minimising validation log-loss (Guo et al., 2017)."""
    if not len(logits):
        return 1.0
    z, t = torch.from_numpy(logits).double(), torch.from_numpy(y).double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), t)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def fit_thresholds(p: npt.NDArray[np.float32], y: npt.NDArray[np.float32]) -> list[float]:
    """Per label, the probability threshold that maximises F1 on validation (0.5 with no positives)."""
    out = []
    for j in range(p.shape[1]):
        if y[:, j].sum() == 0:
            out.append(0.5)
            continue
        best, best_f1 = 0.5, -1.0
        for th in np.unique(np.quantile(p[:, j], np.linspace(0.5, 0.999, 60))):
            pred = p[:, j] >= th
            tp = float((pred & (y[:, j] > 0)).sum())
            f1 = 2 * tp / max(pred.sum() + y[:, j].sum(), 1)
            if f1 > best_f1:
                best, best_f1 = float(th), f1
        out.append(best)
    return out
