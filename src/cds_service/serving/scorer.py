"""Scoring live patients: one padded, calibrated forward pass for a micro-batch (`score_many`).

Explanations of the chosen labels are `serving.explain`'s; this module only scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from cds_service.ml.artifacts import Predictor
from cds_service.ml.features import encode, pad_batch
from cds_service.ml.live import LiveHistory
from cds_service.ml.tensors import to_tensors

HEADS = ("diagnosis", "medication")


@dataclass
class PatientScores:
    live: LiveHistory
    features: dict[str, npt.NDArray[Any]]
    positions: list[int]  # per input position: event index, -1 CLS, -2-k note k
    probabilities: dict[str, npt.NDArray[np.float32]]
    pooled: npt.NDArray[np.float32] | None = None  # the [CLS] representation, for the familiarity guard


class PatientScorer:
    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.model = predictor.model

    def batch(self, scores: PatientScores, rows: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        batch = to_tensors(pad_batch([scores.features] * rows), self.predictor.device)
        known = torch.zeros((rows, max(len(scores.live.known_dx), 1)), dtype=torch.int64)
        known[:, : len(scores.live.known_dx)] = torch.as_tensor(scores.live.known_dx, dtype=torch.int64)
        return batch, known.to(self.predictor.device)

    def score(self, live: LiveHistory) -> PatientScores:
        return self.score_many([live])[0]

    @torch.no_grad()
    def score_many(self, lives: list[LiveHistory]) -> list[PatientScores]:
        """One padded forward pass for several patients (the worker's micro-batch)."""
        out_scores = []
        for live in lives:
            features, positions = encode(live.history, self.predictor.space, self.predictor.encode_config)
            out_scores.append(PatientScores(live, features, positions, {}))
        device = self.predictor.device
        batch = to_tensors(pad_batch([s.features for s in out_scores]), device)
        width = max([len(live.known_dx) for live in lives] + [1])
        known = torch.zeros((len(lives), width), dtype=torch.int64)
        for row, live in enumerate(lives):
            known[row, : len(live.known_dx)] = torch.as_tensor(live.known_dx, dtype=torch.int64)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = self.model(batch, known.to(device))
        dx = self.predictor.calibrate("diagnosis", out.dx_logits.float()).cpu().numpy()
        med = self.predictor.calibrate("medication", out.med_logits.float()).cpu().numpy()
        pooled = out.pooled.float().cpu().numpy() if out.pooled is not None else None
        for row, s in enumerate(out_scores):
            s.probabilities = {"diagnosis": dx[row], "medication": med[row]}
            s.pooled = pooled[row] if pooled is not None else None
        return out_scores
