"""Defensive access to the few FHIR elements we use, on plain dicts (any field may be missing or wrong)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from typing import Any

log = logging.getLogger(__name__)

Resource = dict[str, Any]

# Short, stable prefixes for the code systems we tokenise; the token keeps its system so that
# SNOMED 44054006 and ICD-10-CM E11.9 can never collide.
SYSTEM_PREFIXES = {
    "http://snomed.info/sct": "SNOMED",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RXNORM",
    "http://loinc.org": "LOINC",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode": "ACTCODE",
}
PREFIX_SYSTEMS = {v: k for k, v in SYSTEM_PREFIXES.items()}


def codings(concept: Any) -> list[dict[str, Any]]:
    """The Coding list of a CodeableConcept, or [] for anything malformed."""
    if not isinstance(concept, dict):
        return []
    found = concept.get("coding")
    return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []


def code_token(concept: Any) -> tuple[str, str] | None:
    """(token, display) of the first coding in a known system, e.g. ("SNOMED/44054006", "Diabetes ...")."""
    fallback: tuple[str, str] | None = None
    for coding in codings(concept):
        code, system = coding.get("code"), coding.get("system")
        if not isinstance(code, str) or not code:
            continue
        display = coding.get("display") if isinstance(coding.get("display"), str) else ""
        prefix = SYSTEM_PREFIXES.get(system) if isinstance(system, str) else None
        if prefix:
            return f"{prefix}/{code}", str(display or concept.get("text") or code)
        if fallback is None and isinstance(system, str):
            fallback = (f"OTHER/{system.rsplit('/', 1)[-1]}|{code}", str(display or code))
    text = concept.get("text") if isinstance(concept, dict) else None
    if fallback is None and isinstance(text, str) and text.strip():
        # uncoded orders ("IV normal saline") still say something; keep them as free-text tokens
        fallback = (f"TEXT/{' '.join(text.lower().split())[:80]}", text.strip())
    return fallback


def token_system_url(token: str) -> str | None:
    return PREFIX_SYSTEMS.get(token.split("/", 1)[0])


def parse_datetime(value: Any) -> datetime | None:
    """A FHIR date or dateTime as an aware UTC datetime (partial dates fall on their first day)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    text = value.strip().replace("Z", "+00:00")
    try:
        if len(text) == 4:
            parsed = datetime(int(text), 1, 1)
        elif len(text) == 7:
            parsed = datetime(int(text[:4]), int(text[5:7]), 1)
        elif len(text) == 10:
            parsed = datetime.combine(date.fromisoformat(text), datetime.min.time())
        else:
            parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def first_datetime(resource: Resource, *paths: str) -> datetime | None:
    """The first parseable date among dotted paths such as "effectivePeriod.start"."""
    for path in paths:
        node: Any = resource
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        found = parse_datetime(node)
        if found is not None:
            return found
    return None


def reference_of(resource: Resource) -> str:
    """`Type/id` of a resource: the form every piece of card evidence points at."""
    return f"{resource.get('resourceType')}/{resource.get('id', '')}"


def reference_target(ref: Any) -> str | None:
    """The `reference` string inside a Reference element, if any."""
    if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
        return str(ref["reference"])
    return None


INVALID_CONDITION = {"entered-in-error", "refuted"}


def status_codes(resource: dict[str, Any], element: str) -> set[str]:
    """The codes of a status CodeableConcept (`clinicalStatus`, `verificationStatus`); empty if malformed."""
    return {str(c.get("code")) for c in codings(resource.get(element))}


def encounter_id_of(resource: dict[str, Any]) -> str | None:
    """The id of the encounter a resource was recorded at (R4 `encounter`, STU3 `context`)."""
    return ref_id(reference_target(resource.get("encounter")) or reference_target(resource.get("context")))


def condition_tokens(resources: list[dict[str, Any]], encounter_id: str | None = None) -> list[str]:
    """Tokens of the patient's (valid) conditions; with `encounter_id`, only those recorded at it."""
    out = []
    for r in resources:
        if r.get("resourceType") != "Condition" or status_codes(r, "verificationStatus") & INVALID_CONDITION:
            continue
        if encounter_id is not None and encounter_id_of(r) != encounter_id:
            continue
        coded = code_token(r.get("code"))
        if coded:
            out.append(coded[0])
    return list(dict.fromkeys(out))


def ref_id(reference: str | None) -> str | None:
    """The id a reference points at, whether written `Type/id`, `urn:uuid:id` or an absolute URL."""
    if not reference:
        return None
    if reference.startswith("urn:uuid:"):
        return reference[len("urn:uuid:") :]
    tail = reference.rstrip("/").rsplit("/", 1)[-1]
    return tail or None
