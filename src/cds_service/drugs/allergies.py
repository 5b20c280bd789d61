"""Allergy classes as EHRs record them ("Penicillins", "Sulfa drugs", "NSAIDs"), and their cross-reactivity.

`data/allergy_classes.csv` maps a recorded class phrase to a class of the vocabulary, plus the classes that
cross-react with it (a warning, not a critical card: the evidence is weaker) with a one-line note and a
citation. An allergy recorded as an ingredient also covers the other members of that ingredient's
allergy class (an amoxicillin allergy warns on ampicillin), with the same cross-reactivity.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib import resources

from cds_service.drugs.vocabulary import Vocabulary, VocabularyError, normalize_name


@dataclass(frozen=True, slots=True)
class AllergyClass:
    phrase: str  # normalised
    drug_class: str
    cross_reactive: frozenset[str]
    note: str
    citation: str


def parse_allergy_classes(text: str, vocabulary: Vocabulary) -> dict[str, AllergyClass]:
    out: dict[str, AllergyClass] = {}
    for line, row in enumerate(csv.DictReader(text.splitlines()), start=2):
        cross = frozenset(c for c in row["cross_reactive"].split("|") if c)
        unknown = sorted(({row["class"]} | cross) - set(vocabulary.classes))
        if unknown or not row["citation"] or not row["phrase"]:
            raise VocabularyError(f"allergy_classes.csv line {line}: unknown class {unknown} or no phrase/citation")
        phrase = normalize_name(row["phrase"])
        out[phrase] = AllergyClass(phrase, row["class"], cross, row["note"], row["citation"])
    return out


@cache
def allergy_classes(vocabulary: Vocabulary) -> dict[str, AllergyClass]:
    text = resources.files("cds_service.drugs").joinpath("data/allergy_classes.csv").read_text(encoding="utf-8")
    return parse_allergy_classes(text, vocabulary)


def class_of_allergy(vocabulary: Vocabulary, ingredient: str) -> AllergyClass | None:
    """The allergy class an ingredient belongs to (its first therapeutic class with an allergy entry)."""
    by_class = {c.drug_class: c for c in allergy_classes(vocabulary).values()}
    return next((by_class[c] for c in sorted(vocabulary.classes_of(ingredient)) if c in by_class), None)
