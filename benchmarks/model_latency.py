"""Forward latency of a model profile at 128/256/512 tokens beside its FLOP-based lower bound on this machine.

    python benchmarks/model_latency.py [--profile cpu] [--model-dir models/NAME] [--runs 50]

The lower bound is the forward pass's multiply-add count divided by the best matrix-multiply throughput
measured here (a 1024x1024 float32 GEMM): no implementation on this machine can be faster. The ratio
p50 / bound says how far from the hardware limit a single forward is.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cds_service.ml.modeling import PROFILES, HistoryEncoderModel, ModelConfig


def forward_flops(cfg: ModelConfig, length: int) -> float:
    p = cfg.sizes
    per_layer = 4 * length * p.hidden**2 + 2 * length * p.hidden * p.intermediate + 2 * length**2 * p.hidden
    heads = p.hidden * cfg.n_diagnoses + 2 * p.hidden * p.hidden + p.hidden * cfg.n_medications
    return 2.0 * (p.layers * per_layer + heads)  # 2 FLOPs per multiply-add


def gemm_flops_per_second(size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def make_batch(length: int, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, cfg.n_codes, (1, length), generator=g)
    return {
        "input_ids": ids,
        "value_ids": torch.zeros_like(ids),
        "token_type_ids": torch.randint(1, 8, (1, length), generator=g),
        "age_ids": torch.full_like(ids, 40),
        "time_ids": torch.randint(0, 32, (1, length), generator=g),
        "visit_ids": torch.randint(0, 20, (1, length), generator=g),
        "attention_mask": torch.ones_like(ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    parser.add_argument("--model-dir", type=Path, default=None, help="use a trained model's sizes")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    if args.model_dir:
        cfg = ModelConfig(**json.loads((args.model_dir / "config.json").read_text())["model"])
    else:
        cfg = ModelConfig(args.profile, vocab_size=6000, n_codes=1200, n_note_pieces=4000, n_diagnoses=90,
                          n_medications=90)  # fmt: skip
    model = HistoryEncoderModel(cfg).eval()
    peak = gemm_flops_per_second()
    print(
        f"profile {cfg.profile}; torch threads {torch.get_num_threads()}; measured GEMM peak {peak / 1e9:.1f} GFLOP/s"
    )
    print(f"{'tokens':>6} {'p50 ms':>8} {'p95 ms':>8} {'bound ms':>9} {'p50/bound':>9}")
    known = torch.zeros((1, 8), dtype=torch.long)
    for length in (128, 256, 512):
        if length > cfg.sizes.max_len:
            continue
        batch = make_batch(length, cfg)
        with torch.inference_mode():
            for _ in range(5):
                model(batch, known)
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                model(batch, known)
                times.append((time.perf_counter() - start) * 1000)
        p50, p95 = np.percentile(times, [50, 95])
        bound = forward_flops(cfg, length) / peak * 1000
        print(f"{length:>6} {p50:>8.2f} {p95:>8.2f} {bound:>9.3f} {p50 / bound:>9.1f}")


if __name__ == "__main__":
    main()
