"""TODO docstring (cds_service.ml.batch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)


@dataclass
class Scores:
    diagnosis: npt.NDArray[np.float32]  # calibrated probabilities (samples x labels)
    medication: npt.NDArray[np.float32]
