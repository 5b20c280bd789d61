"""Stage 1 of training: the wide (bag-of-codes) branch as L2 logistic regression, fitted to convergence and
frozen, or reused from an earlier model trained on the same dataset; the encoder then learns the residual."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file
from torch import nn

from cds_service.data.dataset import Dataset
from cds_service.ml.features import (
    WideSpace,
    pad_batch,
    wide_rows,
)
from cds_service.ml.modeling import HistoryEncoderModel
from cds_service.ml.tensors import to_tensors
from cds_service.training.options import TrainOptions

log = logging.getLogger(__name__)


def fit_wide(
    model: HistoryEncoderModel,
    ds: Dataset,
    train_idx: npt.NDArray[Any],
    val_idx: npt.NDArray[Any],
    y: npt.NDArray[np.float32],
    wide: WideSpace,
    opts: TrainOptions,
    c: float = 0.5,
    chunk: int = 8192,
) -> list[dict[str, Any]]:
    """Stage 1: the wide branch as L2-regularised logistic regression per label (the baseline's objective,
    C = 0.5) on every training sample, solved to convergence by full-batch L-BFGS (convex: minibatch Adam
    with a decaying step stopped far from the optimum and lost to scikit-learn's solver); then frozen."""
    assert model.wide is not None
    device = next(model.parameters()).device
    log.info("wide features for %d train and %d validation samples", len(train_idx), len(val_idx))

    def chunks(idx: npt.NDArray[Any]) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        rows = wide_rows(ds, idx, wide)
        return [
            (to_tensors(pad_batch(rows[i : i + chunk]), device), torch.from_numpy(y[idx[i : i + chunk]]).to(device))
            for i in range(0, len(idx), chunk)
        ]

    train_chunks, val_chunks = chunks(train_idx), chunks(val_idx)
    prior = y[train_idx].mean(0).clip(1e-5, 1 - 1e-5)
    with torch.no_grad():
        model.wide_bias.copy_(torch.from_numpy(np.log(prior / (1 - prior))))
    params = [model.wide.weight, model.wide_bias]
    l2 = 1.0 / (2 * c * len(train_idx))

    def chunk_loss(batch: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        logits = model.wide_logits(batch)
        assert logits is not None
        return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")

    def val_loss() -> float:
        with torch.no_grad():
            return sum(float(chunk_loss(b, t)) for b, t in val_chunks) / max(len(val_idx), 1)

    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=opts.wide_max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        total = torch.zeros((), device=device)
        for batch, target in train_chunks:  # gradients accumulate chunk by chunk: one full-batch step
            loss = chunk_loss(batch, target) / len(train_idx)
            loss.backward()  # type: ignore[no-untyped-call]
            total += loss.detach()
        assert model.wide is not None
        penalty = l2 * model.wide.weight.pow(2).sum()
        penalty.backward()  # type: ignore[no-untyped-call]
        return total + penalty.detach()

    before = val_loss()
    opt.step(closure)  # type: ignore[no-untyped-call]
    after = val_loss()
    log.info("wide branch (L-BFGS): validation log-loss %.5f (label prior) -> %.5f", before, after)
    for p in params:
        p.requires_grad_(False)
    return [{"stage": "wide", "solver": "lbfgs", "val_log_loss": after, "prior_val_log_loss": before}]


def reuse_wide(model: HistoryEncoderModel, ds: Dataset, source: Path) -> list[dict[str, Any]]:
    """Stage 1 taken from an earlier model trained on the same dataset (the stage is a convex fit of the same
    data, so refitting it only repeats ~40 CPU-minutes); refused unless vocabulary and labels are identical."""
    assert model.wide is not None
    ours = {"vocab.json": json.loads((ds.path / "vocab.json").read_text()), "labels.json": ds.manifest["labels"]}
    for name, expected in ours.items():
        if json.loads((source / name).read_text()) != expected:
            raise ValueError(f"--wide-from {source}: its {name} differs from the dataset's")
    state = load_file(str(source / "model.safetensors"))
    for name, param in (("wide.weight", model.wide.weight), ("wide_bias", model.wide_bias)):
        if name not in state or state[name].shape != param.shape:
            raise ValueError(f"--wide-from {source}: no {name} of shape {tuple(param.shape)}")
        with torch.no_grad():
            param.copy_(state[name])
        param.requires_grad_(False)
    log.info("wide branch reused from %s", source)
    return [{"stage": "wide", "solver": "reused", "source": str(source)}]
