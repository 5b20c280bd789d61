"""How much of a cohort's input the shipped model does not know: unknown-token share per generator, with and
without the concept-level fallbacks (`ml.concepts`).

    .venv/bin/python scripts/measure_unknown_tokens.py --fhir DIR [--fhir DIR ...] [--model models/synthea-cpu]

Each DIR is a generator's FHIR output (Bundles per patient, or NDJSON per resource type). Prints, per
directory, the share of input
events whose code the model's vocabulary does not know, without and with the fallbacks, and the distinct
unknown codings by resource family. No PHI is printed (counts and code families only).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from cds_service.fhir.reader import ReadReport
from cds_service.ml.artifacts import Predictor
from cds_service.timeline.builder import build_timelines


def measure(fhir_dir: Path, predictor: Predictor) -> dict[str, object]:
    featurizer = predictor.featurizer
    events = unknown_plain = unknown_fallback = 0
    distinct: dict[str, set[str]] = {}
    distinct_unknown: Counter[str] = Counter()
    rescued: Counter[str] = Counter()
    for timeline in build_timelines([fhir_dir], ReadReport()):
        for event in timeline.events:
            events += 1
            family = event.kind.name.lower()
            distinct.setdefault(family, set()).add(event.token)
            if event.token in featurizer.index:
                continue
            unknown_plain += 1
            if featurizer.event_token_id(event) == 1:
                unknown_fallback += 1
            else:
                rescued[family] += 1
    for family, tokens in distinct.items():
        distinct_unknown[family] = sum(1 for t in tokens if t not in featurizer.index)
    return {
        "events": events,
        "unknown_share_without_fallback": round(unknown_plain / max(events, 1), 4),
        "unknown_share_with_fallback": round(unknown_fallback / max(events, 1), 4),
        "events_rescued_by_family": dict(rescued),
        "distinct_codes": {k: len(v) for k, v in distinct.items()},
        "distinct_unknown_codes": dict(distinct_unknown),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fhir", type=Path, action="append", required=True)
    parser.add_argument("--model", type=Path, default=Path("models/synthea-cpu"))
    args = parser.parse_args()
    predictor = Predictor(args.model)
    for fhir_dir in args.fhir:
        print(json.dumps({"fhir": str(fhir_dir), **measure(fhir_dir, predictor)}, indent=1))


if __name__ == "__main__":
    main()
