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
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from cds_service.data.dataset import Dataset
from cds_service.data.note_tokenizer import NOTE_MODEL_FILE
from cds_service.evaluation.metrics import macro_auprc
from cds_service.inference.featurize import (
    EncodeConfig,
    TokenSpace,
    WideSpace,
    encode,
    history_from_dataset,
    pad_batch,
    wide_features,
)
from cds_service.inference.modeling import PROFILES, HistoryEncoderModel, ModelConfig, pick_device
from cds_service.inference.recommend import interaction_matrix

log = logging.getLogger(__name__)

Encoded = dict[str, npt.NDArray[Any]]


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encode_samples(ds: Dataset, samples: npt.NDArray[Any], cfg: EncodeConfig) -> list[Encoded]:
    space = TokenSpace(len(ds.vocab), int(ds.manifest.get("note_vocab_size", 0)))
    return [encode(history_from_dataset(ds, int(i)), space, cfg)[0] for i in samples]


def wide_rows(
    ds: Dataset, samples: npt.NDArray[Any], wide: WideSpace, code_map: npt.NDArray[np.int64] | None = None
) -> list[Encoded]:
    """Wide-branch features per sample; `code_map` maps the dataset's code ids onto a model's."""
    out: list[Encoded] = []
    for i in samples:
        h = history_from_dataset(ds, int(i))
        if code_map is not None:
            h.event_token = code_map[h.event_token]
        ids, values = wide_features(h, wide)
        out.append({"wide_ids": ids, "wide_values": values})
    return out


def known_dx_matrix(ds: Dataset, samples: npt.NDArray[Any], width: int = 8) -> npt.NDArray[np.int64]:
    out = np.zeros((len(samples), width), dtype=np.int64)
    for row, i in enumerate(samples):
        ids = ds.rows("sample_known_dx", int(i))[:width]
        out[row, : len(ids)] = ids
    return out


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
    # exp(-logaddexp(0, -x)) = 1 / (1 + exp(-x)) without overflow for very negative logits
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))).astype(np.float32)


def _out_of_time(started: float, opts: TrainOptions, steps: int = 0) -> bool:
    if opts.max_steps is not None and steps >= opts.max_steps:
        return True
    return opts.max_minutes is not None and (time.monotonic() - started) / 60 > opts.max_minutes


def train(ds: Dataset, out: Path, opts: TrainOptions) -> dict[str, Any]:
    seed_everything(opts.seed)
    device = pick_device()
    sizes = PROFILES[opts.profile]
    note_tokens = sizes.note_tokens if opts.note_tokens is None else opts.note_tokens
    classes = tuple(str(c) for c in ds.manifest.get("encounter_classes", []))
    enc_cfg = EncodeConfig(
        max_len=opts.max_len or sizes.max_len,
        note_tokens=note_tokens if opts.use_notes else 0,
        wide=opts.wide,
        encounter_classes=classes if opts.wide else (),
    )
    all_train, train_idx, weights, val_idx = training_samples(ds, opts)
    y_dx, y_med = ds.label_matrix("dx"), ds.label_matrix("med")

    space = TokenSpace(len(ds.vocab), int(ds.manifest.get("note_vocab_size", 0)))
    wide = WideSpace(space.n_codes, classes)
    config = ModelConfig(
        opts.profile,
        space.size,
        space.n_codes,
        space.n_note_pieces,
        y_dx.shape[1],
        y_med.shape[1],
        n_wide=wide.size if opts.wide else 0,
    )
    model = HistoryEncoderModel(config).to(device)
    y_both = np.concatenate([y_dx, y_med], axis=1)
    started = time.monotonic()
    history: list[dict[str, Any]] = []
    if opts.wide_from and not opts.wide:
        raise ValueError("--wide-from needs --wide")
    if opts.wide and opts.wide_from:
        history += reuse_wide(model, ds, Path(opts.wide_from))
    elif opts.wide:
        history += fit_wide(model, ds, all_train, val_idx, y_both, wide, opts)

    log.info("encoding %d train and %d validation samples", len(train_idx), len(val_idx))
    enc_train, enc_val = encode_samples(ds, train_idx, enc_cfg), encode_samples(ds, val_idx, enc_cfg)
    known_train, known_val = known_dx_matrix(ds, train_idx), known_dx_matrix(ds, val_idx)

    def pos_weight(y: npt.NDArray[np.float32]) -> torch.Tensor | None:
        if opts.wide:
            return None  # the frozen offset is calibrated; reweighting classes would skew the residual
        pos = y[train_idx].sum(0)
        return torch.from_numpy(np.sqrt(np.clip((len(train_idx) - pos) / np.maximum(pos, 1), 1, 400))).to(device)

    loss_dx = nn.BCEWithLogitsLoss(pos_weight=pos_weight(y_dx), reduction="none")
    loss_med = nn.BCEWithLogitsLoss(pos_weight=pos_weight(y_med), reduction="none")
    med_names = [x["display"] for x in ds.manifest["labels"]["medication"]]
    ddi = torch.from_numpy(interaction_matrix(med_names)).to(device)
    use_amp = device.type == "cuda"
    deep = [p for name, p in model.named_parameters() if not name.startswith("wide")]
    opt = torch.optim.AdamW(deep, lr=opts.lr, weight_decay=opts.weight_decay)

    def validate() -> dict[str, float]:
        """Early stopping uses the mean of both heads; each head's figure is logged to show which moved."""
        val_dx, val_med = predict_logits(model, enc_val, known_val)
        dx, med = macro_auprc(y_dx[val_idx], val_dx), macro_auprc(y_med[val_idx], val_med)
        return {"val_macro_auprc": float(np.nanmean([dx, med])), "val_dx_macro_auprc": dx, "val_med_macro_auprc": med}

    best_score, best_state, stale = -1.0, None, 0
    if opts.wide:  # the wide branch alone is the model to beat: the encoder's heads start at zero
        for head in (model.dx_head, model.med_head[-1]):
            assert isinstance(head, nn.Linear)
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        scores = validate()
        best_score = scores["val_macro_auprc"]
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append({"epoch": 0, "stage": "deep", **scores})
        log.info("wide branch alone: val macro-AUPRC %.4f", best_score)
    rng = np.random.default_rng(opts.seed)
    steps = 0
    for epoch in range(opts.epochs):
        model.train()
        order = rng.permutation(len(train_idx))
        total = 0.0
        for start in tqdm(range(0, len(order), opts.batch_size), desc=f"epoch {epoch + 1}", leave=False):
            if _out_of_time(started, opts, steps):
                break  # the budget ends mid-epoch: validate what we have
            rows = order[start : start + opts.batch_size]
            batch = to_tensors(pad_batch([enc_train[i] for i in rows]), device)
            known = torch.from_numpy(known_train[rows]).to(device)
            w = torch.from_numpy(weights[rows]).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                result = model(batch, known)
            per_sample = opts.dx_loss_weight * loss_dx(
                result.dx_logits.float(), torch.from_numpy(y_dx[train_idx[rows]]).to(device)
            ).sum(1)
            per_sample = per_sample + loss_med(
                result.med_logits.float(), torch.from_numpy(y_med[train_idx[rows]]).to(device)
            ).sum(1)
            if opts.ddi_penalty and ddi.any():
                p = torch.sigmoid(result.med_logits.float())
                # expected number of interacting pairs recommended together
                per_sample = per_sample + opts.ddi_penalty * ((p @ ddi) * p).sum(1) / 2
            loss = (per_sample * w).sum() / w.sum()
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(deep, 1.0)
            opt.step()
            steps += 1
            total += float(loss.detach()) * len(rows)
        scores = validate()
        score = scores["val_macro_auprc"]
        history.append(
            {"epoch": epoch + 1, "stage": "deep", "steps": steps, "train_loss": total / max(len(order), 1), **scores}
        )
        log.info("epoch %d: %s", epoch + 1, history[-1])
        if score > best_score:
            best_score, stale = score, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        if stale >= opts.patience or _out_of_time(started, opts, steps):
            break
    if best_state is not None:
        model.load_state_dict(best_state)

    calibration = {**calibrate(model, enc_val, known_val, y_dx[val_idx], y_med[val_idx]), "fitted_on": ds.path.name}
    training = {"options": asdict(opts), "history": history, "minutes": (time.monotonic() - started) / 60}
    save_model(model, ds, out, enc_cfg, calibration, training)
    return {"best_val_macro_auprc": best_score, "epochs": len(history), "calibration": calibration["temperature"]}


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
