"""Contextual factors of interaction rules, as data: what in a patient's record raises or lowers the risk
of an interaction, or is worth reviewing before the order goes ahead.

The HL7 PDDI CDS guide's exemplars are contextual (warfarin + NSAID: age, gastroprotection, corticosteroid,
aldosterone antagonist, GI-bleeding history; digoxin + cyclosporine: digoxin level, electrolytes, renal
function, diuretics). A rule lists its factors by name (`interaction_rules.csv`, column `context`); each
factor is defined here by one or more rows of `data/context_factors.csv`, any of which makes it present:

- `age`: the patient's age against `threshold` (`>=65`);
- `condition`: a Condition coded in `codes` (`icd10:K25` matches K25 and every code under it; `snomed:` is
  exact) or whose text holds one of `keywords` as whole words;
- `drug`: another drug the patient takes, of a class (`class:ppi`) or ingredient (`misoprostol`) in `codes`;
- `observation`: the latest Observation coded in `codes` (LOINC) or named by `keywords`; with a `threshold`
  (`<60`) the factor is present when the value crosses it, without one (`review` factors) it is shown.

`effect` says how a present factor changes the advice: `raises`, `lowers`, or `review` (shown with its value,
or as missing). Evaluation against a record is `safety.context`; this module only loads and checks.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType

COLUMNS = ("factor", "effect", "label", "kind", "codes", "keywords", "threshold", "citation")
EFFECTS = ("raises", "lowers", "review")
KINDS = ("age", "condition", "drug", "observation")
CODE_SYSTEMS = {"age": (), "condition": ("icd10", "snomed"), "drug": (), "observation": ("loinc",)}
THRESHOLD = re.compile(r"(<=|>=|<|>)\s*(\d+(?:\.\d+)?)")
FACTOR_ID = re.compile(r"[a-z][a-z0-9_]*")


class ContextSchemaError(ValueError):
    """A context factor file that breaks its schema; the message names the row."""


@dataclass(frozen=True, slots=True)
class Criterion:
    """One way a factor can be present in a record."""

    kind: str
    codes: tuple[str, ...]  # "icd10:K25", "snomed:74474003", "loinc:2823-3", "class:ppi", "misoprostol"
    keywords: tuple[str, ...]
    comparator: str | None = None  # "<", "<=", ">", ">=" with `limit`
    limit: float | None = None

    def crosses(self, value: float) -> bool:
        if self.comparator is None or self.limit is None:
            return True
        return {
            "<": value < self.limit,
            "<=": value <= self.limit,
            ">": value > self.limit,
            ">=": value >= self.limit,
        }[self.comparator]


@dataclass(frozen=True, slots=True)
class ContextFactor:
    id: str
    effect: str  # raises | lowers | review
    label: str  # what the card says when the factor is present ("patient aged 65 or older")
    criteria: tuple[Criterion, ...]
    citation: str

    def drug_codes(self) -> tuple[str, ...]:
        return tuple(code for c in self.criteria if c.kind == "drug" for code in c.codes)


def _threshold(value: str, where: str) -> tuple[str | None, float | None]:
    if not value:
        return None, None
    match = THRESHOLD.fullmatch(value)
    if not match:
        raise ContextSchemaError(f"{where}: threshold must look like <60 or >=65, got {value!r}")
    return match.group(1), float(match.group(2))


def _criterion(row: dict[str, str], where: str) -> Criterion:
    kind = row["kind"]
    if kind not in KINDS:
        raise ContextSchemaError(f"{where}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    codes = tuple(c.strip() for c in row["codes"].split("|") if c.strip())
    keywords = tuple(k.strip().lower() for k in row["keywords"].split("|") if k.strip())
    for code in codes:
        system = code.split(":", 1)[0] if ":" in code else None
        if kind == "drug":
            if system not in (None, "class"):
                raise ContextSchemaError(f"{where}: drug codes are ingredients or class:<id>, got {code!r}")
        elif system not in CODE_SYSTEMS[kind] or not code.split(":", 1)[1]:
            raise ContextSchemaError(f"{where}: {kind} code {code!r} must be one of {CODE_SYSTEMS[kind]}:<code>")
    comparator, limit = _threshold(row["threshold"], where)
    if kind == "age" and comparator is None:
        raise ContextSchemaError(f"{where}: an age factor needs a threshold")
    if kind in ("condition", "drug", "observation") and not codes and not keywords:
        raise ContextSchemaError(f"{where}: a {kind} factor needs codes or keywords")
    return Criterion(kind, codes, keywords, comparator, limit)


def parse_context_factors(text: str, source: str = "context_factors.csv") -> Mapping[str, ContextFactor]:
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ContextSchemaError(f"{source}: header must be {','.join(COLUMNS)}, got {reader.fieldnames}")
    rows: dict[str, list[tuple[dict[str, str], str]]] = {}
    for row in reader:
        where = f"{source} line {reader.line_num} (factor={row.get('factor') or '?'})"
        if None in row or any(value is None for value in row.values()):
            raise ContextSchemaError(f"{where}: expected {len(COLUMNS)} fields")
        row = {key: value.strip() for key, value in row.items()}
        if not FACTOR_ID.fullmatch(row["factor"]):
            raise ContextSchemaError(f"{where}: factor must be a lowercase snake_case id")
        if row["effect"] not in EFFECTS:
            raise ContextSchemaError(f"{where}: unknown effect {row['effect']!r} (one of {', '.join(EFFECTS)})")
        for column in ("label", "citation"):
            if not row[column]:
                raise ContextSchemaError(f"{where}: empty {column}")
        rows.setdefault(row["factor"], []).append((row, where))
    factors: dict[str, ContextFactor] = {}
    for factor, group in rows.items():
        first, where = group[0]
        for row, row_where in group[1:]:
            if (row["effect"], row["label"]) != (first["effect"], first["label"]):
                raise ContextSchemaError(f"{row_where}: every row of a factor has the same effect and label")
        criteria = tuple(_criterion(row, row_where) for row, row_where in group)
        citation = "; ".join(dict.fromkeys(row["citation"] for row, _ in group))
        factors[factor] = ContextFactor(factor, first["effect"], first["label"], criteria, citation)
    return MappingProxyType(factors)


@cache
def _packaged() -> Mapping[str, ContextFactor]:
    text = resources.files("cds_service.drugs").joinpath("data", "context_factors.csv").read_text(encoding="utf-8")
    return parse_context_factors(text)


def load_context_factors(path: Path | None = None) -> Mapping[str, ContextFactor]:
    """The packaged factors (cached), or those of the CSV at `path`."""
    if path is None:
        return _packaged()
    return parse_context_factors(path.read_text(encoding="utf-8"), source=str(path))
