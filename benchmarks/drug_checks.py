"""Order-check speed for a patient on many drugs: ingredient resolution plus every interaction rule, against a
bare loop over the same pairs.

    python benchmarks/drug_checks.py [--active 30] [--drafts 5] [--repeat 50]

Prints, per hook call, the milliseconds of `check_interactions` + `check_duplicates` over `drafts` x
(`active` + other drafts) pairs, cold (first call: every display resolved) and warm (resolution cached per
display, as in a running service), beside a bare Python loop that only visits the same pairs; and the ratio
(the figure to quote).
"""

from __future__ import annotations

import argparse
import statistics
import time

from cds_service.drugs.knowledge import load_knowledge
from cds_service.drugs.resolve import _resolve
from cds_service.safety.orders import Drug, check_duplicates, check_interactions

# EHR-style displays: brands, salts, combinations, tall-man letters, a misspelling.
DISPLAYS = [
    "Warfarin Sodium 5 MG Oral Tablet", "Digoxin 0.125 MG Oral Tablet", "Verapamil Hydrochloride 80 MG Oral Tablet",
    "Simvistatin 10 MG", "Lisinopril 10 MG Oral Tablet [Zestril]", "Metformin hydrochloride 500 MG Oral Tablet",
    "24 HR Metoprolol Succinate 50 MG Extended Release Oral Tablet", "Amlodipine 5 MG / Atorvastatin 10 MG Oral Tablet",
    "Hydrochlorothiazide 25 MG / Losartan Potassium 100 MG Oral Tablet", "Sertraline 100MG",
    "Acetaminophen 325 MG / oxyCODONE Hydrochloride 5 MG Oral Tablet", "Omeprazole 20 MG Delayed Release Oral Capsule",
    "Clopidogrel 75 MG Oral Tablet [Plavix]", "Furosemide 40 MG Oral Tablet", "Spironolactone 25 MG Oral Tablet",
    "Levothyroxine Sodium 0.05 MG Oral Tablet", "Gabapentin 300 MG Oral Capsule", "Tramadol Hydrochloride 50 MG",
    "insulin glargine 100 UNT/ML Pen Injector [Lantus]", "Aspirin 81 MG Oral Tablet", "Allopurinol 100 MG",
    "Potassium Chloride 20 MEQ Extended Release Oral Tablet", "Prednisone 10 MG Oral Tablet", "Alprazolam 0.5 MG",
    "Citalopram 20 MG Oral Tablet", "Montelukast 10 MG Oral Tablet", "Tamsulosin Hydrochloride 0.4 MG Oral Capsule",
    "Donepezil Hydrochloride 10 MG Oral Tablet", "Apixaban 5 MG Oral Tablet [Eliquis]", "Fluticasone nasal spray",
]  # fmt: skip
DRAFTS = ["Clarithromycin 500 MG Oral Tablet", "Ibuprofen 400 MG Oral Tablet", "Fluconazole 150 MG Oral Tablet",
          "Ciprofloxacin 500 MG Oral Tablet", "Trimethoprim 100 MG Oral Tablet"]  # fmt: skip


def drugs(names: list[str], prefix: str) -> list[Drug]:
    return [Drug(f"MedicationRequest/{prefix}{i}", name, None) for i, name in enumerate(names)]


def one_call(drafts: list[Drug], active: list[Drug]) -> int:
    return len(check_interactions(drafts, active, drafts)) + len(check_duplicates(drafts, active))


def bare(drafts: list[Drug], active: list[Drug]) -> int:
    n = 0
    for d in drafts:
        for o in [*active, *drafts]:
            n += d.reference != o.reference
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--active", type=int, default=30)
    parser.add_argument("--drafts", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    load_knowledge()  # start-up cost, not per call
    active = drugs([DISPLAYS[i % len(DISPLAYS)] for i in range(args.active)], "a")
    drafts = drugs([DRAFTS[i % len(DRAFTS)] for i in range(args.drafts)], "d")
    _resolve.cache_clear()
    t0 = time.perf_counter()
    findings = one_call(drafts, active)
    cold = (time.perf_counter() - t0) * 1e3
    warm, loop = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        one_call(drafts, active)
        warm.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        bare(drafts, active)
        loop.append((time.perf_counter() - t0) * 1e3)
    w, b = statistics.median(warm), statistics.median(loop)
    pairs = args.drafts * (args.active + args.drafts - 1)
    print(f"{args.active} active + {args.drafts} drafts: {pairs} pairs, {findings} findings")
    print(f"cold (resolving every display): {cold:.1f} ms; warm median: {w:.2f} ms; bare loop median: {b:.3f} ms")
    print(f"warm / bare loop: {w / b:.0f}x")


if __name__ == "__main__":
    main()
