"""`cds-service evaluate`: the model and the baselines on one test split, with patient-level bootstrap CIs.

Report layout: `report[head][system][metric]` (head "diagnosis" | "medication"; systems `transformer`,
`logistic_regression`, `lightgbm`, `prior`, and `transformer_codes_only` when notes are ablated), plus
`report[head][system]["ci95"][metric]` and `report[head]["paired_difference"][baseline][metric]`
(transformer minus baseline: mean and 95% CI over the same bootstrap resamples). Beside the systems, per
head: `report[head]["cards"]` (what a physician would see under the service's card rule, `evaluation.cards`)
and `report[head]["faithfulness"]` (comprehensiveness and sufficiency of the evidence, `evaluation.faithfulness`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cds_service.data.dataset import Dataset
from cds_service.data.sampling import label_enriched_subset
from cds_service.evaluation import cards, faithfulness
from cds_service.evaluation.baselines import FeatureSpace, bag_of_codes, make_baseline
from cds_service.evaluation.bootstrap import WeightedMetrics, patient_weights
from cds_service.evaluation.metrics import SCORE_METRICS, ddi_rate, f1_samples, jaccard
from cds_service.ml.artifacts import Predictor
from cds_service.ml.batch import score_dataset, score_dataset_wide_only
from cds_service.ml.recommend import interaction_matrix, recommendation_sets

log = logging.getLogger(__name__)

BASELINES = ("prior", "logistic_regression", "lightgbm")
# The wide branch alone: L2 logistic regression (C = 0.5) on the same bag-of-codes features, fitted on every
# training sample by the model's own stage 1. Present for wide models; the compute-matched LR comparison
# where scikit-learn's baselines had to be capped to a subset.
WIDE_LR = "logistic_regression_all_samples"
WIDE_THRESHOLD_SAMPLES = 20_000  # seeded training draw for its rate thresholds
NOT_SYSTEMS = ("paired_difference", "cards", "faithfulness")  # the keys of report[head] that are no system
Array = npt.NDArray[Any]


def _set_metrics(y: Array, pred: Array, ddi: Array) -> dict[str, float]:
    return {"jaccard": jaccard(y, pred), "f1": f1_samples(y, pred), "ddi_rate": ddi_rate(pred, ddi)}


def _decisions(system: str, p: Array, thresholds: Array, ddi: Array) -> Array:
    """What each system recommends: ours applies the interaction-free rule it serves cards with
    (`inference.recommend`); the baselines recommend every label above their threshold, as specified."""
    if system.startswith("transformer"):
        return recommendation_sets(p, thresholds, ddi)
    return (p >= thresholds).astype(np.float32)


def _metrics(system: str, head: str, y: Array, p: Array, thresholds: Array, ddi: Array) -> dict[str, float]:
    out = {name: fn(y, p) for name, fn in SCORE_METRICS.items()}
    if head == "medication":
        out.update(_set_metrics(y, _decisions(system, p, thresholds, ddi), ddi))
        if system.startswith("transformer"):
            # the same thresholds without the rule: what the rule costs in Jaccard, and what it removes
            plain = _set_metrics(y, (p >= thresholds).astype(np.float32), ddi)
            out.update({f"{k}_without_ddi_rule": v for k, v in plain.items()})
    return out


def paired_differences(ours: list[dict[str, float]], theirs: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Transformer minus baseline on the same bootstrap draws: mean and 95% CI per metric."""
    out: dict[str, dict[str, Any]] = {}
    for k in ours[0]:
        diffs = [a[k] - b[k] for a, b in zip(ours, theirs, strict=True)]
        out[k] = {"mean": _mean_of_defined(diffs), "ci95": _ci(diffs)}
    return out


def _mean_of_defined(values: list[float]) -> float:
    """Mean over the draws where the metric is defined; NaN (not a warning) when it is defined in none, e.g.
    a label set with no positive in any draw."""
    defined = [x for x in values if x == x]
    return float(np.mean(defined)) if defined else float("nan")


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
    baselines: dict[str, Array] | None = None,
    faithfulness_samples: int = 300,
    card_figures: bool = True,
) -> dict[str, Any]:
    """`max_*_samples` draw a seeded random subset of samples (for speed); the report records the sizes.
    `baselines`: what `fit_baselines` returned for the same datasets, subsets and seed (fitted once, reused).
    `faithfulness_samples`: shown labels per head whose evidence is checked (0: none); `card_figures`: the
    card-level figures."""
    train_idx, test_idx = split_samples(train_ds, test_ds, max_train_samples, max_test_samples, seed)
    heads = {"diagnosis": "dx", "medication": "med"}
    model_labels = {h: [x["token"] for x in predictor.labels[h]] for h in heads}
    ds_labels = {"diagnosis": test_ds.diagnosis_labels, "medication": test_ds.medication_labels}

    scores = score_dataset(predictor, test_ds, test_idx)
    systems: dict[str, dict[str, Array]] = {
        "transformer": {"diagnosis": scores.diagnosis, "medication": scores.medication}
    }
    if codes_only is not None:
        ablated = score_dataset(codes_only, test_ds, test_idx, use_notes=False)
        systems["transformer_codes_only"] = {"diagnosis": ablated.diagnosis, "medication": ablated.medication}
    y_test = {
        head: align_columns(test_ds.label_matrix(short)[test_idx], ds_labels[head], model_labels[head])
        for head, short in heads.items()
    }
    if baselines is None:
        baselines = fit_baselines(train_ds, test_ds, train_idx, test_idx, seed)
    if not np.array_equal(baselines["test_samples"], test_idx):
        raise ValueError("the cached baselines were scored on other test samples: refit them")
    baseline_thresholds: dict[str, dict[str, Array]] = {}
    for head in heads:
        for name in BASELINES:
            labels = list(baselines[f"{head}/labels"])
            systems.setdefault(name, {})[head] = align_columns(
                baselines[f"{head}/{name}/p"], labels, model_labels[head]
            )
            baseline_thresholds.setdefault(name, {})[head] = align_columns(
                baselines[f"{head}/{name}/thresholds"][None], labels, model_labels[head], fill=1.0
            )[0]

    if predictor.wide_space is not None:
        wide_test = score_dataset_wide_only(predictor, test_ds, test_idx)
        systems[WIDE_LR] = {"diagnosis": wide_test.diagnosis, "medication": wide_test.medication}
        draw = _subset(
            np.flatnonzero(train_ds.sample_split() == 0), WIDE_THRESHOLD_SAMPLES, np.random.default_rng(seed)
        )
        wide_train = score_dataset_wide_only(predictor, train_ds, draw)
        train_labels = {"diagnosis": train_ds.diagnosis_labels, "medication": train_ds.medication_labels}
        for head, short in heads.items():
            y_train = align_columns(train_ds.label_matrix(short)[draw], train_labels[head], model_labels[head])
            baseline_thresholds.setdefault(WIDE_LR, {})[head] = _rate_thresholds(getattr(wide_train, head), y_train)
    ddi = interaction_matrix([x["display"] for x in predictor.labels["medication"]])
    patients = test_ds.arrays["sample_patient"][test_idx]
    weights = patient_weights(patients, n_boot, seed)  # the same resamples for every system: paired
    report: dict[str, Any] = {
        "test_dataset": str(test_ds.path),
        "train_dataset": str(train_ds.path),
        "model_version": predictor.version,
        "test_samples": len(test_idx),
        "test_patients": len(np.unique(patients)),
        "bootstrap_resamples": n_boot,
        "baseline_train_samples": len(baselines["train_samples"]),
        "baseline_train_weighted": bool("train_weights" in baselines and np.ptp(baselines["train_weights"]) > 0),
        "systems": {
            "logistic_regression": "scikit-learn, L2 (C = 0.5), fitted on `baseline_train_samples` samples",
            "lightgbm": "one LightGBM per label, fitted on `baseline_train_samples` samples",
            WIDE_LR: "the model's wide branch alone: L2 logistic regression (C = 0.5) on the same features, "
            "fitted on every training sample (L-BFGS), before the encoder's residual",
        },
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
            head_report[system] = _metrics(system, head, y, p, th, ddi)
            pred = _decisions(system, p, th, ddi) if head == "medication" else None
            weighted = WeightedMetrics(y, p, pred, ddi if head == "medication" else None)
            draws[system] = [weighted.at(w) for w in weights]
            head_report[system]["ci95"] = {
                k: _basic_ci(head_report[system][k], [d[k] for d in draws[system]]) for k in draws[system][0]
            }
        head_report["paired_difference"] = {
            base: paired_differences(draws["transformer"], draws[base])
            for base in systems
            if not base.startswith("transformer")
        }
        if card_figures:
            head_report["cards"] = _card_figures(
                test_ds, test_idx, head, model_labels[head], systems, thresholds["transformer"], ddi
            )
        if faithfulness_samples > 0:
            log.info("faithfulness of the %s evidence on %d samples", head, faithfulness_samples)
            head_report["faithfulness"] = faithfulness.faithfulness(
                predictor,
                test_ds,
                head,
                test_idx,
                systems["transformer"][head],
                thresholds["transformer"],
                faithfulness_samples,
                seed,
            )
        report[head] = head_report
    report["verdict"] = verdict(report)
    return report


def _card_figures(
    test_ds: Dataset,
    test_idx: Array,
    head: str,
    model_labels: list[str],
    systems: dict[str, dict[str, Array]],
    thresholds: Array,
    ddi: Array,
) -> dict[str, Any]:
    """The transformer's cards on the test samples, right by the head's window over the patient's later
    encounters (all of the dataset's, so a subset of test samples still sees them), beside logistic
    regression at the same card rate."""
    short = "dx" if head == "diagnosis" else "med"
    ds_labels = test_ds.diagnosis_labels if short == "dx" else test_ds.medication_labels
    y = test_ds.label_matrix(short)
    a = test_ds.arrays
    window = cards.window_labels(a["sample_patient"], a["sample_time"], y, test_idx, cards.WINDOW_DAYS[head])
    return cards.card_figures(
        head,
        systems["transformer"][head],
        thresholds,
        align_columns(window, ds_labels, model_labels),
        align_columns(y[test_idx], ds_labels, model_labels),
        {name: systems[name][head] for name in ("logistic_regression", WIDE_LR) if name in systems},
        ddi if head == "medication" else None,
    )


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The acceptance criteria, checked on this report: each with the figures it rests on.

    "Beats beyond the CI" = the 95% CI of the paired difference (transformer minus baseline) lies
    wholly above 0; for ECE and DDI rate lower is better and point estimates are compared."""
    dx, med = report["diagnosis"], report["medication"]
    strong = tuple(b for b in ("logistic_regression", "lightgbm", WIDE_LR) if b in dx)
    checks: dict[str, dict[str, Any]] = {}
    for metric in ("macro_auprc", "recall@5"):
        for base in strong:
            ci = dx["paired_difference"][base][metric]["ci95"]
            checks[f"diagnosis {metric} beats {base} beyond the paired CI"] = {"passed": ci[0] > 0, "ci95": ci}
    best = max(dx[b]["micro_auroc"] for b in strong)
    checks["diagnosis micro_auroc within 0.005 of the best baseline"] = {
        "passed": dx["transformer"]["micro_auroc"] >= best - 0.005,
        "transformer": dx["transformer"]["micro_auroc"],
        "best_baseline": best,
    }
    best_base = max(strong, key=lambda b: med[b]["jaccard"])
    checks["medication jaccard at least the best baseline's, DDI rate no higher"] = {
        "passed": med["transformer"]["jaccard"] >= med[best_base]["jaccard"]
        and med["transformer"]["ddi_rate"] <= med[best_base]["ddi_rate"],
        "transformer": [med["transformer"]["jaccard"], med["transformer"]["ddi_rate"]],
        best_base: [med[best_base]["jaccard"], med[best_base]["ddi_rate"]],
    }
    logistic = tuple(b for b in strong if b.startswith("logistic_regression"))
    for head, section in (("diagnosis", dx), ("medication", med)):
        checks[f"{head} ECE no worse than logistic regression"] = {
            "passed": all(section["transformer"]["ece"] <= section[b]["ece"] for b in logistic),
            "transformer": section["transformer"]["ece"],
            **{b: section[b]["ece"] for b in logistic},
        }
    return {"all_passed": all(c["passed"] for c in checks.values()), "checks": checks}


def split_samples(
    train_ds: Dataset, test_ds: Dataset, max_train: int | None, max_test: int | None, seed: int
) -> tuple[Array, Array]:
    rng = np.random.default_rng(seed)
    train_idx = _subset(np.flatnonzero(train_ds.sample_split() == 0), max_train, rng)
    test_idx = _subset(np.flatnonzero(test_ds.sample_split() == 2), max_test, rng)
    if not len(test_idx):
        raise ValueError(f"{test_ds.path} has no test-split samples")
    return train_idx, test_idx


def fit_baselines(
    train_ds: Dataset,
    test_ds: Dataset,
    train_idx: Array,
    test_idx: Array,
    seed: int,
    unlabelled_fraction: float = 1.0,
    max_train_samples: int | None = None,
) -> dict[str, Array]:
    """Every baseline fitted on the train samples and scored on the test samples, per head, in the train
    dataset's label order; flat keys so that the result saves as one .npz (`cds-service baselines`).

    `unlabelled_fraction` fits on the transformer's own label-enriched, inverse-weighted training subset
    (`training.label_enriched_subset`, same seed); `max_train_samples` then caps it (a seeded random draw)
    where fitting one model per label on all of it would not fit the time available."""
    train_idx, weight = label_enriched_subset(train_ds, train_idx, unlabelled_fraction, np.random.default_rng(seed))
    if max_train_samples is not None and len(train_idx) > max_train_samples:
        keep = np.sort(np.random.default_rng(seed).choice(len(train_idx), max_train_samples, replace=False))
        train_idx, weight = train_idx[keep], weight[keep]
    space = FeatureSpace.from_dataset(train_ds)
    x_train, x_test = bag_of_codes(train_ds, train_idx, space), bag_of_codes(test_ds, test_idx, space)
    out: dict[str, Array] = {"train_samples": train_idx, "train_weights": weight, "test_samples": test_idx}
    for head, short in (("diagnosis", "dx"), ("medication", "med")):
        labels = train_ds.diagnosis_labels if short == "dx" else train_ds.medication_labels
        y_train = train_ds.label_matrix(short)[train_idx]
        out[f"{head}/labels"] = np.asarray(labels)
        for name in BASELINES:
            log.info("fitting %s for %s on %d samples", name, head, len(train_idx))
            fitted = make_baseline(name, seed).fit(x_train, y_train, weight)
            out[f"{head}/{name}/p"] = fitted.predict_proba(x_test)
            out[f"{head}/{name}/thresholds"] = _rate_thresholds(fitted.predict_proba(x_train), y_train, weight)
    return out


def align_columns(p: Array, labels: list[str], model_labels: list[str], fill: float = 0.0) -> Array:
    """Columns of `p` (in `labels` order) re-ordered to `model_labels`; labels it lacks get `fill`."""
    index = {t: j for j, t in enumerate(labels)}
    out = np.full((len(p), len(model_labels)), fill, dtype=np.float32)
    for k, token in enumerate(model_labels):
        if token in index:
            out[:, k] = p[:, index[token]]
    return out


def _subset(rows: Array, limit: int | None, rng: np.random.Generator) -> Array:
    return rows if limit is None or len(rows) <= limit else np.sort(rng.choice(rows, limit, replace=False))


def _rate_thresholds(p_train: Array, y_train: Array, weight: Array | None = None) -> Array:
    """Baseline thresholds from training data only: predict each label as often as it occurs in training
    (weighted: the rate and the quantile are those of the full distribution the weights stand for)."""
    w = np.ones(len(y_train)) if weight is None else weight.astype(np.float64)
    rate = np.clip(np.average(y_train, axis=0, weights=w), 1e-4, 0.5)
    out = []
    for j in range(p_train.shape[1]):
        order = np.argsort(p_train[:, j])
        cdf = np.cumsum(w[order]) / w.sum()
        out.append(p_train[order[min(np.searchsorted(cdf, 1 - rate[j]), len(order) - 1)], j])
    return np.asarray(out)


def render_markdown(report: dict[str, Any], plot_path: Path | None = None) -> str:
    lines = [
        f"# Evaluation: {report['model_version']}",
        "",
        f"Test split of `{report['test_dataset']}`: {report['test_samples']} samples, "
        f"{report['test_patients']} patients; baselines trained on `{report['train_dataset']}` (train split). "
        f"95% CIs from {report['bootstrap_resamples']} patient-level bootstrap resamples.",
        "",
    ]
    if "verdict" in report:
        v = report["verdict"]
        lines += [
            "## Verdict: " + ("every acceptance criterion met" if v["all_passed"] else "NOT every criterion met"),
            "",
        ]
        lines += [f"- {'PASS' if c['passed'] else 'FAIL'}: {name}" for name, c in v["checks"].items()]
        lines.append("")
    for head in ("diagnosis", "medication"):
        section = report[head]
        systems = [s for s in section if s not in NOT_SYSTEMS]
        metrics = [m for m in section["transformer"] if m != "ci95"]
        lines += [f"## {head}", "", "| metric | " + " | ".join(systems) + " |", "|---" * (len(systems) + 1) + "|"]
        for m in metrics:
            cells = []
            for s in systems:
                if m not in section[s]:  # e.g. "*_without_ddi_rule": only our systems have the rule
                    cells.append("n/a")
                    continue
                ci = section[s]["ci95"].get(m)
                cells.append(f"{section[s][m]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", "Paired difference, transformer minus baseline (mean [95% CI]):", ""]
        for base, diffs in section["paired_difference"].items():
            parts = [f"{k} {v['mean']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]" for k, v in diffs.items()]
            lines.append(f"- {base}: " + "; ".join(parts))
        lines.append("")
        if "cards" in section:
            lines += cards.markdown(section["cards"])
        if "faithfulness" in section:
            lines += faithfulness.markdown(section["faithfulness"])
    if plot_path is not None:
        lines += [f"![macro-AUPRC with 95% CI]({plot_path.name})", ""]
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, head in zip(axes, ("diagnosis", "medication"), strict=True):
        systems = [s for s in report[head] if s not in NOT_SYSTEMS]
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
