"""Faithfulness of the evidence (`evaluation.faithfulness`) on a real tiny model trained on real Synthea
output: the figures are finite and start from the probability evaluation scored, deleting every source
is the empty history, the evidence ranking is serving's own, and `evaluate` reports it with the cards."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cds_service.data.dataset import Dataset, load_dataset
from cds_service.evaluation import cards
from cds_service.evaluation.faithfulness import (
    KS,
    Attributor,
    Case,
    faithfulness,
    ranked_evidence,
    select_sources,
    shown_labels,
)
from cds_service.evaluation.report import WIDE_LR, evaluate, fit_baselines, split_samples, write_report
from cds_service.ml.artifacts import Predictor
from cds_service.ml.batch import score_dataset
from cds_service.ml.features import History, encode
from cds_service.training.options import TrainOptions
from cds_service.training.train import train

pytestmark = pytest.mark.slow  # trains a model


def _train(synthea_dataset: Path, out: Path, wide: bool) -> Path:
    opts = TrainOptions(profile="tiny", epochs=3, patience=3, lr=3e-3, wide=wide, wide_max_iter=50)
    train(load_dataset(synthea_dataset), out, opts)
    return out


@pytest.fixture(scope="module")
def wide_model(synthea_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """With a wide branch: its exact shares (on six patients its encoder keeps its zero-initialised heads,
    so the wide branch is all it has)."""
    return _train(synthea_dataset, tmp_path_factory.mktemp("faithfulness") / "wide", wide=True)


@pytest.fixture(scope="module")
def plain_model(synthea_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Without: the encoder's attributions, notes included."""
    return _train(synthea_dataset, tmp_path_factory.mktemp("faithfulness") / "plain", wide=False)


@pytest.fixture(params=["plain_model", "wide_model"])
def tiny_model(request: pytest.FixtureRequest) -> Path:
    """Both tiny models, trained on real Synthea output with notes."""
    path: Path = request.getfixturevalue(request.param)
    return path


def _samples(ds: Dataset, n: int, seed: int = 3) -> np.ndarray:
    rows = np.arange(len(ds.arrays["sample_time"]))
    return np.sort(np.random.default_rng(seed).choice(rows, min(n, len(rows)), replace=False))


def _empty(h: History) -> History:
    """The same encounter with nothing before it, built by hand."""
    return History(
        cutoff=h.cutoff,
        birth_time=h.birth_time,
        event_time=np.zeros(0, dtype=np.float64),
        event_token=np.zeros(0, dtype=np.int64),
        event_kind=np.zeros(0, dtype=np.int64),
        event_value_bin=np.zeros(0, dtype=np.int64),
        event_visit=np.zeros(0, dtype=np.int64),
        note_time=np.zeros(0, dtype=np.float64),
        note_pieces=[],
        sex=h.sex,
        encounter_class=h.encounter_class,
    )


@pytest.mark.parametrize("head", ["diagnosis", "medication"])
def test_figures_are_finite_and_start_from_the_scored_probability(
    synthea_dataset: Path, tiny_model: Path, head: str
) -> None:
    ds, predictor = load_dataset(synthea_dataset), Predictor(tiny_model)
    samples = _samples(ds, 40)
    p = getattr(score_dataset(predictor, ds, samples), head)
    # thresholds 0: every sample shows its most likely label, so none is skipped and nothing is vacuous
    thresholds = np.zeros(p.shape[1], dtype=np.float32)
    got = faithfulness(predictor, ds, head, samples, p, thresholds, n_samples=12, seed=3)
    assert got["labels_explained"] == 12 and got["samples_with_a_shown_label"] == len(samples)
    for k in KS:
        assert all(math.isfinite(v) for v in got["k"][str(k)].values()), got["k"]
    assert 0.0 <= got["share_top1_comprehensiveness_at_least_min_drop"] <= 1.0
    assert got["sources_per_sample"] > 1 and got["evidence_sources_per_sample"] >= 1
    again = faithfulness(predictor, ds, head, samples, p, thresholds, n_samples=12, seed=3)
    assert again["k"] == got["k"]  # seeded: the same draw and the same random control
    # p(full) is exactly what batch scoring gave that sample and label
    attributor = Attributor(predictor, ds)
    labels = shown_labels(p, thresholds)
    rows = np.arange(6)
    cases = [attributor.case(int(samples[r]), int(labels[r])) for r in rows]
    figures = attributor.figures(head, cases, np.random.default_rng(0))
    assert [f.p_full for f in figures] == pytest.approx([float(p[r, labels[r]]) for r in rows], abs=1e-5)
    # comprehensiveness@1 is the drop without the top-ranked source, recomputed by hand
    totals = attributor.source_attributions(head, cases)
    for case, total, f in zip(cases, totals, figures, strict=True):
        top = ranked_evidence(total)[:1]
        without = attributor.probabilities(head, [select_sources(case, top, keep=False)], [case.known], [case.label])
        assert f.comprehensiveness[1] == pytest.approx(f.p_full - float(without[0]), abs=1e-6)


def test_removing_every_source_is_the_empty_history(synthea_dataset: Path, tiny_model: Path) -> None:
    ds, predictor = load_dataset(synthea_dataset), Predictor(tiny_model)
    attributor = Attributor(predictor, ds)
    assert attributor.config.note_tokens > 0, "notes unused: the check would not cover them"
    samples = _samples(ds, 60, seed=4)
    cases = [attributor.case(int(s), label) for s in samples for label in (0, 1)]
    cases = [c for c in cases if len(c.history.note_pieces) and len(c.sources) > 2][:16]
    assert cases, "no sample with notes and several visits"
    for head in ("diagnosis", "medication"):
        full = _p(attributor, head, [c.history for c in cases], cases)
        without_all = _p(attributor, head, [select_sources(c, c.sources, keep=False) for c in cases], cases)
        empty = _p(attributor, head, [_empty(c.history) for c in cases], cases)
        assert full - without_all == pytest.approx(full - empty, abs=1e-6)
        assert np.abs(full - empty).max() > 1e-4, "the history changes nothing: the check would be vacuous"
        # ... and keeping every source is the full history (sufficiency 0)
        kept = _p(attributor, head, [select_sources(c, c.sources, keep=True) for c in cases], cases)
        assert kept == pytest.approx(full, abs=1e-6)
        # the check bites: a deletion that left one source behind would differ from the empty history
        one_left = [select_sources(c, c.sources[-1:], keep=True) for c in cases]
        assert np.abs(_p(attributor, head, one_left, cases) - empty).max() > 1e-6
        if predictor.wide_space is None:  # and the notes count: they are sources too (the plain encoder reads them)
            notes_left = [replace(_empty(c.history), note_time=c.history.note_time, note_pieces=c.history.note_pieces)
                          for c in cases]  # fmt: skip
            assert np.abs(_p(attributor, head, notes_left, cases) - empty).max() > 1e-6


def _p(attributor: Attributor, head: str, histories: list[History], cases: list[Case]) -> np.ndarray:
    return attributor.probabilities(head, histories, [c.known for c in cases], [c.label for c in cases])


def test_the_evidence_ranking_is_servings(synthea_dataset: Path, tiny_model: Path) -> None:
    """The same attributions, summed per visit, as serving's Explainer gives for sources named by visit."""
    from cds_service.ml.live import LiveHistory
    from cds_service.serving.explain import Explainer
    from cds_service.serving.scorer import PatientScorer, PatientScores
    from cds_service.timeline.events import Event, EventKind, Note

    ds, predictor = load_dataset(synthea_dataset), Predictor(tiny_model)
    attributor = Attributor(predictor, ds)
    # Events and notes of a visit share one source name here, which serving's note quotes (one resource
    # per source) cannot decode; quotes are no part of the ranking, so this scorer quotes nothing.
    serving = Predictor(tiny_model)
    serving.note_tokenizer = None
    scorer = PatientScorer(serving)
    compared = 0
    for sample in _samples(ds, 8, seed=5):
        for head, label in (("diagnosis", 0), ("medication", 1)):
            case = attributor.case(int(sample), label)
            h = case.history
            events = [
                Event(float(t), EventKind(int(k)), "x", "x", f"visit/{v}")
                for t, k, v in zip(h.event_time, h.event_kind, case.event_source, strict=True)
            ]
            notes = [Note(float(t), f"visit/{v}", "") for t, v in zip(h.note_time, case.note_source, strict=True)]
            live = LiveHistory(h, events, notes, [int(k) for k in case.known if k > 0])
            features, positions = encode(h, predictor.space, attributor.config)
            scores = PatientScores(live, features, positions, {head: np.ones(len(predictor.labels[head]))})
            finding = Explainer(scorer).explain(scores, head, [label], top=10_000, confirm=0)[0]
            total = attributor.source_attributions(head, [case])[0]
            ours = ranked_evidence(total)
            positive = sum(total[s] for s in ours)
            theirs = {item.source: item.share for item in finding.evidence}
            assert theirs == pytest.approx({f"visit/{s}": total[s] / positive for s in ours})
            # the same order, up to ties (visits with the same codes get the same wide share)
            assert [theirs[f"visit/{s}"] for s in ours] == pytest.approx([item.share for item in finding.evidence])
            compared += len(ours)
    assert compared > 10


def test_evaluate_reports_cards_and_faithfulness(synthea_dataset: Path, wide_model: Path, tmp_path: Path) -> None:
    ds, predictor = load_dataset(synthea_dataset), Predictor(wide_model)
    train_idx, test_idx = split_samples(ds, ds, None, None, seed=3)
    cached = fit_baselines(ds, ds, train_idx, test_idx, seed=3)
    report = evaluate(predictor, ds, ds, n_boot=2, seed=3, baselines=cached, faithfulness_samples=5)
    scores = score_dataset(predictor, ds, test_idx)
    for head, short in (("diagnosis", "dx"), ("medication", "med")):
        section = report[head]
        p, thresholds = getattr(scores, head), np.asarray(predictor.thresholds[head])
        shown_rows = int((shown_labels(p, thresholds) >= 0).sum())
        assert section["faithfulness"]["samples_with_a_shown_label"] == shown_rows
        assert section["faithfulness"]["labels_explained"] == min(5, shown_rows)
        # the card figures are those of the scores themselves under the service's rule
        ddi = predictor.medication_interactions if head == "medication" else None
        shown = cards.shown_cards(p, thresholds, cards.MAX_CARDS[head], interacting=ddi)
        assert section["cards"]["cards"] == int(shown.sum())
        assert section["cards"]["abstention"] == pytest.approx(float((shown.sum(1) == 0).mean()))
        window = cards.window_labels(
            ds.arrays["sample_patient"], ds.arrays["sample_time"], ds.label_matrix(short), test_idx,
            cards.WINDOW_DAYS[head],
        )  # fmt: skip
        if shown.sum():
            assert section["cards"]["precision"] == pytest.approx(float(window[shown > 0].mean()))
        assert set(section["cards"]["at_same_card_rate"]) == {"logistic_regression", WIDE_LR}
    write_report(report, tmp_path / "report.json")
    markdown = (tmp_path / "report.md").read_text()
    assert "Cards a physician would see" in markdown and "Faithfulness of the evidence" in markdown
    headers = [line for line in markdown.splitlines() if line.startswith("| metric |")]
    assert len(headers) == 2 and not any("cards" in line or "faithfulness" in line for line in headers)
    skipped = evaluate(
        predictor, ds, ds, n_boot=2, seed=3, baselines=cached, faithfulness_samples=0, card_figures=False
    )
    assert not {"cards", "faithfulness"} & set(skipped["diagnosis"])
