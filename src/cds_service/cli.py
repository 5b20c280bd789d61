"""The `cds-service` command line: one entry point, subcommands per job."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cds_service.core.settings import get_settings

log = logging.getLogger("cds_service")


def _data_synth(args: argparse.Namespace) -> int:
    from cds_service.data.synth import GeneratorMissing, synthesize

    try:
        fhir_dir = synthesize(args.generator, args.patients, args.seed, args.out, args.threads)
    except GeneratorMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = sum(1 for p in fhir_dir.iterdir() if p.is_file())
    print(f"{args.generator}: {files} FHIR files in {fhir_dir}")
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from cds_service.data.build import BuildOptions, build_dataset

    options = BuildOptions(
        seed=args.seed,
        min_token_count=args.min_token_count,
        min_label_count=args.min_label_count,
        max_note_pieces=args.max_note_pieces,
        generator=args.generator,
    )
    for path in args.fhir:
        if not path.exists():
            print(f"error: --fhir {path}: no such file or directory", file=sys.stderr)
            return 2
    try:
        manifest = build_dataset(args.fhir, args.out, options)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {k: manifest[k] for k in ("counts", "splits", "vocab_size", "note_vocab_size", "read_report")}
    summary["labels"] = {head: len(v) for head, v in manifest["labels"].items()}
    print(json.dumps(summary, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from cds_service.data.dataset import load_dataset
    from cds_service.training.options import TrainOptions
    from cds_service.training.train import train

    opts = TrainOptions(
        profile=args.profile,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        seed=args.seed,
        use_notes=not args.no_notes,
        unlabelled_fraction=args.unlabelled_fraction,
        max_val_samples=args.max_val_samples,
        max_len=args.max_len,
        note_tokens=args.note_tokens,
        wide=args.wide,
        max_steps=args.max_steps,
        wide_from=str(args.wide_from) if args.wide_from else None,
        dx_loss_weight=args.dx_loss_weight,
    )
    summary = train(load_dataset(args.data), args.out, opts)
    print(json.dumps(summary, indent=2))
    return 0


def _recalibrate(args: argparse.Namespace) -> int:
    from cds_service.data.dataset import load_dataset
    from cds_service.training.recalibrate import recalibrate

    calibration = recalibrate(args.model, load_dataset(args.data), args.max_val_samples)
    print(json.dumps({k: v for k, v in calibration.items() if k != "thresholds"}, indent=2))
    return 0


def _guard(args: argparse.Namespace) -> int:
    from cds_service.data.dataset import load_dataset
    from cds_service.training.guard import refit_guard

    guard = refit_guard(args.model, load_dataset(args.data))
    print(json.dumps({k: v for k, v in guard.to_json().items() if k not in ("mean", "precision")}, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from cds_service.data.dataset import load_dataset
    from cds_service.evaluation.report import evaluate, write_report
    from cds_service.ml.artifacts import Predictor

    codes_only = Predictor(args.codes_only_model) if args.codes_only_model else None
    baselines = None
    if args.baselines is not None:
        with np.load(args.baselines) as cached:
            baselines = {k: cached[k] for k in cached.files}
    report = evaluate(
        Predictor(args.model),
        load_dataset(args.train_data),
        load_dataset(args.test_data),
        n_boot=args.bootstrap,
        seed=args.seed,
        codes_only=codes_only,
        max_train_samples=args.max_train_samples,
        max_test_samples=args.max_test_samples,
        baselines=baselines,
        faithfulness_samples=args.faithfulness_samples,
        card_figures=not args.no_card_figures,
    )
    write_report(report, args.report)
    print(f"report written: {args.report} (+ .md, .png)")
    return 0


def _baselines(args: argparse.Namespace) -> int:
    import numpy as np

    from cds_service.data.dataset import load_dataset
    from cds_service.evaluation.report import fit_baselines, split_samples

    train_ds, test_ds = load_dataset(args.train_data), load_dataset(args.test_data)
    train_idx, test_idx = split_samples(train_ds, test_ds, None, args.max_test_samples, args.seed)
    fitted = fit_baselines(
        train_ds, test_ds, train_idx, test_idx, args.seed, args.unlabelled_fraction, args.max_train_samples
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **fitted)  # type: ignore[arg-type]
    print(f"baselines written: {args.out}")
    return 0


def _model_card(args: argparse.Namespace) -> int:
    from cds_service.evaluation.model_card import read_card_text, write_model_card

    reports = {}
    for item in args.report:
        caption, _, path = item.partition("=")
        reports[caption] = Path(path)
    out = write_model_card(args.model, read_card_text(args.model / "card_text.md"), reports)
    print(f"model card written: {out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cds_service.api.main import create_app
    from cds_service.core.settings import Settings

    overrides: dict[str, object] = {}
    if args.dev:
        overrides["dev_mode"] = True
    if args.model is not None:
        overrides["model_dir"] = args.model
    settings = Settings(**overrides)  # type: ignore[arg-type]
    if settings.auth_enabled and not (settings.jwt_issuers or settings.jwt_jwks):
        print(
            "error: JWT verification is on but no issuer is allow-listed: set CDS_JWT_ISSUERS (or CDS_JWT_JWKS), "
            "or run with --dev for local development (auth off)",
            file=sys.stderr,
        )
        return 2
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=settings.log_level.lower())
    return 0


def _worker(args: argparse.Namespace) -> int:
    from cds_service.workers.tasks import worker_app

    settings = get_settings()
    if not settings.redis_url:
        print("error: a worker needs CDS_REDIS_URL (the broker)", file=sys.stderr)
        return 2
    argv = ["worker", "--pool", "threads", "--concurrency", str(args.concurrency or settings.batch_max),
            "-Q", settings.inference_queue, "--loglevel", settings.log_level, "-n", f"cds-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle"]  # fmt: skip
    worker_app(settings).worker_main(argv)
    return 0


def _score_bulk(args: argparse.Namespace) -> int:
    import asyncio

    from cds_service.runtime import load_backend
    from cds_service.serving.bulk import score_bulk

    settings = get_settings()
    backend = load_backend(settings)
    if backend is None:
        print("error: no model to score with", file=sys.stderr)
        return 2
    in_flight = args.in_flight or (4 if settings.resolved_backend == "celery" else 1)
    try:
        counts = asyncio.run(score_bulk(backend, args.fhir, args.out, args.chunk_size, in_flight))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        backend.close()
    print(json.dumps(counts))
    return 1 if counts["failed"] else 0


def _worker_health(_: argparse.Namespace) -> int:
    from cds_service.workers.health import worker_alive_here

    try:
        return 0 if worker_alive_here(get_settings()) else 1
    except Exception as exc:  # a probe answers with its exit status only
        print(f"unhealthy: {type(exc).__name__}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="synthetic cohorts and training datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    synth = data_commands.add_parser("synth", help="generate a synthetic FHIR R4 cohort")
    synth.add_argument("--generator", choices=("synthea", "clinosim"), required=True)
    synth.add_argument("--patients", type=int, required=True)
    synth.add_argument("--seed", type=int, default=get_settings().seed)
    synth.add_argument("--threads", type=int, default=2)
    synth.add_argument("--out", type=Path, required=True)
    synth.set_defaults(func=_data_synth)

    build = data_commands.add_parser("build", help="build a training dataset from FHIR files")
    build.add_argument("--fhir", type=Path, action="append", required=True, help="directory or file; repeatable")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--seed", type=int, default=get_settings().seed)
    build.add_argument("--generator", default="unknown", help="recorded in the manifest")
    build.add_argument("--min-token-count", type=int, default=2)
    build.add_argument("--min-label-count", type=int, default=20)
    build.add_argument("--max-note-pieces", type=int, default=128)
    build.set_defaults(func=_data_build)

    tr = commands.add_parser("train", help="train the transformer on a dataset")
    tr.add_argument("--data", type=Path, required=True)
    tr.add_argument("--out", type=Path, required=True)
    tr.add_argument("--profile", choices=("tiny", "cpu", "gpu"), default="cpu")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--max-minutes", type=float, default=None)
    tr.add_argument("--max-steps", type=int, default=None, help="encoder optimizer steps (machine-independent)")
    tr.add_argument("--seed", type=int, default=get_settings().seed)
    tr.add_argument("--no-notes", action="store_true", help="codes only (the notes ablation)")
    tr.add_argument("--unlabelled-fraction", type=float, default=1.0, help="share of label-free samples kept")
    tr.add_argument("--max-val-samples", type=int, default=None, help="validation subset for speed")
    tr.add_argument("--max-len", type=int, default=None, help="encoder window in tokens (default: the profile's)")
    tr.add_argument("--note-tokens", type=int, default=None, help="note budget in the window (default: profile's)")
    tr.add_argument("--wide", action="store_true", help="fit a frozen bag-of-codes branch first (see modeling.py)")
    tr.add_argument("--dx-loss-weight", type=float, default=1.0, help="diagnosis head's weight in the loss")
    tr.add_argument("--wide-from", type=Path, default=None, help="reuse the wide branch of MODEL_DIR (same dataset)")
    tr.set_defaults(func=_train)

    rc = commands.add_parser("recalibrate", help="refit residual scale, temperatures, thresholds on validation")
    rc.add_argument("--model", type=Path, required=True)
    rc.add_argument("--data", type=Path, required=True, help="its validation split (same labels as the model)")
    rc.add_argument("--max-val-samples", type=int, default=None, help="default: the model's training option")
    rc.set_defaults(func=_recalibrate)

    gd = commands.add_parser("guard", help="fit the familiarity guard of a trained model on its dataset")
    gd.add_argument("--model", type=Path, required=True)
    gd.add_argument("--data", type=Path, required=True, help="the model's training dataset (same labels)")
    gd.set_defaults(func=_guard)

    ev = commands.add_parser("evaluate", help="score model and baselines on a test split")
    ev.add_argument("--model", type=Path, required=True)
    ev.add_argument("--train-data", type=Path, required=True, help="baselines train on its train split")
    ev.add_argument("--test-data", type=Path, required=True, help="everything is scored on its test split")
    ev.add_argument("--report", type=Path, required=True)
    ev.add_argument("--codes-only-model", type=Path, default=None, help="a model trained with --no-notes")
    ev.add_argument("--bootstrap", type=int, default=200)
    ev.add_argument("--max-train-samples", type=int, default=None, help="random subset for baseline training")
    ev.add_argument("--max-test-samples", type=int, default=None, help="random subset of the test split")
    ev.add_argument("--seed", type=int, default=get_settings().seed)
    ev.add_argument("--baselines", type=Path, default=None, help="baselines fitted by `cds-service baselines`")
    ev.add_argument(
        "--faithfulness-samples",
        type=int,
        default=300,
        help="shown labels per head whose evidence is checked by deletion (comprehensiveness, sufficiency); 0 skips",
    )
    ev.add_argument("--no-card-figures", action="store_true", help="skip the card-level figures (cards, precision)")
    ev.set_defaults(func=_evaluate)

    mc = commands.add_parser("model-card", help="write MODEL_CARD.md from card_text.md and the reports")
    mc.add_argument("--model", type=Path, required=True)
    mc.add_argument("--report", action="append", default=[], help="CAPTION=path/to/report.json (repeatable)")
    mc.set_defaults(func=_model_card)

    bl = commands.add_parser("baselines", help="fit the baselines once (slow) for `evaluate --baselines`")
    bl.add_argument("--train-data", type=Path, required=True)
    bl.add_argument("--test-data", type=Path, required=True)
    bl.add_argument("--out", type=Path, required=True, help=".npz of test probabilities and thresholds")
    bl.add_argument("--unlabelled-fraction", type=float, default=1.0, help="as `train`: the enriched subset")
    bl.add_argument("--max-train-samples", type=int, default=None, help="cap on that subset (seeded draw)")
    bl.add_argument("--max-test-samples", type=int, default=None)
    bl.add_argument("--seed", type=int, default=get_settings().seed)
    bl.set_defaults(func=_baselines)

    serve = commands.add_parser("serve", help="serve the CDS Hooks endpoints (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--dev", action="store_true", help="development mode: JWT verification OFF")
    serve.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped model)")
    serve.set_defaults(func=_serve)

    bulk = commands.add_parser("score-bulk", help="score a bulk-export population into RiskAssessment NDJSON")
    bulk.add_argument("--fhir", type=Path, required=True, help="bulk-export NDJSON (or Bundle) directory")
    bulk.add_argument("--out", type=Path, required=True, help="RiskAssessment part-*.ndjson go here")
    bulk.add_argument("--chunk-size", type=int, default=50)
    bulk.add_argument("--in-flight", type=int, default=None, help="chunks scored at once (default 4 on celery)")
    bulk.set_defaults(func=_score_bulk)

    worker = commands.add_parser("worker", help="a Celery inference worker (one per GPU)")
    worker.add_argument("--concurrency", type=int, default=None, help="tasks at once = largest micro-batch")
    worker.set_defaults(func=_worker)
    health = commands.add_parser("worker-health", help="exit 0 if a worker on this host has a fresh heartbeat")
    health.set_defaults(func=_worker_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=get_settings().log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
