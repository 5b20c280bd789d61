"""Rule-based checks of draft medication orders: interactions, allergies, duplicate therapy.

These need no model, so they always run first and reach the clinician even when scoring misses its
deadline. Drugs are matched by name (see `interactions.py`); allergy matching is by substance name only
(no cross-reactivity classes such as penicillins/cephalosporins), which the README states as a limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cds_service.fhir.elements import code_token
from cds_service.fhir.medications import medication_concept, medication_index, medication_reference_display
from cds_service.safety.interactions import Interaction, ingredients_of, interactions_between

ACTIVE_MED_STATUSES = {"active", "on-hold"}
GENERIC_WORDS = {
    "allergy",
    "allergic",
    "to",
    "drug",
    "medication",
    "product",
    "substance",
    "intolerance",
    "oral",
    "tablet",
    "capsule",
    "injection",
    "solution",
    "and",
    "of",
    "the",
    "mg",
    "ml",
}


@dataclass(frozen=True)
class Drug:
    reference: str  # "MedicationRequest/abc"
    name: str
    token: str | None  # "RXNORM/123"


@dataclass(frozen=True)
class InteractionFinding:
    draft: Drug
    other: Drug
    other_is_draft: bool
    interaction: Interaction


@dataclass(frozen=True)
class AllergyFinding:
    draft: Drug
    allergy: str  # "AllergyIntolerance/xyz"
    substance: str
    criticality: str | None


@dataclass(frozen=True)
class DuplicateFinding:
    draft: Drug
    active: Drug
    shared: tuple[str, ...]


def _concept_name(concept: Any) -> tuple[str, str | None]:
    if not isinstance(concept, dict):
        return "", None
    coded = code_token(concept)
    name = concept.get("text") or (coded[1] if coded else "")
    return str(name or ""), coded[0] if coded else None


def drug_of(resource: dict[str, Any], medications: dict[str, dict[str, Any]]) -> Drug | None:
    """The drug a MedicationRequest orders (inline concept, or a referenced/contained Medication)."""
    if resource.get("resourceType") != "MedicationRequest" or not resource.get("id"):
        return None
    name, token = _concept_name(medication_concept(resource, medications))
    name = name or medication_reference_display(resource)
    return Drug(f"MedicationRequest/{resource['id']}", name, token) if name else None


def active_drugs(resources: list[dict[str, Any]], exclude: set[str]) -> list[Drug]:
    medications = medication_index(resources)
    out = []
    for r in resources:
        if r.get("resourceType") == "MedicationRequest" and r.get("status") in ACTIVE_MED_STATUSES:
            drug = drug_of(r, medications)
            if drug is not None and drug.reference not in exclude:
                out.append(drug)
    return out


def drug_words(name: str) -> set[str]:
    """Ingredient names of a drug display: table ingredients, plus each component's leading words."""
    words = set(ingredients_of(name))
    for part in name.lower().split(" / "):
        lead = re.match(r"\s*([a-z][a-z \-]*?)\s*(\d|\[|\(|$)", part)
        if lead and lead.group(1) and lead.group(1) not in GENERIC_WORDS:
            words.add(lead.group(1).strip())
    return words


def check_interactions(drafts: list[Drug], others: list[Drug], all_drafts: list[Drug]) -> list[InteractionFinding]:
    found = []
    for draft in drafts:
        candidates = [(o, False) for o in others] + [(d, True) for d in all_drafts if d.reference != draft.reference]
        for other, is_draft in candidates:
            hits = interactions_between(draft.name, other.name)
            if hits:
                found.append(InteractionFinding(draft, other, is_draft, hits[0]))
    return found


def _allergy_substances(allergy: dict[str, Any]) -> list[str]:
    names = [_concept_name(allergy.get("code"))[0]]
    for reaction in allergy.get("reaction") or []:
        if isinstance(reaction, dict):
            names.append(_concept_name(reaction.get("substance"))[0])
    return [n for n in names if n]


def _allergy_active(allergy: dict[str, Any]) -> bool:
    status = allergy.get("clinicalStatus")
    codes = {c.get("code") for c in (status or {}).get("coding") or [] if isinstance(c, dict)}
    verification = {
        c.get("code") for c in (allergy.get("verificationStatus") or {}).get("coding") or [] if isinstance(c, dict)
    }
    return (not codes or "active" in codes) and "refuted" not in verification and "entered-in-error" not in verification


def _substance_words(substance: str) -> set[str]:
    words = re.findall(r"[a-z][a-z\-]{3,}", substance.lower())
    return {w for w in words if w not in GENERIC_WORDS}


def check_allergies(drafts: list[Drug], resources: list[dict[str, Any]]) -> list[AllergyFinding]:
    found = []
    for allergy in resources:
        if allergy.get("resourceType") != "AllergyIntolerance" or not _allergy_active(allergy):
            continue
        for substance in _allergy_substances(allergy):
            words = _substance_words(substance)
            for draft in drafts:
                drug = set(re.findall(r"[a-z][a-z\-]{3,}", draft.name.lower()))
                if words & drug:
                    found.append(
                        AllergyFinding(
                            draft, f"AllergyIntolerance/{allergy.get('id')}", substance, allergy.get("criticality")
                        )
                    )
    return list({(f.draft.reference, f.allergy): f for f in found}.values())


def check_duplicates(drafts: list[Drug], active: list[Drug]) -> list[DuplicateFinding]:
    found = []
    for draft in drafts:
        mine = drug_words(draft.name)
        for other in active:
            shared = (mine & drug_words(other.name)) or (
                {"same code"} if draft.token and draft.token == other.token else set()
            )
            if shared:
                found.append(DuplicateFinding(draft, other, tuple(sorted(shared))))
    return found


def conflicts(name: str, others: list[str]) -> bool:
    """Whether a drug interacts with, or duplicates an ingredient of, any of `others` (by name)."""
    mine = drug_words(name)
    return any(interactions_between(name, other) or mine & drug_words(other) for other in others)
