"""`cds-service train`: fit the encoder on a dataset, calibrate on validation, save the artifacts."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from cds_service.data.dataset import Dataset
from cds_service.evaluation.metrics import macro_auprc
from cds_service.ml.artifacts import save_model
from cds_service.ml.features import (
    EncodeConfig,
    TokenSpace,
    WideSpace,
    encode_samples,
    known_dx_matrix,
    pad_batch,
)
from cds_service.ml.modeling import PROFILES, HistoryEncoderModel, ModelConfig, pick_device
from cds_service.ml.recommend import interaction_matrix
from cds_service.ml.tensors import predict_logits, to_tensors
from cds_service.training.calibration import calibrate
from cds_service.training.guard import fit_guard
from cds_service.training.options import TrainOptions, training_samples
from cds_service.training.wide import fit_wide, reuse_wide

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
        max_note_pieces=int(ds.manifest.get("options", {}).get("max_note_pieces", EncodeConfig.max_note_pieces)),
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
    known_train, known_val = (known_dx_matrix(ds, idx, enc_cfg.max_known_dx) for idx in (train_idx, val_idx))

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
    fit_guard(model, ds, enc_cfg, all_train, val_idx, opts.seed).save(out)
    return {"best_val_macro_auprc": best_score, "epochs": len(history), "calibration": calibration["temperature"]}
