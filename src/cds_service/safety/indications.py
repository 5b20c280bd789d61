"""Is there an active indication in the record for a drug? (`drugs.indications` holds the cited table.)

A condition counts when it is valid (not refuted or entered in error) and active: `clinicalStatus` active,
recurrence or relapse, or absent (many problem lists leave it out). Where several match, the most recently
recorded one is named on the card, with its date.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cds_service.drugs.knowledge import load_knowledge
from cds_service.fhir.elements import INVALID_CONDITION, Resource, first_datetime, reference_of, status_codes
from cds_service.safety.context import concept_codes, concept_texts, condition_matches
from cds_service.safety.interactions import ingredients_of

ACTIVE = {"active", "recurrence", "relapse"}


@dataclass(frozen=True, slots=True)
class IndicationFound:
    reference: str  # "Condition/abc"
    display: str
    recorded: datetime | None
    rule_id: str
    citation: str


def _active(condition: Resource) -> bool:
    if status_codes(condition, "verificationStatus") & INVALID_CONDITION:
        return False
    clinical = status_codes(condition, "clinicalStatus")
    return not clinical or bool(clinical & ACTIVE)


def _display(condition: Resource) -> str:
    code = condition.get("code")
    if isinstance(code, dict) and isinstance(code.get("text"), str) and code["text"].strip():
        return str(code["text"]).strip()[:200]
    for coding in code.get("coding", []) if isinstance(code, dict) and isinstance(code.get("coding"), list) else []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            return str(coding["display"]).strip()[:200]
    return "a recorded condition"


def indication_for(drug_name: str, resources: Sequence[Resource], rxcui: str | None = None) -> IndicationFound | None:
    """The most recently recorded active condition of the record that indicates the drug, or None."""
    knowledge = load_knowledge()
    ingredients = ingredients_of(drug_name, rxcui)
    keys = set(ingredients) | {f"class:{c}" for i in ingredients for c in knowledge.classes_of(i)}
    rules = [r for r in knowledge.indications if r.drug in keys]
    if not rules:
        return None
    best: tuple[float, IndicationFound] | None = None
    for r in resources:
        if r.get("resourceType") != "Condition" or not _active(r):
            continue
        codes, texts = concept_codes(r.get("code")), concept_texts(r.get("code"))
        rule = next((x for x in rules if condition_matches(x.conditions, codes, texts)), None)
        if rule is None:
            continue
        when = first_datetime(r, "onsetDateTime", "recordedDate", "onsetPeriod.start")
        found = IndicationFound(reference_of(r), _display(r), when, rule.id, rule.citation)
        stamp = when.timestamp() if when else float("-inf")
        if best is None or stamp > best[0]:
            best = (stamp, found)
    return best[1] if best else None
