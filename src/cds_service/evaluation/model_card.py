"""`cds-service model-card`: MODEL_CARD.md written from the model's own artifacts and evaluation reports,
so the figures on the card are always the ones in the reports beside it.

The source attributes are those ONC HTI-1 asks of predictive decision support interventions
(45 CFR 170.315(b)(11)(iv)(A)); the narrative parts that no artifact holds (intended use, limits, the
attribute table) live in the model directory's `card_text.md`, and every figure comes from the reports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEADLINE = (
    ("diagnosis", "macro_auprc"),
    ("diagnosis", "recall@5"),
    ("diagnosis", "micro_auroc"),
    ("diagnosis", "ece"),
    ("medication", "macro_auprc"),
    ("medication", "recall@5"),
    ("medication", "micro_auroc"),
    ("medication", "jaccard"),
    ("medication", "ddi_rate"),
    ("medication", "ece"),
)
SYSTEMS = (
    "transformer",
    "transformer_codes_only",
    "logistic_regression",
    "lightgbm",
    "logistic_regression_all_samples",
    "prior",
)


def _cell(section: dict[str, Any], system: str, metric: str) -> str:
    if system not in section or metric not in section[system]:
        return "–"
    value = section[system][metric]
    ci = section[system].get("ci95", {}).get(metric)
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def performance_table(report: dict[str, Any]) -> str:
    systems = [s for s in SYSTEMS if s in report["diagnosis"]]
    lines = ["| head | metric | " + " | ".join(systems) + " |", "|---|---|" + "---|" * len(systems)]
    for head, metric in HEADLINE:
        cells = [_cell(report[head], s, metric) for s in systems]
        lines.append(f"| {head} | {metric} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences, transformer minus baseline (mean [95% CI]):", ""]
    for head in ("diagnosis", "medication"):
        for base in ("logistic_regression", "lightgbm", "logistic_regression_all_samples"):
            if base not in report[head]["paired_difference"]:
                continue
            diffs = report[head]["paired_difference"][base]
            parts = [
                f"{m} {diffs[m]['mean']:+.3f} [{diffs[m]['ci95'][0]:+.3f}, {diffs[m]['ci95'][1]:+.3f}]"
                for m in ("macro_auprc", "recall@5", "micro_auroc")
            ]
            lines.append(f"- {head} vs {base}: " + "; ".join(parts))
    verdict = report.get("verdict")
    if verdict:
        lines += ["", "Acceptance criteria on this split:", ""]
        lines += [f"- {'PASS' if c['passed'] else 'FAIL'}: {name}" for name, c in verdict["checks"].items()]
    return "\n".join(lines)


def training_summary(model_dir: Path) -> str:
    training = json.loads((model_dir / "training.json").read_text())
    opts = training["options"]
    deep = [h for h in training["history"] if h.get("stage") == "deep"]
    best = max(deep, key=lambda h: h.get("val_macro_auprc", -1.0)) if deep else {}
    last = deep[-1] if deep else {}
    config = json.loads((model_dir / "config.json").read_text())
    calibration = json.loads((model_dir / "calibration.json").read_text())
    return "\n".join(
        [
            f"- profile `{opts['profile']}`, encoder window {config['encode']['max_len']} tokens "
            f"({config['encode']['note_tokens']} for notes), wide branch: {'yes' if opts.get('wide') else 'no'}",
            f"- options: `{json.dumps(opts, sort_keys=True)}`",
            f"- encoder epochs run: {last.get('epoch', 0)} ({last.get('steps', 'n/a')} steps); best validation "
            f"macro-AUPRC (mean of both heads) {best.get('val_macro_auprc', float('nan')):.4f} at epoch "
            f"{best.get('epoch', 0)} (epoch 0 = the wide branch alone)",
            f"- wall time: {training.get('minutes', float('nan')):.0f} minutes on 2 CPU cores",
            f"- temperatures: diagnosis {calibration['temperature']['diagnosis']:.3f}, "
            f"medication {calibration['temperature']['medication']:.3f}",
            *residual_scale_line(calibration),
        ]
    )


def residual_scale_line(calibration: dict[str, Any]) -> list[str]:
    scale = calibration.get("residual_scale")
    if not scale:
        return []
    return [
        f"- share of the encoder's residual kept (fitted on validation, 0 = wide branch alone): diagnosis "
        f"{scale['diagnosis']:.2f}, medication {scale['medication']:.2f}"
    ]


def read_card_text(path: Path) -> dict[str, str]:
    """Split a Markdown file at its `## ` headings: {"header": preamble, title: body, ...}."""
    sections: dict[str, str] = {}
    title, body = "header", list[str]()
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            sections[title] = "\n".join(body).strip()
            title, body = line[3:].strip(), []
        else:
            body.append(line)
    sections[title] = "\n".join(body).strip()
    return sections


def write_model_card(model_dir: Path, text: dict[str, str], reports: dict[str, Path]) -> Path:
    """`text`: the narrative sections (title -> Markdown); `reports`: caption -> report.json path."""
    parts = [text.pop("header", f"# Model card: {model_dir.name}"), ""]
    for title, body in text.items():
        parts += [f"## {title}", "", body.strip(), ""]
    parts += ["## Training run", "", training_summary(model_dir), ""]
    for caption, path in reports.items():
        report = json.loads(path.read_text())
        parts += [
            f"## Performance: {caption}",
            "",
            f"{report['test_samples']} test samples of {report['test_patients']} patients "
            f"(`{report['test_dataset']}`); 95% CIs from {report['bootstrap_resamples']} patient-level "
            f"bootstrap resamples. Full report: `{path.relative_to(model_dir)}` (+ `.md`, `.png`).",
            "",
            performance_table(report),
            "",
        ]
    out = model_dir / "MODEL_CARD.md"
    out.write_text("\n".join(parts))
    return out
