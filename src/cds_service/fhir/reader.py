"""Lenient reading of FHIR R4 JSON from files: Bundles, bulk-export NDJSON and single resources.

The world sends messy FHIR: Bundles without `type`, resources of older FHIR versions, unknown
fields, broken files. Nothing here raises on one bad resource or one bad file: problems are
counted in a `ReadReport` (by kind, with a short message that names the file and the resource
type, never patient data) and reading goes on.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cds_service.fhir.versions import classify_resource_type

log = logging.getLogger(__name__)

Resource = dict[str, Any]

FHIR_FILE_SUFFIXES = (".json", ".ndjson", ".ndjson.gz", ".json.gz")
MAX_REPORTED_MESSAGES = 200


@dataclass
class ReadReport:
    """What was read and what was skipped, so that a caller can say so instead of crashing."""

    files: int = 0
    resources: int = 0
    warnings: Counter[str] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def warn(self, kind: str, message: str) -> None:
        self.warnings[kind] += 1
        if len(self.messages) < MAX_REPORTED_MESSAGES:
            self.messages.append(f"{kind}: {message}")
        log.debug("fhir input skipped: %s", kind)

    def merge(self, other: ReadReport) -> None:
        self.files += other.files
        self.resources += other.resources
        self.warnings.update(other.warnings)
        room = MAX_REPORTED_MESSAGES - len(self.messages)
        self.messages.extend(other.messages[: max(room, 0)])

    def summary(self) -> str:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.warnings.items())) or "none"
        return f"{self.files} files, {self.resources} resources read; skipped: {skipped}"


def fhir_files(path: Path) -> list[Path]:
    """The FHIR files under `path` (or `path` itself), in a stable order."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or directory: {path}")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(FHIR_FILE_SUFFIXES))


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return raw.decode("utf-8-sig")


def iter_file_resources(path: Path, report: ReadReport) -> Iterator[Resource]:
    """Resources in one file. An unreadable file adds a warning and yields nothing."""
    report.files += 1
    try:
        text = read_text(path)
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        report.warn("unreadable-file", f"{path.name}: {type(exc).__name__}")
        return
    if not text.strip():
        report.warn("empty-file", f"{path.name}: file is empty")
        return
    if path.name.endswith((".ndjson", ".ndjson.gz")):
        yield from _iter_ndjson(text, path.name, report)
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        report.warn("invalid-json", f"{path.name}: line {exc.lineno} column {exc.colno}: {exc.msg}")
        return
    yield from iter_document_resources(doc, report, origin=path.name)


def _iter_ndjson(text: str, origin: str, report: ReadReport) -> Iterator[Resource]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as exc:
            report.warn("invalid-json", f"{origin}: line {lineno}: {exc.msg}")
            continue
        yield from iter_document_resources(doc, report, origin=f"{origin}:{lineno}")


def iter_document_resources(doc: Any, report: ReadReport, origin: str = "input") -> Iterator[Resource]:
    """Resources in a parsed JSON document: a Bundle (any type, or none) is unpacked recursively."""
    if not isinstance(doc, dict):
        report.warn("not-a-resource", f"{origin}: expected a JSON object, got {type(doc).__name__}")
        return
    rtype = doc.get("resourceType")
    if not isinstance(rtype, str):
        report.warn("not-a-resource", f"{origin}: object has no resourceType")
        return
    if rtype == "Bundle":
        yield from _iter_bundle(doc, report, origin)
        return
    kind = classify_resource_type(rtype)
    if kind != "r4":
        report.warn(f"{kind}-resource", f"{origin}: {rtype} is not an R4 resource type")
        return
    report.resources += 1
    yield doc


def _iter_bundle(bundle: Resource, report: ReadReport, origin: str) -> Iterator[Resource]:
    if "type" not in bundle:
        # CDS clients send Bundles without the required `type`; read them anyway, but say so.
        report.warn("bundle-without-type", f"{origin}: Bundle has no type; read as a collection")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        report.warn("malformed-bundle", f"{origin}: Bundle.entry is not a list")
        return
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if resource is None:
            report.warn("malformed-bundle", f"{origin}: entry[{i}] has no resource")
            continue
        yield from iter_document_resources(resource, report, origin=f"{origin}#entry[{i}]")


def iter_path_resources(paths: Iterable[Path], report: ReadReport) -> Iterator[Resource]:
    for root in paths:
        for path in fhir_files(root):
            yield from iter_file_resources(path, report)
