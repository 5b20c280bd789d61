"""Measure the drug knowledge layer on the held-out interaction set (tests/fixtures/ddi-heldout/pairs.csv).

The set was compiled without sight of the rules (its README says how); this script is run by hand and its
figures go to README ("Drug interactions"). It is deliberately not a test: a test with a threshold would
invite tuning the rules to these 161 pairs, and the point of a held-out set is that nobody tunes to it.

Per mechanism class: sensitivity (interacting pairs warned), contraindicated pairs answered at
`contraindicated` severity, false alarms among the controls, and pairs with a drug we could not resolve
(the service says "not checked" for those rather than "no interaction").

    .venv/bin/python scripts/measure_ddi.py [--pairs PATH] [--misses]
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from cds_service.drugs.resolve import ingredients_of
from cds_service.drugs.rules import interactions_between
from cds_service.drugs.vocabulary import load_vocabulary

PAIRS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ddi-heldout" / "pairs.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS)
    parser.add_argument("--misses", action="store_true", help="list every miss and false alarm")
    args = parser.parse_args()
    vocabulary = load_vocabulary()
    rows = list(csv.DictReader(args.pairs.open()))
    stats: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    notes: list[str] = []
    for row in rows:
        a = ingredients_of(row["drug_a_display"], row["drug_a_rxcui"] or None)
        b = ingredients_of(row["drug_b_display"], row["drug_b_rxcui"] or None)
        rules = interactions_between(a.ingredients, b.ingredients, vocabulary.classes_of)
        group = row["mechanism_class"]
        s = stats[group]
        s["pairs"] += 1
        unresolved = a.unknown or b.unknown
        s["unresolved"] += unresolved
        warned = bool(rules)
        if row["expected"] == "interacts":
            s["warned"] += warned
            if row["severity"] == "contraindicated":
                s["contraindicated"] += 1
                s["critical"] += bool(rules) and rules[0].severity == "contraindicated"
            if not warned:
                notes.append(f"MISS {row['id']} {row['drug_a_display']} + {row['drug_b_display']} "
                             f"-> {a.ingredients} / {b.ingredients}")  # fmt: skip
        elif warned:
            s["false_alarms"] += 1
            notes.append(f"FALSE ALARM {row['id']} {row['drug_a_display']} + {row['drug_b_display']}: {rules[0].id}")
    print("| mechanism class | pairs | warned | contraindicated as contraindicated | false alarms | unresolved |")
    print("|---|---|---|---|---|---|")
    total: dict[str, int] = defaultdict(int)
    for group in sorted(stats):
        s = stats[group]
        for k, v in s.items():
            total[k] += v
        control = group.startswith("control_")
        print(
            f"| {group} | {s['pairs']} | {'' if control else s['warned']} | "
            f"{s['critical']}/{s['contraindicated']} | {s['false_alarms'] if control else ''} | {s['unresolved']} |"
        )
    interacting = sum(1 for r in rows if r["expected"] == "interacts")
    controls = len(rows) - interacting
    print(
        f"\nsensitivity {total['warned']}/{interacting} = {total['warned'] / max(interacting, 1):.3f}; "
        f"contraindicated as contraindicated {total['critical']}/{total['contraindicated']}; "
        f"false alarms {total['false_alarms']}/{controls} = {total['false_alarms'] / max(controls, 1):.3f}; "
        f"pairs with an unresolved drug {total['unresolved']}/{len(rows)}"
    )
    if args.misses:
        print("\n".join(notes))


if __name__ == "__main__":
    main()
