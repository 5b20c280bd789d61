"""Fitting the familiarity guard (`ml.familiarity`) of a trained model on its dataset.

Limits come from the data the model learned from: the age range and the longest history of the training
split, and the quantiles of the validation split for the unknown-code share, the gap before scoring and the
Mahalanobis distance of the [CLS] representation (mean and shrunk covariance of the training split's). One
quantile serves all three, the lowest of `QUANTILES` at which at least `TARGET_PASS_RATE` of validation
requests pass every check; the file records the rate measured. The fixed scoring gap (`scoring_gap_days`:
the model reads every record as of that many days after its last event) is the one of `SCORING_GAPS` with
the best validation macro-AUPRC (mean of both heads); representations are taken as served, at that gap.
`cds-service guard` refits it for a trained model; `train` fits it at its end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from cds_service.data.dataset import Dataset
from cds_service.evaluation.metrics import macro_auprc
from cds_service.ml.familiarity import FamiliarityGuard, RecordMeasures, canonical_cutoff
from cds_service.ml.features import EncodeConfig, TokenSpace, encode, history_from_dataset, known_dx_matrix, pad_batch
from cds_service.ml.modeling import HistoryEncoderModel
from cds_service.ml.tensors import to_tensors

log = logging.getLogger(__name__)
QUANTILES = (0.99, 0.995, 0.998, 0.999, 1.0)
TARGET_PASS_RATE = 0.99
SCORING_GAPS = (30.0, 90.0, 180.0, 365.0)  # candidate fixed gaps (days) between the last event and scoring
SHRINKAGE = 0.1  # of the covariance toward its mean variance: 128 dimensions from a few thousand samples
MIN_UNKNOWN_SHARE = 0.02  # a validation split with no unknown code must not make one unknown code unfamiliar
MAX_SAMPLES = 4000


@torch.no_grad()
def forward_as_served(
    model: HistoryEncoderModel,
    ds: Dataset,
    samples: npt.NDArray[Any],
    cfg: EncodeConfig,
    gap_days: float,
    batch_size: int = 128,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """(pooled representations, diagnosis logits, medication logits) of the samples read as serving reads
    them: as of `gap_days` after their last event."""
    model.eval()
    device = next(model.parameters()).device
    space = TokenSpace(len(ds.vocab), int(ds.manifest.get("note_vocab_size", 0)))
    known = known_dx_matrix(ds, samples, cfg.max_known_dx)
    pooled, dx, med = [], [], []
    for start in range(0, len(samples), batch_size):
        rows = samples[start : start + batch_size]
        encoded = [encode(canonical_cutoff(history_from_dataset(ds, int(i)), gap_days), space, cfg)[0] for i in rows]
        result = model(
            to_tensors(pad_batch(encoded), device), torch.from_numpy(known[start : start + len(rows)]).to(device)
        )
        assert result.pooled is not None
        pooled.append(result.pooled.float().cpu().numpy())
        dx.append(result.dx_logits.float().cpu().numpy())
        med.append(result.med_logits.float().cpu().numpy())
    return np.concatenate(pooled).astype(np.float64), np.concatenate(dx), np.concatenate(med)


def choose_scoring_gap(
    model: HistoryEncoderModel, ds: Dataset, val: npt.NDArray[Any], cfg: EncodeConfig
) -> tuple[float, dict[str, float]]:
    """The candidate gap with the best validation macro-AUPRC (mean of the two heads), and every score."""
    y_dx, y_med = ds.label_matrix("dx")[val], ds.label_matrix("med")[val]
    scores = {}
    for gap in SCORING_GAPS:
        _, dx, med = forward_as_served(model, ds, val, cfg, gap)
        scores[f"{gap:g}"] = float(np.nanmean([macro_auprc(y_dx, dx), macro_auprc(y_med, med)]))
    best = max(SCORING_GAPS, key=lambda g: scores[f"{g:g}"])
    return best, scores


def _measures(ds: Dataset, samples: npt.NDArray[Any]) -> list[RecordMeasures]:
    return [RecordMeasures.of(history_from_dataset(ds, int(i))) for i in samples]


def _draw(samples: npt.NDArray[Any], n: int, seed: int) -> npt.NDArray[Any]:
    if len(samples) <= n:
        return samples
    return np.sort(np.random.default_rng(seed).choice(samples, size=n, replace=False))


def fit_guard(
    model: HistoryEncoderModel,
    ds: Dataset,
    cfg: EncodeConfig,
    train_samples: npt.NDArray[Any],
    val_samples: npt.NDArray[Any],
    seed: int = 13,
) -> FamiliarityGuard:
    train_s, val_s = _draw(train_samples, MAX_SAMPLES, seed), _draw(val_samples, MAX_SAMPLES, seed + 1)
    train_m, val_m = _measures(ds, train_s), _measures(ds, val_s)
    gap_days, gap_scores = choose_scoring_gap(model, ds, val_s, cfg)
    reps_train = forward_as_served(model, ds, train_s, cfg, gap_days)[0]
    reps_val = forward_as_served(model, ds, val_s, cfg, gap_days)[0]
    mean = reps_train.mean(0)
    cov = np.cov(reps_train, rowvar=False)
    cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    precision = np.linalg.inv(cov)
    centred = reps_val - mean
    distances = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, precision, centred), 0.0))
    ages = [m.age_years for m in train_m if m.age_years is not None]
    unknown = np.asarray([m.unknown_share for m in val_m])
    gaps_val = np.asarray([m.gap_days if np.isfinite(m.gap_days) else 0.0 for m in val_m])
    guard = None
    for q in QUANTILES:
        guard = FamiliarityGuard(
            max_unknown_share=max(float(np.quantile(unknown, q)), MIN_UNKNOWN_SHARE),
            max_gap_days=float(np.quantile(gaps_val, q)),
            min_age_years=float(min(ages)) if ages else 0.0,
            max_age_years=float(max(ages)) if ages else 150.0,
            max_events=int(max(m.n_events for m in train_m)),
            mean=mean,
            precision=precision,
            max_distance=float(np.quantile(distances, q)),
            scoring_gap_days=gap_days,
        )
        passed = np.mean([guard.check(m, r).familiar for m, r in zip(val_m, reps_val, strict=True)])
        guard.fitted.update(
            {
                "dataset": ds.path.name,
                "train_samples": len(train_s),
                "validation_samples": len(val_s),
                "quantile": q,
                "validation_macro_auprc_by_scoring_gap": gap_scores,
                "validation_pass_rate": round(float(passed), 4),
            }
        )
        if passed >= TARGET_PASS_RATE:
            break
    assert guard is not None
    log.info("familiarity guard: %s", guard.fitted)
    return guard


def refit_guard(model_dir: Path, ds: Dataset, seed: int = 13) -> FamiliarityGuard:
    """`cds-service guard`: fit and save the guard of a trained model on its own dataset."""
    import json

    from cds_service.ml.artifacts import Predictor
    from cds_service.training.options import TrainOptions, training_samples

    predictor = Predictor(model_dir)
    if ds.manifest["labels"] != predictor.labels:
        raise ValueError(f"{ds.path}: its labels differ from the model's; fit the guard on its training dataset")
    training = json.loads((model_dir / "training.json").read_text())
    known = TrainOptions.__dataclass_fields__
    opts = TrainOptions(**{k: v for k, v in training.get("options", {}).items() if k in known})
    all_train, _, _, val_idx = training_samples(ds, opts)
    guard = fit_guard(predictor.model, ds, predictor.encode_config, all_train, val_idx, seed)
    guard.save(model_dir)
    return guard
