"""Evaluation metrics against values computed by hand on small cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cds_service.evaluation.bootstrap import WeightedMetrics, patient_weights
from cds_service.evaluation.metrics import (
    brier,
    ddi_rate,
    ece,
    f1_samples,
    jaccard,
    macro_auprc,
    macro_auroc,
    micro_auroc,
    recall_at_k,
)

Y = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 0]], dtype=np.float32)
S = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.2, 0.1, 0.1], [0.6, 0.3, 0.5]], dtype=np.float32)


def test_recall_at_k_by_hand() -> None:
    # row 0: top1 = label0 (pos) -> 1/1; row 1: top1 = label1 (pos) -> 1; row 3: top1 = label0 (pos) -> 1
    assert recall_at_k(Y, S, 1) == pytest.approx(1.0)
    # row 0: top2 = {0, 2} -> 2/2; row 1: {1, 2} -> 1/1; row 3: {0, 2} -> 1/2   => mean 5/6
    assert recall_at_k(Y, S, 2) == pytest.approx(5 / 6)


def test_auc_by_hand() -> None:
    # label 0: positives {0.9, 0.6} all above negatives {0.1, 0.2} -> AUROC 1, AP 1
    # label 1: positives {0.8, 0.3}, negatives {0.2, 0.1} -> AUROC 1
    # label 2: positive {0.4}; negatives {0.3, 0.1, 0.5} -> AUROC 2/3, AP = 1/2
    assert macro_auroc(Y, S) == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert macro_auprc(Y, S) == pytest.approx((1 + 1 + 0.5) / 3)
    # micro: all 12 cells as one ranking. Positives {0.9, 0.8, 0.6, 0.4, 0.3} vs negatives
    # {0.2, 0.1, 0.3, 0.2, 0.1, 0.1, 0.5}: 7 + 7 + 7 + 6 + (5 + one tie at 0.3 counted 1/2) = 32.5 of 35 pairs
    assert micro_auroc(Y, S) == pytest.approx(32.5 / 35)
    assert micro_auroc(Y, S) == pytest.approx(roc_auc_score(Y.ravel(), S.ravel()))  # and as sklearn ranks it


def test_set_metrics_by_hand() -> None:
    pred = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 0, 0]], dtype=np.float32)
    # jaccard: 1/2, 1/2, (empty-vs-empty left out), 1/2  => 1/2
    assert jaccard(Y, pred) == pytest.approx(1 / 2)
    # F1: 2*1/3 on each of the three samples with a true or predicted set => 2/3
    assert f1_samples(Y, pred) == pytest.approx(2 / 3)
    assert np.isnan(jaccard(Y[2:3], pred[2:3]))
    interacting = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=np.float32)
    # only row 1 recommends a pair: (1, 2), which interacts -> 1 of 1
    assert ddi_rate(pred, interacting) == pytest.approx(1.0)


def test_calibration_by_hand() -> None:
    y = np.array([[1], [0], [1], [0]], dtype=np.float32)
    s = np.array([[0.75], [0.75], [0.25], [0.25]], dtype=np.float32)
    # two bins, each mean prediction off its event rate (0.5) by 0.25
    assert ece(y, s) == pytest.approx(0.25)
    assert brier(y, s) == pytest.approx((0.0625 + 0.5625 + 0.5625 + 0.0625) / 4)


def test_weighted_bootstrap_equals_duplicated_rows() -> None:
    """A resample as weights gives exactly the metrics of its duplicated rows (ties included)."""
    rng = np.random.default_rng(5)
    y = (rng.random((60, 6)) < 0.2).astype(np.float32)
    p = np.round(rng.random((60, 6)), 1).astype(np.float32)  # rounded: many ties
    pred = (p >= 0.6).astype(np.float32)
    interacting = np.zeros((6, 6), dtype=np.float32)
    interacting[0, 1] = interacting[1, 0] = 1.0
    weighted = WeightedMetrics(y, p, pred, interacting)
    patients = np.repeat(np.arange(20), 3)
    for weights in patient_weights(patients, 4, seed=1):
        rows = np.repeat(np.arange(60), weights.astype(int))
        got = weighted.at(weights)
        assert got["micro_auroc"] == pytest.approx(micro_auroc(y[rows], p[rows]))
        assert got["macro_auprc"] == pytest.approx(macro_auprc(y[rows], p[rows]))
        assert got["recall@1"] == pytest.approx(recall_at_k(y[rows], p[rows], 1))
        assert got["recall@5"] == pytest.approx(recall_at_k(y[rows], p[rows], 5))
        assert got["ece"] == pytest.approx(ece(y[rows], p[rows]))
        assert got["jaccard"] == pytest.approx(jaccard(y[rows], pred[rows]))
        assert got["ddi_rate"] == pytest.approx(ddi_rate(pred[rows], interacting))


def test_paired_differences_of_a_metric_undefined_in_every_draw_are_nan_not_an_error() -> None:
    """A metric with no positive in any bootstrap draw is NaN in all of them: the report says NaN."""
    from cds_service.evaluation.report import paired_differences

    nan = float("nan")
    got = paired_differences([{"auprc": nan, "auroc": 0.8}] * 3, [{"auprc": nan, "auroc": 0.6}] * 3)
    assert math.isnan(got["auprc"]["mean"]) and all(math.isnan(x) for x in got["auprc"]["ci95"])
    assert got["auroc"]["mean"] == pytest.approx(0.2)
