"""`cds-service evaluate`: the model and the baselines on one test split, with patient-level bootstrap CIs.

Report layout: `report[head][system][metric]` (head "diagnosis" | "medication"; systems `transformer`,
`logistic_regression`, `lightgbm`, `prior`, and `transformer_codes_only` when notes are ablated), plus
`report[head][system]["ci95"][metric]` and `report[head]["paired_difference"][baseline][metric]`
(transformer minus baseline: mean and 95% CI over the same bootstrap resamples).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.data.dataset import Dataset
from cds_service.evaluation.baselines import FeatureSpace, bag_of_codes, make_baseline
from cds_service.evaluation.metrics import SCORE_METRICS, ddi_rate, f1_samples, jaccard
from cds_service.inference.predictor import Predictor, align_labels
from cds_service.inference.training import interaction_matrix

log = logging.getLogger(__name__)

BASELINES = ("prior", "logistic_regression", "lightgbm")
BOOTSTRAP_METRICS = ("micro_auroc", "macro_auprc", "recall@1", "recall@5", "ece", "jaccard", "ddi_rate")
Array = npt.NDArray[Any]


def _set_metrics(y: Array, p: Array, thresholds: Array, ddi: Array) -> dict[str, float]:
    pred = (p >= thresholds).astype(np.float32)
    return {"jaccard": jaccard(y, pred), "f1": f1_samples(y, pred), "ddi_rate": ddi_rate(pred, ddi)}


def _metrics(head: str, y: Array, p: Array, thresholds: Array, ddi: Array) -> dict[str, float]:
    out = {name: fn(y, p) for name, fn in SCORE_METRICS.items()}
    if head == "medication":
        out.update(_set_metrics(y, p, thresholds, ddi))
    return out


def _bootstrap(
    patients: Array, fn: Callable[[Array], dict[str, float]], n_boot: int, seed: int
) -> list[dict[str, float]]:
    """Resample patients with replacement; each draw takes every sample of the drawn patients."""
    rng = np.random.default_rng(seed)
    unique = np.unique(patients)
    rows_of = {pt: np.flatnonzero(patients == pt) for pt in unique}
    draws = []
    for _ in range(n_boot):
        chosen = rng.choice(unique, size=len(unique), replace=True)
        draws.append(fn(np.concatenate([rows_of[c] for c in chosen])))
    return draws


def _paired(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Transformer minus baseline on the same bootstrap draws: mean and 95% CI per metric."""
    out: dict[str, dict[str, Any]] = {}
    for k in ours[0]:
        diffs = [a[k] - b[k] for a, b in zip(ours, theirs, strict=True)]
        out[k] = {"mean": float(np.nanmean(diffs)), "ci95": _ci(diffs)}
    return out


def _ci(values: list[float]) -> list[float]:
    v = np.asarray([x for x in values if x == x])
    return [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] if len(v) else [float("nan")] * 2


def _basic_ci(point: float, values: list[float]) -> list[float]:
    """Basic (reverse-percentile) bootstrap interval around the point estimate.

    Resampling patients duplicates their positives, which biases average precision upward in every draw;
    percentile intervals then sit above the point estimate. The basic interval reflects that bias back.
    Paired differences keep percentile intervals: the bias largely cancels between two systems.
    """
    low, high = _ci(values)
    return [2 * point - high, 2 * point - low]


def evaluate(
    predictor: Predictor,
    train_ds: Dataset,
    test_ds: Dataset,
    n_boot: int = 200,
    seed: int = 13,
    codes_only: Predictor | None = None,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> dict[str, Any]:
    """`max_*_samples` draw a seeded random subset of samples (for speed); the report records the sizes."""
    rng = np.random.default_rng(seed)
    train_idx = _subset(np.flatnonzero(train_ds.sample_split() == 0), max_train_samples, rng)
    test_idx = _subset(np.flatnonzero(test_ds.sample_split() == 2), max_test_samples, rng)
    if not len(test_idx):
        raise ValueError(f"{test_ds.path} has no test-split samples")
    heads = {"diagnosis": "dx", "medication": "med"}
    model_labels = {h: [x["token"] for x in predictor.labels[h]] for h in heads}
    ds_labels = {
        "diagnosis": (train_ds.diagnosis_labels, test_ds.diagnosis_labels),
        "medication": (train_ds.medication_labels, test_ds.medication_labels),
    }

    space = FeatureSpace.from_dataset(train_ds)
    x_train, x_test = bag_of_codes(train_ds, train_idx, space), bag_of_codes(test_ds, test_idx, space)
    scores = predictor.score_dataset(test_ds, test_idx)
    systems: dict[str, dict[str, Array]] = {
        "transformer": {"diagnosis": scores.diagnosis, "medication": scores.medication}
    }
    if codes_only is not None:
        ablated = codes_only.score_dataset(test_ds, test_idx, use_notes=False)
        systems["transformer_codes_only"] = {"diagnosis": ablated.diagnosis, "medication": ablated.medication}
    y_test: dict[str, Array] = {}
    baseline_thresholds: dict[str, dict[str, Array]] = {}
    for head, short in heads.items():
        train_labels, test_labels = ds_labels[head]
        y_train = align_labels(train_ds.label_matrix(short)[train_idx], train_labels, model_labels[head])
        y_test[head] = align_labels(test_ds.label_matrix(short)[test_idx], test_labels, model_labels[head])
        for name in BASELINES:
            log.info("fitting %s for %s", name, head)
            fitted = make_baseline(name, seed).fit(x_train, y_train)
            systems.setdefault(name, {})[head] = fitted.predict_proba(x_test)
            baseline_thresholds.setdefault(name, {})[head] = _rate_thresholds(fitted.predict_proba(x_train), y_train)

    ddi = interaction_matrix([x["display"] for x in predictor.labels["medication"]])
    patients = test_ds.arrays["sample_patient"][test_idx]
    report: dict[str, Any] = {
        "test_dataset": str(test_ds.path),
        "train_dataset": str(train_ds.path),
        "model_version": predictor.version,
        "test_samples": len(test_idx),
        "test_patients": len(np.unique(patients)),
        "bootstrap_resamples": n_boot,
        "note": "diagnosis labels are new-onset disorders only (see README: Labels)",
    }
    for head in heads:
        thresholds = {
            s: np.asarray(predictor.calibration["thresholds"][head])
            if s.startswith("transformer")
            else baseline_thresholds[s][head]
            for s in systems
        }
        y = y_test[head]
        head_report: dict[str, Any] = {}
        draws: dict[str, list[dict[str, float]]] = {}
        for system, by_head in systems.items():
            p = by_head[head]
            th = thresholds[system]
            head_report[system] = _metrics(head, y, p, th, ddi)

            def fn(rows: Array, p: Array = p, th: Array = th, y: Array = y, head: str = head) -> dict[str, float]:
                # only the metrics that get CIs: the full set per draw made bootstrapping the slow part
                out = {k: SCORE_METRICS[k](y[rows], p[rows]) for k in BOOTSTRAP_METRICS if k in SCORE_METRICS}
                if head == "medication":
                    out.update(_set_metrics(y[rows], p[rows], th, ddi))
                    del out["f1"]
                return out

            draws[system] = _bootstrap(patients, fn, n_boot, seed)
            head_report[system]["ci95"] = {
                k: _basic_ci(head_report[system][k], [d[k] for d in draws[system]]) for k in draws[system][0]
            }
        head_report["paired_difference"] = {base: _paired(draws["transformer"], draws[base]) for base in BASELINES}
        report[head] = head_report
    return report


def _subset(rows: Array, limit: int | None, rng: np.random.Generator) -> Array:
    return rows if limit is None or len(rows) <= limit else np.sort(rng.choice(rows, limit, replace=False))


def _rate_thresholds(p_train: Array, y_train: Array) -> Array:
    """Baseline thresholds from training data only: predict each label as often as it occurs in training."""
    rate = np.clip(y_train.mean(0), 1e-4, 0.5)
    return np.asarray([np.quantile(p_train[:, j], 1 - rate[j]) for j in range(p_train.shape[1])])


def render_markdown(report: dict[str, Any], plot_path: Path | None = None) -> str:
    lines = [
        f"# Evaluation: {report['model_version']}",
        "",
        f"Test split of `{report['test_dataset']}`: {report['test_samples']} samples, "
        f"{report['test_patients']} patients; baselines trained on `{report['train_dataset']}` (train split). "
        f"95% CIs from {report['bootstrap_resamples']} patient-level bootstrap resamples.",
        "",
    ]
    for head in ("diagnosis", "medication"):
        section = report[head]
        systems = [s for s in section if s != "paired_difference"]
        metrics = [m for m in section["transformer"] if m != "ci95"]
        lines += [f"## {head}", "", "| metric | " + " | ".join(systems) + " |", "|---" * (len(systems) + 1) + "|"]
        for m in metrics:
            cells = []
            for s in systems:
                ci = section[s]["ci95"].get(m)
                cells.append(f"{section[s][m]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", "Paired difference, transformer minus baseline (mean [95% CI]):", ""]
        for base, diffs in section["paired_difference"].items():
            parts = [f"{k} {v['mean']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" for k, v in diffs.items()]
            lines.append(f"- {base}: " + "; ".join(parts))
        lines.append("")
    if plot_path is not None:
        lines += [f"![macro-AUPRC with 95% CI]({plot_path.name})", ""]
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, head in zip(axes, ("diagnosis", "medication"), strict=True):
        systems = [s for s in report[head] if s != "paired_difference"]
        vals = [report[head][s]["macro_auprc"] for s in systems]
        cis = [report[head][s]["ci95"]["macro_auprc"] for s in systems]
        err = np.abs(np.asarray([[v - c[0], c[1] - v] for v, c in zip(vals, cis, strict=True)]).T)
        ax.bar(range(len(systems)), vals, yerr=err, capsize=3)
        ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{head}: macro-AUPRC")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    plot = path.with_suffix(".png")
    plot_report(report, plot)
    path.with_suffix(".md").write_text(render_markdown(report, plot))
