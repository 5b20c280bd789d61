"""Transfer report: the shipped model (trained on one generator's cohort) on another generator's test split,
beside its own test split, medications compared by ingredient set (`cds_service.evaluation.transfer`).

    .venv/bin/python scripts/transfer_report.py --model models/synthea-cpu \
        --train-data models/datasets/synthea-2000 --transfer-data models/datasets/clinosim-5000 \
        [--out models/synthea-cpu/evaluation/transfer] [--max-samples 3000] [--seed 13] \
        [--lr-max-train 5000] [--skip-lr]

Writes `report.json` and `report.md` to `--out`. A few minutes on a laptop CPU (no GPU needed).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from cds_service.data.dataset import load_dataset
from cds_service.evaluation.transfer import TransferOptions, render_markdown, transfer_report
from cds_service.ml.artifacts import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/synthea-cpu"))
    parser.add_argument("--train-data", type=Path, default=Path("models/datasets/synthea-2000"))
    parser.add_argument("--transfer-data", type=Path, default=Path("models/datasets/clinosim-5000"))
    parser.add_argument("--out", type=Path, default=None, help="default: MODEL/evaluation/transfer")
    parser.add_argument("--max-samples", type=int, default=3000, help="seeded test-split draw per cohort")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--lr-max-train", type=int, default=5000, help="training samples of the local LR")
    parser.add_argument("--skip-lr", action="store_true", help="leave out the local logistic regression")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.monotonic()
    opts = TransferOptions(
        model=args.model,
        train_data=args.train_data,
        transfer_data=args.transfer_data,
        max_samples=args.max_samples,
        seed=args.seed,
        lr_max_train=args.lr_max_train,
        skip_lr=args.skip_lr,
    )
    report = transfer_report(
        opts, load_dataset(args.train_data), load_dataset(args.transfer_data), Predictor(args.model)
    )
    report["seconds"]["wall_including_loading"] = round(time.monotonic() - started, 1)
    out = args.out or args.model / "evaluation" / "transfer"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    print(f"wrote {out / 'report.json'} and {out / 'report.md'} in {report['seconds']['wall_including_loading']:.0f} s")


if __name__ == "__main__":
    main()
