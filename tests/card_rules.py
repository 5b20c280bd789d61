"""The CDS Hooks 2.0 rules for a card, checked on the JSON an EHR receives (independent of our models)."""

from __future__ import annotations

from typing import Any

INDICATORS = {"info", "warning", "critical"}


def _empty_members(value: Any, path: str) -> list[str]:
    problems = []
    if value is None or value == "" or value == [] or value == {}:
        problems.append(f"{path}: null or empty")
    elif isinstance(value, dict):
        for k, v in value.items():
            problems += _empty_members(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            problems += _empty_members(v, f"{path}[{i}]")
    return problems


def card_problems(card: dict[str, Any]) -> list[str]:
    problems = _empty_members(card, "card")
    summary = card.get("summary")
    if not isinstance(summary, str) or not summary or len(summary) >= 140:
        problems.append("summary missing or 140+ characters")
    if card.get("indicator") not in INDICATORS:
        problems.append("indicator not info|warning|critical")
    source = card.get("source") or {}
    if not source.get("label"):
        problems.append("source.label missing")
    if not source.get("url") or not source.get("topic"):
        problems.append("source.url or source.topic missing (our own rule)")
    if not card.get("uuid"):
        problems.append("uuid missing")
    suggestions = card.get("suggestions") or []
    if suggestions and card.get("selectionBehavior") not in ("at-most-one", "any"):
        problems.append("selectionBehavior missing with suggestions")
    for s in suggestions:
        if not s.get("uuid") or not s.get("label"):
            problems.append("suggestion without uuid or label")
        for a in s.get("actions") or []:
            if a.get("type") not in ("create", "update", "delete") or not a.get("description"):
                problems.append("action type/description invalid")
            if a.get("type") == "delete" and not a.get("resourceId"):
                problems.append("delete action without resourceId")
            if a.get("type") in ("create", "update") and not isinstance(a.get("resource"), dict):
                problems.append("create/update action without resource")
    for reason in card.get("overrideReasons") or []:
        if not reason.get("display") or not reason.get("code"):
            problems.append("override reason without code and display")
    if "<" in (card.get("detail") or "").replace("&lt;", ""):
        problems.append("raw HTML in detail")
    return problems
