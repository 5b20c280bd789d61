"""Bundle access on plain JSON: the resources of a Bundle's entries and its `next` link (pagination)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """Resources of a Bundle's entries, skipping malformed entries and OperationOutcome search notes."""
    out: list[dict[str, Any]] = []
    raw = bundle.get("entry")
    if not isinstance(raw, list):  # absent, or malformed (a number, an object): no resources, never a crash
        return out
    for entry in raw:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            search = entry.get("search")
            if isinstance(search, dict) and search.get("mode") == "outcome":
                continue
            out.append(resource)
    return out


def next_link(bundle: dict[str, Any]) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None
