"""Indications as data: which recorded conditions make a drug a sensible suggestion.

A model that recommends propranolol and topiramate to a patient with no migraine has learned who gets those
drugs in its training population, not why. So a medication recommendation is shown only when the record
holds an active condition that is an indication for it (`safety.indications` looks it up), and the card names
that condition. Each row of `data/indications.csv` links a drug (ingredient id or `class:<id>`) to condition
codes (`snomed:<id>` exact, `icd10:<prefix>` for the code and all below it) and to whole-word keywords for
records coded in other systems, with a citation (the FDA label's Indications section, or a guideline for
established off-label use). A drug without a row is never recommended: silence beats a guess.
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

from cds_service.drugs.context import Criterion

COLUMNS = ("id", "drug", "condition_codes", "keywords", "citation")
ROW_ID = re.compile(r"[a-z0-9][a-z0-9_-]*")
CODE = re.compile(r"(snomed:\d+|icd10:[A-Z]\d[0-9A-Z.]*)")


class IndicationSchemaError(ValueError):
    """An indications file that breaks its schema; the message names the row."""


@dataclass(frozen=True, slots=True)
class Indication:
    id: str
    drug: str  # ingredient id or class:<id>
    conditions: Criterion  # kind "condition": codes and keywords
    citation: str


def parse_indications(text: str, source: str = "indications.csv") -> tuple[Indication, ...]:
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise IndicationSchemaError(f"{source}: header must be {','.join(COLUMNS)}, got {reader.fieldnames}")
    out: list[Indication] = []
    seen: set[str] = set()
    for row in reader:
        where = f"{source} line {reader.line_num} (id={row.get('id') or '?'})"
        if None in row or any(value is None for value in row.values()):
            raise IndicationSchemaError(f"{where}: expected {len(COLUMNS)} fields")
        row = {key: value.strip() for key, value in row.items()}
        if not ROW_ID.fullmatch(row["id"]) or row["id"] in seen:
            raise IndicationSchemaError(f"{where}: id must be unique lowercase words joined by - or _")
        seen.add(row["id"])
        codes = tuple(c.strip() for c in row["condition_codes"].split("|") if c.strip())
        bad = [c for c in codes if not CODE.fullmatch(c)]
        if bad:
            raise IndicationSchemaError(f"{where}: condition codes must be snomed:<digits> or icd10:<code>, got {bad}")
        keywords = tuple(k.strip().lower() for k in row["keywords"].split("|") if k.strip())
        if not codes and not keywords:
            raise IndicationSchemaError(f"{where}: an indication needs condition codes or keywords")
        if not row["drug"] or not row["citation"]:
            raise IndicationSchemaError(f"{where}: empty drug or citation")
        out.append(Indication(row["id"], row["drug"], Criterion("condition", codes, keywords), row["citation"]))
    return tuple(out)


@cache
def _packaged() -> tuple[Indication, ...]:
    text = resources.files("cds_service.drugs").joinpath("data", "indications.csv").read_text(encoding="utf-8")
    return parse_indications(text)


def load_indications(path: Path | None = None) -> tuple[Indication, ...]:
    """The packaged indications (cached), or those of the CSV at `path`."""
    if path is None:
        return _packaged()
    return parse_indications(path.read_text(encoding="utf-8"), source=str(path))


def by_drug(indications: tuple[Indication, ...]) -> Mapping[str, tuple[Indication, ...]]:
    index: dict[str, list[Indication]] = {}
    for indication in indications:
        index.setdefault(indication.drug, []).append(indication)
    return {drug: tuple(rows) for drug, rows in index.items()}
