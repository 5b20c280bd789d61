"""The `tiny` profile trained on a real generated cohort: it learns, and saving/loading keeps its scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cds_service.data.dataset import load_dataset
from cds_service.evaluation.metrics import ddi_rate, jaccard, macro_auprc, micro_auprc, recall_at_k
from cds_service.evaluation.model_card import read_card_text, write_model_card
from cds_service.evaluation.report import WIDE_LR, evaluate, fit_baselines, split_samples, write_report
from cds_service.ml.artifacts import Predictor, save_model
from cds_service.ml.batch import encode_dataset, score_dataset, score_dataset_wide_only
from cds_service.ml.features import (
    EncodeConfig,
    TokenSpace,
    WideSpace,
    encode,
    encode_samples,
    history_from_dataset,
    known_dx_matrix,
    pad_batch,
    wide_event_contributions,
    wide_features,
)
from cds_service.ml.recommend import recommendation_sets
from cds_service.ml.tensors import predict_logits, sigmoid, to_tensors
from cds_service.training.calibration import fit_residual_scale
from cds_service.training.options import TrainOptions
from cds_service.training.recalibrate import recalibrate
from cds_service.training.train import train


@pytest.fixture(scope="module")
def tiny_model(synthea_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    train(load_dataset(synthea_dataset), out, TrainOptions(profile="tiny", epochs=12, patience=12, lr=3e-3))
    return out


def test_tiny_model_learns_above_the_prior(synthea_dataset: Path, tiny_model: Path) -> None:
    ds = load_dataset(synthea_dataset)
    rows = np.flatnonzero(ds.sample_split() == 0)
    scores = score_dataset(Predictor(tiny_model), ds, rows)
    for head, p in (("med", scores.medication), ("dx", scores.diagnosis)):
        y = ds.label_matrix(head)[rows]
        prior = np.tile(y.mean(0), (len(y), 1))
        # clearly above the prior: at least twice its precision-recall area
        assert micro_auprc(y, p) > 2 * micro_auprc(y, prior), (head, micro_auprc(y, p), micro_auprc(y, prior))


@pytest.mark.parametrize("wide", [False, True], ids=["plain", "wide"])
def test_save_and_load_reproduce_scores(
    wide: bool, synthea_fhir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """The reloaded directory scores exactly as the trained model did in memory, before it was saved."""
    from cds_service.data.build import BuildOptions, build_dataset

    if wide:
        # The wide branch reused from the module's wide model (fitting it again takes minutes): the residual
        # scale is then fitted at calibration, and kept outside the weights file.
        ds = load_dataset(request.getfixturevalue("synthea_dataset"))
        wide_from = str(request.getfixturevalue("wide_model"))
        opts = TrainOptions(profile="tiny", epochs=2, patience=2, lr=3e-3, wide=True, wide_from=wide_from)
    else:
        # a note-piece cap other than the default, so that a config.json that lost it would show
        options = BuildOptions(min_label_count=1, min_token_count=1, note_vocab_size=500, max_note_pieces=48)
        build_dataset([synthea_fhir], tmp_path / "ds", options)
        ds = load_dataset(tmp_path / "ds")
        opts = TrainOptions(profile="tiny", epochs=2, patience=2, lr=3e-3)
    trained: dict[str, Any] = {}

    def keep(model: Any, dataset: Any, out: Path, enc_cfg: EncodeConfig, calibration: Any, training: Any) -> None:
        trained.update(model=model, enc_cfg=enc_cfg, calibration=calibration)  # the model as trained, in memory
        save_model(model, dataset, out, enc_cfg, calibration, training)

    monkeypatch.setattr("cds_service.training.train.save_model", keep)  # what train() saves with
    out = tmp_path / "model"
    train(ds, out, opts)
    model, enc_cfg = trained["model"], trained["enc_cfg"]
    for name in ("model.safetensors", "config.json", "vocab.json", "labels.json", "calibration.json", "notes.model"):
        assert (out / name).is_file(), name

    # the weights file holds the in-memory model's parameters, tensor by tensor, and the reload has them too
    on_disk, in_memory = load_file(str(out / "model.safetensors")), model.state_dict()
    predictor = Predictor(out)
    reloaded = predictor.model.state_dict()
    assert set(on_disk) == set(in_memory) == set(reloaded)
    for name, tensor in in_memory.items():
        assert torch.equal(on_disk[name], tensor.cpu()), name
        assert torch.equal(reloaded[name].cpu(), tensor.cpu()), name
    assert torch.equal(predictor.model.residual_scale.cpu(), model.residual_scale.cpu())

    # config.json carries the caps that training and serving must share
    encode_section = json.loads((out / "config.json").read_text())["encode"]
    assert {"max_known_dx", "max_note_pieces"} <= set(encode_section), encode_section
    assert encode_section["max_known_dx"] == enc_cfg.max_known_dx
    assert encode_section["max_note_pieces"] == enc_cfg.max_note_pieces == ds.manifest["options"]["max_note_pieces"]
    assert wide or encode_section["max_note_pieces"] == 48  # the non-default cap reached the model
    assert predictor.encode_config == enc_cfg

    # logits: the in-memory model on training's own encoding vs the reloaded Predictor on its own
    rows = np.arange(min(40, len(ds.arrays["sample_patient"])))
    known = known_dx_matrix(ds, rows, enc_cfg.max_known_dx)
    memory_dx, memory_med = predict_logits(model, encode_samples(ds, rows, enc_cfg), known)
    assert np.abs(memory_dx).max() > 0 and np.abs(memory_med).max() > 0
    encoded, reloaded_known = encode_dataset(predictor, ds, rows)
    reloaded_dx, reloaded_med = predict_logits(predictor.model, encoded, reloaded_known)
    np.testing.assert_array_equal(reloaded_dx, memory_dx)
    np.testing.assert_array_equal(reloaded_med, memory_med)
    # and the scores: the calibration the trained model was given, applied to its in-memory logits
    temperature = trained["calibration"]["temperature"]
    scores = score_dataset(predictor, ds, rows)
    np.testing.assert_array_equal(scores.diagnosis, sigmoid(memory_dx / temperature["diagnosis"]))
    np.testing.assert_array_equal(scores.medication, sigmoid(memory_med / temperature["medication"]))


def test_encoding_keeps_only_history_before_the_cutoff(synthea_dataset: Path) -> None:
    ds = load_dataset(synthea_dataset)
    space = TokenSpace(len(ds.vocab), int(ds.manifest["note_vocab_size"]))
    cfg = EncodeConfig(max_len=64, note_tokens=16)
    for sample in range(0, len(ds.arrays["sample_patient"]), 25):
        h = history_from_dataset(ds, sample)
        assert (h.event_time < h.cutoff).all() and (h.note_time < h.cutoff).all()
        features, positions = encode(h, space, cfg)
        assert len(features["input_ids"]) <= 64 and features["input_ids"][0] == 2
        kept = [i for i in positions if i >= 0]
        assert kept == sorted(kept)  # oldest to newest, most recent kept
        if kept:
            assert kept[-1] == len(h.event_time) - 1 or h.event_kind[-1] == 4  # newest event kept (or collapsed lab)


@pytest.fixture(scope="module")
def wide_model(synthea_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny-wide"
    opts = TrainOptions(profile="tiny", epochs=6, patience=6, lr=3e-3, wide=True, unlabelled_fraction=0.5)
    train(load_dataset(synthea_dataset), out, opts)
    return out


def test_wide_model_learns_and_reloads(synthea_dataset: Path, wide_model: Path) -> None:
    ds = load_dataset(synthea_dataset)
    rows = np.flatnonzero(ds.sample_split() == 0)
    predictor = Predictor(wide_model)
    assert predictor.model.wide is not None and predictor.encode_config.wide
    scores = score_dataset(predictor, ds, rows)
    for head, p in (("med", scores.medication), ("dx", scores.diagnosis)):
        y = ds.label_matrix(head)[rows]
        prior = np.tile(y.mean(0), (len(y), 1))
        assert micro_auprc(y, p) > 2 * micro_auprc(y, prior), (head, micro_auprc(y, p), micro_auprc(y, prior))
    again = score_dataset(Predictor(wide_model), ds, rows[:30])
    np.testing.assert_array_equal(again.diagnosis, scores.diagnosis[:30])


def test_wide_only_scores_are_the_forward_pass_wide_branch(synthea_dataset: Path, wide_model: Path) -> None:
    """The evaluation's all-samples logistic regression is exactly the wide branch inside the model."""
    ds = load_dataset(synthea_dataset)
    predictor = Predictor(wide_model)
    rows = np.flatnonzero(ds.sample_split() == 2)[:40]
    wide = score_dataset_wide_only(predictor, ds, rows, batch_size=16)
    encoded = [encode(history_from_dataset(ds, int(i)), predictor.space, predictor.encode_config)[0] for i in rows]
    with torch.no_grad():
        no_known_dx = torch.zeros((len(rows), 1), dtype=torch.int64)
        out = predictor.model(to_tensors(pad_batch(encoded), predictor.device), no_known_dx)
    assert out.wide_logits is not None
    expected = torch.sigmoid(out.wide_logits).numpy()
    n_dx = predictor.model_config.n_diagnoses
    np.testing.assert_allclose(wide.diagnosis, expected[:, :n_dx], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(wide.medication, expected[:, n_dx:], rtol=1e-5, atol=1e-7)


def test_wide_branch_reused_from_a_model_of_the_same_dataset(
    synthea_dataset: Path, wide_model: Path, tiny_model: Path, tmp_path: Path
) -> None:
    ds = load_dataset(synthea_dataset)
    opts = TrainOptions(profile="tiny", epochs=1, max_steps=3, wide=True, wide_from=str(wide_model), dx_loss_weight=3)
    train(ds, tmp_path / "reused", opts)
    source, reused = Predictor(wide_model).model, Predictor(tmp_path / "reused").model
    assert source.wide is not None and reused.wide is not None
    torch.testing.assert_close(reused.wide.weight, source.wide.weight, rtol=0, atol=0)
    torch.testing.assert_close(reused.wide_bias, source.wide_bias, rtol=0, atol=0)
    training = json.loads((tmp_path / "reused" / "training.json").read_text())
    assert training["options"]["dx_loss_weight"] == 3
    history = training["history"]
    assert history[0] == {"stage": "wide", "solver": "reused", "source": str(wide_model)}
    deep = history[1]
    heads = [deep["val_dx_macro_auprc"], deep["val_med_macro_auprc"]]
    assert deep["val_macro_auprc"] == pytest.approx(np.nanmean(heads))

    with pytest.raises(ValueError, match=r"no wide\.weight"):  # the source has no wide branch
        train(ds, tmp_path / "x", TrainOptions(profile="tiny", epochs=1, wide=True, wide_from=str(tiny_model)))
    other = tmp_path / "other-labels"
    shutil.copytree(wide_model, other)
    labels = json.loads((other / "labels.json").read_text())
    labels["diagnosis"] = labels["diagnosis"][::-1]
    (other / "labels.json").write_text(json.dumps(labels))
    with pytest.raises(ValueError, match=r"labels\.json differs"):
        train(ds, tmp_path / "y", TrainOptions(profile="tiny", epochs=1, wide=True, wide_from=str(other)))


def test_residual_scale_is_fitted_to_what_validation_supports() -> None:
    rng = np.random.default_rng(0)
    wide = rng.normal(-2.0, 1.0, size=(4000, 3)).astype(np.float32)
    signal = rng.normal(0.0, 1.5, size=(4000, 3)).astype(np.float32)
    y = (rng.random((4000, 3)) < sigmoid(wide + 0.5 * signal)).astype(np.float32)
    assert fit_residual_scale(wide + signal, wide, y) == pytest.approx(0.5, abs=0.15)  # overconfident residual
    assert fit_residual_scale(wide + 0.5 * signal, wide, y) == pytest.approx(1.0, abs=0.15)  # the truth itself
    noise = rng.normal(0.0, 1.5, size=(4000, 3)).astype(np.float32)
    assert fit_residual_scale(wide + noise, wide, y) == pytest.approx(0.0, abs=0.15)  # nothing to keep


def test_recalibrate_reproduces_training_calibration_and_scale_reaches_scores(
    synthea_dataset: Path, wide_model: Path, tmp_path: Path
) -> None:
    ds = load_dataset(synthea_dataset)
    copy = tmp_path / "copy"
    shutil.copytree(wide_model, copy)
    fitted = json.loads((wide_model / "calibration.json").read_text())
    assert set(fitted["residual_scale"]) == {"diagnosis", "medication"}
    again = recalibrate(copy, ds)
    assert again["residual_scale"] == fitted["residual_scale"]
    for head in ("diagnosis", "medication"):
        assert again["temperature"][head] == pytest.approx(fitted["temperature"][head], rel=1e-6)
        np.testing.assert_allclose(again["thresholds"][head], fitted["thresholds"][head], rtol=1e-5)

    # With none of the residual and no temperature, the model's scores are its wide branch's.
    (copy / "calibration.json").write_text(
        json.dumps(
            {
                **again,
                "residual_scale": {"diagnosis": 0.0, "medication": 0.0},
                "temperature": {"diagnosis": 1.0, "medication": 1.0},
            }
        )
    )
    predictor = Predictor(copy)
    rows = np.flatnonzero(ds.sample_split() == 2)[:40]
    scores, wide = score_dataset(predictor, ds, rows), score_dataset_wide_only(predictor, ds, rows)
    np.testing.assert_allclose(scores.diagnosis, wide.diagnosis, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores.medication, wide.medication, rtol=1e-5, atol=1e-7)


def test_wide_evidence_shares_add_up_to_the_wide_logit(synthea_dataset: Path, wide_model: Path) -> None:
    """Per-event shares of the wide branch plus its non-code columns are exactly its logit."""
    ds = load_dataset(synthea_dataset)
    predictor = Predictor(wide_model)
    assert predictor.model.wide is not None
    wide = WideSpace(predictor.space.n_codes, tuple(predictor.encode_config.encounter_classes))
    weights = predictor.model.wide.weight.detach().numpy()
    bias = predictor.model.wide_bias.detach().numpy()
    checked = 0
    for sample in range(0, len(ds.arrays["sample_patient"]), 40):
        h = history_from_dataset(ds, sample)
        features, _ = encode(h, predictor.space, predictor.encode_config)
        batch = {k: torch.from_numpy(v[None]) for k, v in features.items()}
        with torch.no_grad():
            logits = predictor.model.wide_logits(batch)
        assert logits is not None
        for label in (0, len(bias) - 1):
            column = np.zeros(wide.size, dtype=np.float32)
            column[features["wide_ids"]] = weights[features["wide_ids"], label] * features["wide_values"]
            per_event = wide_event_contributions(h, wide, column)
            rest = column[wide.age_column :].sum()
            assert per_event.sum() + rest + bias[label] == pytest.approx(float(logits[0, label]), abs=1e-3)
        # deleting events removes exactly their counts
        ids, values = wide_features(h, wide, np.arange(len(h.event_token)))
        assert (ids >= wide.age_column).all() and len(values) == len(ids)
        checked += 1
    assert checked


@pytest.fixture(scope="module")
def evaluation_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cohort whose test split holds positives of both heads (the 6-patient fixture's holds none, which
    made every report figure NaN), and a small wide model trained on it."""
    from cds_service.data.build import BuildOptions, build_dataset
    from cds_service.data.synth import synthesize

    root = tmp_path_factory.mktemp("evaluation")
    fhir = synthesize("synthea", patients=10, seed=7, out=root / "fhir")
    build_dataset([fhir], root / "ds", BuildOptions(min_label_count=1, min_token_count=1, note_vocab_size=500))
    opts = TrainOptions(profile="tiny", epochs=4, patience=4, lr=3e-3, wide=True, unlabelled_fraction=0.5)
    train(load_dataset(root / "ds"), root / "model", opts)
    return root / "ds", root / "model"


@pytest.mark.slow
def test_evaluation_report_and_verdict(evaluation_cohort: tuple[Path, Path], tmp_path: Path) -> None:
    ds = load_dataset(evaluation_cohort[0])
    predictor = Predictor(evaluation_cohort[1])
    train_idx, test_idx = split_samples(ds, ds, None, None, seed=3)
    cached = fit_baselines(ds, ds, train_idx, test_idx, seed=3)
    report = evaluate(predictor, ds, ds, n_boot=5, seed=3, baselines=cached, faithfulness_samples=10)
    defined = 0
    for head, short in (("diagnosis", "dx"), ("medication", "med")):
        assert set(report[head]) >= {"transformer", "logistic_regression", "lightgbm", "prior", "paired_difference"}
        # the report's figures are the metrics of the scores themselves
        y = ds.label_matrix(short)[test_idx]
        p = getattr(score_dataset(predictor, ds, test_idx), head)
        expected = macro_auprc(y, p)
        defined += expected == expected
        assert report[head]["transformer"]["macro_auprc"] == pytest.approx(expected, nan_ok=True)
        assert report[head]["transformer"]["recall@5"] == pytest.approx(recall_at_k(y, p, 5), nan_ok=True)
    assert defined, "no head has a defined macro-AUPRC: the check would be vacuous"
    # medication sets: ours under the interaction-free rule, and the same thresholds without it
    med = report["medication"]["transformer"]
    p_med = score_dataset(predictor, ds, test_idx).medication
    y_med = ds.label_matrix("med")[test_idx]
    ddi = predictor.medication_interactions
    sets = recommendation_sets(p_med, predictor.thresholds["medication"], ddi)
    plain = (p_med >= np.asarray(predictor.thresholds["medication"])).astype(np.float32)
    assert med["jaccard"] == pytest.approx(jaccard(y_med, sets)) and med["ddi_rate"] == 0
    assert med["jaccard_without_ddi_rule"] == pytest.approx(jaccard(y_med, plain))
    assert med["ddi_rate_without_ddi_rule"] == pytest.approx(ddi_rate(plain, ddi))
    # the wide branch alone, fitted on every training sample, is the extra logistic-regression system
    wide = score_dataset_wide_only(predictor, ds, test_idx)
    y_dx = ds.label_matrix("dx")[test_idx]
    assert report["diagnosis"][WIDE_LR]["macro_auprc"] == pytest.approx(macro_auprc(y_dx, wide.diagnosis))
    assert WIDE_LR in report["medication"]["paired_difference"]
    assert any(WIDE_LR in name or WIDE_LR in c for name, c in report["verdict"]["checks"].items())
    assert isinstance(report["verdict"]["all_passed"], bool)
    assert all(isinstance(c["passed"], bool) for c in report["verdict"]["checks"].values())
    # the same seed without the cache refits identical baselines
    again = evaluate(predictor, ds, ds, n_boot=5, seed=3, faithfulness_samples=10)
    assert again["diagnosis"]["lightgbm"]["macro_auprc"] == report["diagnosis"]["lightgbm"]["macro_auprc"]
    write_report(report, tmp_path / "report.json")
    markdown = (tmp_path / "report.md").read_text()
    assert "## Verdict" in markdown and (tmp_path / "report.png").is_file()
    # the model card carries the report's own figures
    model_dir = tmp_path / "model"
    shutil.copytree(evaluation_cohort[1], model_dir)
    (model_dir / "card_text.md").write_text("# Model card: test\n\n## Intended use\n\nTests only.\n")
    (model_dir / "evaluation").mkdir()
    shutil.copy(tmp_path / "report.json", model_dir / "evaluation" / "report.json")
    card = write_model_card(
        model_dir, read_card_text(model_dir / "card_text.md"), {"dev": model_dir / "evaluation" / "report.json"}
    ).read_text()
    assert card.startswith("# Model card: test") and "## Intended use" in card
    assert f"{report['diagnosis']['transformer']['macro_auprc']:.3f}" in card
    assert "## Training run" in card and ("PASS" in card or "FAIL" in card)
