"""The curated drug vocabulary: ingredients, their RxNorm codes, names, brands and classes, as cited data.

What: `data/classes.csv` lists every therapeutic class and pharmacology tag (`id,kind,label,citation`), and
`data/ingredients.csv` every ingredient we recognise (`ingredient,rxcui,classes,synonyms,brands,citation`): a
lowercase INN/USAN id, its RxNorm ingredient (IN) code where known with confidence, `|`-separated class ids,
other spellings and abbreviations ("hctz", "apap"), US brands (a combination brand such as "bactrim" is listed
under each of its ingredients) and where the class memberships come from. `Vocabulary` answers the lookups the
resolver and the interaction rules need: by id, by RxNorm code, by normalised name, synonym or brand, the members
of a class and the classes of an ingredient.

Why as checked data: a wrong class membership produces a wrong safety card, so the table is reviewed by people and
every load checks it. `parse_vocabulary` raises `VocabularyError` naming the file, line and ingredient of the first
problem: an unknown class id, a duplicate or malformed ingredient id, a bad RxNorm code, a synonym or brand that
collides with another ingredient's name or synonym (two ingredients may share a brand only: combination
products). `load_vocabulary()` loads the packaged files once; the service calls it at start-up so that a broken
table stops the service rather than silently missing interactions.

Names are compared as token tuples (`name_tokens`): casefolded (which also undoes tall-man lettering such as
"hydrOXYzine"), accents and apostrophes removed, split into runs of letters and numbers, so that "St. John's Wort",
"st johns wort" and "ST-JOHNS-WORT" are one key.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from cds_service.core.errors import CdsError

CLASS_COLUMNS = ("id", "kind", "label", "citation")
INGREDIENT_COLUMNS = ("ingredient", "rxcui", "classes", "synonyms", "brands", "citation")
CLASS_KINDS = ("therapeutic", "pharmacology")

_CLASS_ID = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
_RXCUI = re.compile(r"[1-9][0-9]{0,8}")
# Runs of letters (any script, digits and underscore excluded) or numbers with an optional decimal part: linear.
_TOKEN = re.compile(r"[^\W\d_]+|\d+(?:[.,]\d+)?")
_APOSTROPHES = str.maketrans("", "", "'\u2019`")
# Single-token names at least this long are candidates for fuzzy matching (the resolver's bound is 1-2 edits on
# tokens of 6 letters or more, so no shorter word can be within reach).
FUZZY_MIN_KEY = 5


class VocabularyError(CdsError):
    """The drug vocabulary breaks its schema; the message names the file, line and ingredient."""


class MatchKind(StrEnum):
    """How an ingredient was recognised, strongest first."""

    CODE = "code"  # the RxNorm code of the ingredient
    NAME = "name"  # its INN/USAN id, word for word
    SYNONYM = "synonym"  # another spelling or abbreviation
    BRAND = "brand"  # a brand name
    FUZZY = "fuzzy"  # a misspelling within the resolver's edit bound


def name_tokens(text: str) -> tuple[str, ...]:
    """The comparison key of a name: casefolded letter and number runs, accents and apostrophes dropped."""
    folded = unicodedata.normalize("NFKD", text.casefold().translate(_APOSTROPHES))
    plain = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return tuple(_TOKEN.findall(plain))


def normalize_name(text: str) -> str:
    """`name_tokens` joined by single spaces: the form ingredient ids are written in."""
    return " ".join(name_tokens(text))


@dataclass(frozen=True, slots=True)
class DrugClass:
    id: str
    kind: str
    label: str
    citation: str


@dataclass(frozen=True, slots=True)
class Ingredient:
    id: str
    rxcui: str | None
    classes: frozenset[str]
    synonyms: tuple[str, ...]
    brands: tuple[str, ...]
    citation: str


@dataclass(frozen=True, slots=True)
class PhraseHit:
    """One vocabulary entry a name key stands for."""

    ingredient: str
    kind: MatchKind


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """The loaded vocabulary with its lookup indexes (read-only mappings)."""

    classes: Mapping[str, DrugClass]
    ingredients: Mapping[str, Ingredient]
    _by_rxcui: Mapping[str, str]
    _phrases: Mapping[tuple[str, ...], tuple[PhraseHit, ...]]
    _members: Mapping[str, tuple[str, ...]]
    _fuzzy_words: Mapping[int, tuple[tuple[str, str], ...]]
    known_words: frozenset[str]
    max_phrase_tokens: int

    def ingredient(self, ingredient_id: str) -> Ingredient | None:
        return self.ingredients.get(ingredient_id)

    def by_rxcui(self, rxcui: str) -> Ingredient | None:
        """The ingredient whose RxNorm ingredient (IN) code this is; None for product or unknown codes."""
        found = self._by_rxcui.get(rxcui.strip())
        return None if found is None else self.ingredients[found]

    def lookup(self, name: str) -> tuple[str, ...]:
        """Ingredient ids a name, synonym or brand stands for (several for a combination brand), else ()."""
        return tuple(hit.ingredient for hit in self.phrase_hits(name_tokens(name)))

    def phrase_hits(self, tokens: tuple[str, ...]) -> tuple[PhraseHit, ...]:
        """The entries an already tokenised name stands for."""
        return self._phrases.get(tokens, ())

    def members(self, class_id: str) -> tuple[str, ...]:
        """Ingredient ids in a class or tag, sorted; KeyError for an id classes.csv does not list."""
        if class_id not in self.classes:
            raise KeyError(f"unknown drug class {class_id!r}")
        return self._members.get(class_id, ())

    def classes_of(self, ingredient_id: str) -> frozenset[str]:
        """Class and tag ids of an ingredient; empty for an unknown one (the rules' `classes_of`)."""
        found = self.ingredients.get(ingredient_id)
        return frozenset() if found is None else found.classes

    def fuzzy_words(self, length: int) -> tuple[tuple[str, str], ...]:
        """(single-word name or synonym, ingredient id) pairs of a given length, for fuzzy matching."""
        return self._fuzzy_words.get(length, ())


# ---- loading and schema ---------------------------------------------------------------------------------------------


def _rows(text: str, source: str, columns: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or tuple(header) != columns:
        raise VocabularyError(f"{source}: header must be {','.join(columns)}, got {header}")
    for row in reader:
        if not row:
            continue
        if len(row) != len(columns):
            raise VocabularyError(f"{source} line {reader.line_num}: expected {len(columns)} fields, got {len(row)}")
        yield reader.line_num, row


def _parse_classes(text: str, source: str) -> dict[str, DrugClass]:
    classes: dict[str, DrugClass] = {}
    for line, (class_id, kind, label, citation) in _rows(text, source, CLASS_COLUMNS):
        where = f"{source} line {line} ({class_id or '?'})"
        if not class_id:
            raise VocabularyError(f"{where}: empty class id")
        if not _CLASS_ID.fullmatch(class_id):
            raise VocabularyError(f"{where}: class id must be lowercase words joined by _")
        if class_id in classes:
            raise VocabularyError(f"{where}: duplicate class id")
        if kind not in CLASS_KINDS:
            raise VocabularyError(f"{where}: kind must be one of {', '.join(CLASS_KINDS)}, got {kind!r}")
        if not label.strip() or not citation.strip():
            raise VocabularyError(f"{where}: empty label or citation")
        classes[class_id] = DrugClass(class_id, kind, label.strip(), citation.strip())
    if not classes:
        raise VocabularyError(f"{source}: no classes")
    return classes


def _split(cell: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in cell.split("|")) if cell.strip() else ()


def parse_vocabulary(
    classes_text: str,
    ingredients_text: str,
    *,
    classes_source: str = "classes.csv",
    ingredients_source: str = "ingredients.csv",
) -> Vocabulary:
    """Parse and schema-check both tables; `VocabularyError` names the first offending row."""
    classes = _parse_classes(classes_text, classes_source)
    ingredients: dict[str, Ingredient] = {}
    by_rxcui: dict[str, str] = {}
    phrases: dict[tuple[str, ...], list[PhraseHit]] = {}

    def add_phrase(where: str, owner: str, text: str, kind: MatchKind) -> None:
        key = name_tokens(text)
        if not key or all(token[0].isdigit() for token in key):
            raise VocabularyError(f"{where}: {kind.value} {text!r} has no letters")
        hits = phrases.setdefault(key, [])
        for hit in hits:
            if hit.ingredient == owner:
                raise VocabularyError(f"{where}: {kind.value} {text!r} repeats its own {hit.kind.value}")
            if not (kind is MatchKind.BRAND and hit.kind is MatchKind.BRAND):
                raise VocabularyError(
                    f"{where}: {kind.value} {text!r} collides with the {hit.kind.value} of {hit.ingredient!r}"
                )
        hits.append(PhraseHit(owner, kind))

    for line, (name, rxcui, class_cell, synonym_cell, brand_cell, citation) in _rows(
        ingredients_text, ingredients_source, INGREDIENT_COLUMNS
    ):
        where = f"{ingredients_source} line {line} ({name or '?'})"
        if not name:
            raise VocabularyError(f"{where}: empty ingredient id")
        if normalize_name(name) != name:
            raise VocabularyError(f"{where}: ingredient id must be lowercase words joined by single spaces")
        if name in ingredients:
            raise VocabularyError(f"{where}: duplicate ingredient")
        code = rxcui.strip()
        if code:
            if not _RXCUI.fullmatch(code):
                raise VocabularyError(f"{where}: rxcui {rxcui!r} is not an RxNorm code (1-9 digits)")
            if code in by_rxcui:
                raise VocabularyError(f"{where}: rxcui {code} is already {by_rxcui[code]!r}")
            by_rxcui[code] = name
        class_ids = _split(class_cell)
        unknown = [c for c in class_ids if c not in classes]
        if unknown:
            raise VocabularyError(f"{where}: unknown class id(s) {', '.join(map(repr, unknown))}")
        if len(set(class_ids)) != len(class_ids):
            raise VocabularyError(f"{where}: a class is listed twice")
        if class_ids and not citation.strip():
            raise VocabularyError(f"{where}: classes without a citation")
        synonyms, brands = _split(synonym_cell), _split(brand_cell)
        if any(not item for item in (*synonyms, *brands)):
            raise VocabularyError(f"{where}: empty synonym or brand")
        add_phrase(where, name, name, MatchKind.NAME)
        for synonym in synonyms:
            add_phrase(where, name, synonym, MatchKind.SYNONYM)
        for brand in brands:
            add_phrase(where, name, brand, MatchKind.BRAND)
        ingredients[name] = Ingredient(
            id=name,
            rxcui=code or None,
            classes=frozenset(class_ids),
            synonyms=synonyms,
            brands=brands,
            citation=citation.strip(),
        )
    if not ingredients:
        raise VocabularyError(f"{ingredients_source}: no ingredients")

    members: dict[str, list[str]] = {}
    for ingredient in ingredients.values():
        for class_id in ingredient.classes:
            members.setdefault(class_id, []).append(ingredient.id)
    fuzzy: dict[int, list[tuple[str, str]]] = {}
    for key, hits in phrases.items():
        if len(key) == 1 and len(key[0]) >= FUZZY_MIN_KEY and key[0].isalpha():
            for hit in hits:
                if hit.kind in (MatchKind.NAME, MatchKind.SYNONYM):
                    fuzzy.setdefault(len(key[0]), []).append((key[0], hit.ingredient))
    return Vocabulary(
        classes=MappingProxyType(classes),
        ingredients=MappingProxyType(ingredients),
        _by_rxcui=MappingProxyType(by_rxcui),
        _phrases=MappingProxyType({key: tuple(hits) for key, hits in phrases.items()}),
        _members=MappingProxyType({c: tuple(sorted(ids)) for c, ids in members.items()}),
        _fuzzy_words=MappingProxyType({n: tuple(sorted(words)) for n, words in fuzzy.items()}),
        known_words=frozenset(token for key in phrases for token in key),
        max_phrase_tokens=max(len(key) for key in phrases),
    )


def load_vocabulary_from(classes_path: Path, ingredients_path: Path) -> Vocabulary:
    """A vocabulary read from two CSV files (not cached): for tests and for reviewing a changed table."""
    return parse_vocabulary(
        classes_path.read_text(encoding="utf-8"),
        ingredients_path.read_text(encoding="utf-8"),
        classes_source=str(classes_path),
        ingredients_source=str(ingredients_path),
    )


def _packaged_text(name: str) -> str:
    return resources.files("cds_service.drugs").joinpath("data", name).read_text(encoding="utf-8")


@cache
def load_vocabulary() -> Vocabulary:
    """The packaged vocabulary, loaded and checked once per process (call it at start-up to fail early)."""
    return parse_vocabulary(_packaged_text("classes.csv"), _packaged_text("ingredients.csv"))
