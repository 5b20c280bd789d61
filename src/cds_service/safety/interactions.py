"""The cited drug-interaction table (`drug_interactions.csv`) and ingredient matching by drug name.

RxNorm codes reach us with display names ("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG",
"Warfarin (Coumadin)"), and no RxNorm server is reachable at run time, so a drug maps to the table's
ingredients by whole-word matches of ingredient names (and a few brand names) in its display.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from itertools import combinations

SEVERITIES = ("moderate", "major", "contraindicated")  # ascending
# Brand or class names that appear without the ingredient in generator output.
SYNONYMS = {
    "bactrim": ("sulfamethoxazole", "trimethoprim"),
    "coumadin": ("warfarin",),
    "eliquis": ("apixaban",),
    "lovenox": ("enoxaparin",),
    "plavix": ("clopidogrel",),
    "humulin": ("insulin",),
}


@dataclass(frozen=True, slots=True)
class Interaction:
    ingredient_a: str
    ingredient_b: str
    severity: str
    mechanism: str
    source: str


@lru_cache(maxsize=1)
def interaction_table() -> dict[frozenset[str], Interaction]:
    text = resources.files("cds_service.safety").joinpath("drug_interactions.csv").read_text(encoding="utf-8")
    table: dict[frozenset[str], Interaction] = {}
    for row in csv.DictReader(text.splitlines()):
        item = Interaction(row["ingredient_a"], row["ingredient_b"], row["severity"], row["mechanism"], row["source"])
        if item.severity not in SEVERITIES or not item.source:
            raise ValueError(f"drug_interactions.csv: bad row for {item.ingredient_a}/{item.ingredient_b}")
        table[frozenset((item.ingredient_a, item.ingredient_b))] = item
    return table


@lru_cache(maxsize=1)
def _ingredient_pattern() -> re.Pattern[str]:
    names = {name for pair in interaction_table() for name in pair} | set(SYNONYMS)
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"\b({alternatives})\b", re.IGNORECASE)


@lru_cache(maxsize=4096)
def ingredients_of(drug_name: str) -> frozenset[str]:
    """Table ingredients named in a drug's display text (only those the table knows)."""
    found: set[str] = set()
    for match in _ingredient_pattern().finditer(drug_name):
        name = match.group(1).lower()
        found.update(SYNONYMS.get(name, (name,)))
    return frozenset(found)


def interactions_between(drug_a: str, drug_b: str) -> list[Interaction]:
    table = interaction_table()
    found = {
        table[frozenset((x, y))]
        for x in ingredients_of(drug_a)
        for y in ingredients_of(drug_b)
        if x != y and frozenset((x, y)) in table
    }
    return sorted(found, key=lambda i: (-SEVERITIES.index(i.severity), i.ingredient_a, i.ingredient_b))


def interacting_pairs(drug_names: Iterable[str]) -> list[tuple[str, str, Interaction]]:
    """Every interacting pair among a set of drugs (each pair once, with its most severe interaction)."""
    out = []
    for a, b in combinations(sorted(set(drug_names)), 2):
        found = interactions_between(a, b)
        if found:
            out.append((a, b, found[0]))
    return out
