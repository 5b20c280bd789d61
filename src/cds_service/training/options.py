"""What `cds-service train` can be told, and which samples it trains and calibrates on.

`training_samples` is seeded by the options, so `recalibrate` finds the very validation samples that
training calibrated on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.data.dataset import Dataset
from cds_service.data.sampling import label_enriched_subset

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    profile: str = "cpu"
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 3
    max_minutes: float | None = None
    seed: int = 13
    ddi_penalty: float = 1.0
    use_notes: bool = True
    unlabelled_fraction: float = 1.0  # share of training samples without any label to keep (speed)
    max_val_samples: int | None = None  # random subset for early stopping and calibration (speed)
    max_len: int | None = None  # encoder window in tokens (default: the profile's); serving uses the same
    note_tokens: int | None = None  # note budget within the window (default: the profile's)
    wide: bool = False  # fit and freeze the bag-of-codes branch first; the encoder learns the residual
    wide_max_iter: int = 200  # L-BFGS iterations of the wide stage
    max_steps: int | None = None  # optimizer steps of the encoder stage: a budget that is the same on any machine
    dx_loss_weight: float = 1.0  # the diagnosis head's share of the loss (its labels are rarer than medications')
    wide_from: str | None = None  # reuse the fitted wide branch of a model trained on the same dataset


def training_samples(
    ds: Dataset, opts: TrainOptions
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[np.float32], npt.NDArray[Any]]:
    """(all training-split samples, the encoder's training subset, its weights, validation samples): seeded,
    so `recalibrate` finds the very validation samples that training calibrated on."""
    split = ds.sample_split()
    all_train, val_idx = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
    if not len(all_train):
        raise ValueError(f"{ds.path} has no training-split samples")
    if not len(val_idx):
        log.warning("no validation samples: early stopping and calibration fall back to the training split")
        val_idx = all_train
    pick = np.random.default_rng(opts.seed)
    # Encounters without any label are most of the data and carry little signal: keep a share of them
    # and weight those kept by its inverse, so the loss still estimates the full distribution's.
    train_idx, weights = label_enriched_subset(ds, all_train, opts.unlabelled_fraction, pick)
    if opts.max_val_samples is not None and len(val_idx) > opts.max_val_samples:
        val_idx = np.sort(pick.choice(val_idx, opts.max_val_samples, replace=False))
    return all_train, train_idx, weights, val_idx
