"""`cds-service train`: fit the encoder on a dataset, calibrate on validation, save the artifacts."""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from cds_service.data.dataset import Dataset
from cds_service.data.note_tokenizer import NOTE_MODEL_FILE
from cds_service.evaluation.metrics import macro_auprc
from cds_service.inference.featurize import EncodeConfig, TokenSpace, encode, history_from_dataset, pad_batch
from cds_service.inference.modeling import PROFILES, HistoryEncoderModel, ModelConfig, pick_device
from cds_service.safety.interactions import interactions_between

log = logging.getLogger(__name__)

Encoded = dict[str, npt.NDArray[np.int64]]


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encode_samples(ds: Dataset, samples: npt.NDArray[Any], cfg: EncodeConfig) -> list[Encoded]:
    space = TokenSpace(len(ds.vocab), int(ds.manifest.get("note_vocab_size", 0)))
    return [encode(history_from_dataset(ds, int(i)), space, cfg)[0] for i in samples]


def known_dx_matrix(ds: Dataset, samples: npt.NDArray[Any], width: int = 8) -> npt.NDArray[np.int64]:
    out = np.zeros((len(samples), width), dtype=np.int64)
    for row, i in enumerate(samples):
        ids = ds.rows("sample_known_dx", int(i))[:width]
        out[row, : len(ids)] = ids
    return out


def interaction_matrix(names: list[str]) -> npt.NDArray[np.float32]:
    """1 where two medication labels (by display name) interact according to the cited table."""
    n = len(names)
    m = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for j in range(i + 1, n):
            if interactions_between(names[i], names[j]):
                m[i, j] = m[j, i] = 1.0
    return m


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


def sigmoid(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _out_of_time(started: float, opts: TrainOptions) -> bool:
    return opts.max_minutes is not None and (time.monotonic() - started) / 60 > opts.max_minutes


def train(ds: Dataset, out: Path, opts: TrainOptions) -> dict[str, Any]:
    seed_everything(opts.seed)
    device = pick_device()
    sizes = PROFILES[opts.profile]
    enc_cfg = EncodeConfig(max_len=sizes.max_len, note_tokens=sizes.note_tokens if opts.use_notes else 0)
    split = ds.sample_split()
    train_idx, val_idx = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
    if not len(train_idx):
        raise ValueError(f"{ds.path} has no training-split samples")
    if not len(val_idx):
        log.warning("no validation samples: early stopping and calibration fall back to the training split")
        val_idx = train_idx
    pick = np.random.default_rng(opts.seed)
    if opts.unlabelled_fraction < 1.0:
        labelled = (ds.label_matrix("dx")[train_idx].sum(1) + ds.label_matrix("med")[train_idx].sum(1)) > 0
        keep = labelled | (pick.random(len(train_idx)) < opts.unlabelled_fraction)
        train_idx = train_idx[keep]
    if opts.max_val_samples is not None and len(val_idx) > opts.max_val_samples:
        val_idx = np.sort(pick.choice(val_idx, opts.max_val_samples, replace=False))
    y_dx, y_med = ds.label_matrix("dx"), ds.label_matrix("med")
    log.info("encoding %d train and %d validation samples", len(train_idx), len(val_idx))
    enc_train, enc_val = encode_samples(ds, train_idx, enc_cfg), encode_samples(ds, val_idx, enc_cfg)
    known_train, known_val = known_dx_matrix(ds, train_idx), known_dx_matrix(ds, val_idx)

    space = TokenSpace(len(ds.vocab), int(ds.manifest.get("note_vocab_size", 0)))
    config = ModelConfig(opts.profile, space.size, space.n_codes, space.n_note_pieces, y_dx.shape[1], y_med.shape[1])
    model = HistoryEncoderModel(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)

    def pos_weight(y: npt.NDArray[np.float32]) -> torch.Tensor:
        pos = y[train_idx].sum(0)
        return torch.from_numpy(np.sqrt(np.clip((len(train_idx) - pos) / np.maximum(pos, 1), 1, 400))).to(device)

    loss_dx = nn.BCEWithLogitsLoss(pos_weight=pos_weight(y_dx))
    loss_med = nn.BCEWithLogitsLoss(pos_weight=pos_weight(y_med))
    med_names = [x["display"] for x in ds.manifest["labels"]["medication"]]
    ddi = torch.from_numpy(interaction_matrix(med_names)).to(device)
    use_amp = device.type == "cuda"

    started = time.monotonic()
    best_score, best_state, stale, history = -1.0, None, 0, []
    rng = np.random.default_rng(opts.seed)
    for epoch in range(opts.epochs):
        model.train()
        order = rng.permutation(len(train_idx))
        total = 0.0
        for start in tqdm(range(0, len(order), opts.batch_size), desc=f"epoch {epoch + 1}", leave=False):
            if _out_of_time(started, opts):
                break  # the budget ends mid-epoch: validate what we have
            rows = order[start : start + opts.batch_size]
            batch = to_tensors(pad_batch([enc_train[i] for i in rows]), device)
            known = torch.from_numpy(known_train[rows]).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                result = model(batch, known)
            loss = loss_dx(result.dx_logits.float(), torch.from_numpy(y_dx[train_idx[rows]]).to(device))
            loss = loss + loss_med(result.med_logits.float(), torch.from_numpy(y_med[train_idx[rows]]).to(device))
            if opts.ddi_penalty and ddi.any():
                p = torch.sigmoid(result.med_logits.float())
                # expected number of interacting pairs recommended together
                loss = loss + opts.ddi_penalty * ((p @ ddi) * p).sum(1).mean() / 2
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(rows)
        val_dx, val_med = predict_logits(model, enc_val, known_val)
        score = np.nanmean([macro_auprc(y_dx[val_idx], val_dx), macro_auprc(y_med[val_idx], val_med)])
        history.append({"epoch": epoch + 1, "train_loss": total / max(len(order), 1), "val_macro_auprc": float(score)})
        log.info("epoch %d: %s", epoch + 1, history[-1])
        if score > best_score:
            best_score, stale = float(score), 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if stale >= opts.patience or _out_of_time(started, opts):
            break
    if best_state is not None:
        model.load_state_dict(best_state)

    val_dx, val_med = predict_logits(model, enc_val, known_val)
    t_dx, t_med = fit_temperature(val_dx, y_dx[val_idx]), fit_temperature(val_med, y_med[val_idx])
    calibration = {
        "temperature": {"diagnosis": t_dx, "medication": t_med},
        "thresholds": {
            "diagnosis": fit_thresholds(sigmoid(val_dx / t_dx), y_dx[val_idx]),
            "medication": fit_thresholds(sigmoid(val_med / t_med), y_med[val_idx]),
        },
    }
    save_model(model, ds, out, enc_cfg, calibration, {"options": asdict(opts), "history": history})
    return {"best_val_macro_auprc": best_score, "epochs": len(history), "calibration": calibration["temperature"]}


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
