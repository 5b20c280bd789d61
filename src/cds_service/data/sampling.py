"""Which training samples to fit on: every labelled one plus a weighted share of the unlabelled.

Shared by the encoder's training and the baselines, so both see the same distribution."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.data.dataset import Dataset

log = logging.getLogger(__name__)


def label_enriched_subset(
    ds: Dataset, samples: npt.NDArray[Any], unlabelled_fraction: float, rng: np.random.Generator
) -> tuple[npt.NDArray[Any], npt.NDArray[np.float32]]:
    """Every sample with a label, and `unlabelled_fraction` of the others weighted by its inverse, so that
    weighted losses and fits still estimate the full distribution's (`training` and the baselines share it)."""
    if unlabelled_fraction >= 1.0:
        return samples, np.ones(len(samples), dtype=np.float32)
    labelled = (ds.label_matrix("dx")[samples].sum(1) + ds.label_matrix("med")[samples].sum(1)) > 0
    keep = labelled | (rng.random(len(samples)) < unlabelled_fraction)
    weights = np.where(labelled[keep], 1.0, 1.0 / max(unlabelled_fraction, 1e-6)).astype(np.float32)
    return samples[keep], weights
