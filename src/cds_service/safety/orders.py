"""Rule-based checks of draft medication orders: interactions, allergies, duplicate therapy.

These need no model, so they always run first and reach the clinician even when scoring misses its
deadline. Drugs are resolved to ingredients and classes by the drug knowledge layer (`cds_service.drugs`,
through `interactions.py`). Interactions match the cited rules at pair, class or mechanism level; duplicate
therapy is a shared ingredient or a shared duplicate-therapy class (two statins, ACE inhibitor + ARB);
allergies match by ingredient, by the allergen's class ("Penicillins", or an amoxicillin allergy against
ampicillin) and, as a warning with its note, by cross-reactive class (penicillin allergy, cephalosporin
draft). A drug or allergen the layer cannot resolve falls back to matching words of its name.

The record is plain JSON from the EHR, so any element may be missing or of the wrong type: every element
is read defensively (as in `fhir/elements.py`) and nothing here raises on a malformed resource. A
malformed AllergyIntolerance costs only itself: it is checked on what can be read (a status that cannot
be read is taken as active, so it never hides an allergy), and it is counted (`AllergyCheck.unreadable`)
so that the answer can say its allergy check was incomplete instead of reading as "no allergy".
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds_service.drugs.allergies import AllergyClass, allergy_classes, class_of_allergy
from cds_service.drugs.knowledge import load_knowledge
from cds_service.drugs.rules import duplicate_groups
from cds_service.drugs.vocabulary import normalize_name
from cds_service.fhir.elements import code_token, first_datetime
from cds_service.fhir.medications import medication_concept, medication_index, medication_reference_display
from cds_service.safety.interactions import Interaction, blocking_interaction, ingredients_of, interactions_between

log = logging.getLogger(__name__)

ACTIVE_MED_STATUSES = {"active", "on-hold"}
MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationDispense", "MedicationAdministration")
INVALID_ALLERGY = {"refuted", "entered-in-error"}
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

    @property
    def rxcui(self) -> str | None:
        return self.token.removeprefix("RXNORM/") if self.token and self.token.startswith("RXNORM/") else None

    @property
    def ingredients(self) -> frozenset[str]:
        """Its ingredients by the drug knowledge layer (empty: we do not know this drug)."""
        return ingredients_of(self.name, self.rxcui)


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
    status_read: bool = True  # False: its clinical/verification status was malformed, so taken as active
    match: str = "ingredient"  # ingredient | class (a member of the allergen's class) | cross-reactive
    note: str = ""  # for class and cross-reactive matches: the evidence, cited


@dataclass(frozen=True)
class AllergyCheck:
    """The allergy check's findings, and how many AllergyIntolerances it could not fully read (each
    checked on what could be read, or skipped): more than 0 means the check is incomplete."""

    findings: list[AllergyFinding]
    unreadable: int = 0


@dataclass(frozen=True)
class DuplicateFinding:
    draft: Drug
    active: Drug
    shared: tuple[str, ...]


def _concept_name(concept: Any) -> tuple[str, str | None]:
    """(name, token) of a CodeableConcept: its text, else its coded display; ("", None) if it has neither."""
    if not isinstance(concept, dict):
        return "", None
    coded = code_token(concept)
    text = concept.get("text")
    name = text if isinstance(text, str) and text.strip() else (coded[1] if coded else "")
    return name, coded[0] if coded else None


def drug_of(
    resource: dict[str, Any], medications: dict[str, dict[str, Any]], fallback_id: str | None = None
) -> Drug | None:
    """The drug a medication resource names (inline concept, or a referenced/contained Medication).

    `fallback_id` stands in for a missing `id`: draft orders are often sent without one (the HL7 PDDI CDS
    guide's order-sign requests are), and a draft we cannot name must still be checked."""
    kind = resource.get("resourceType")
    ident = resource.get("id")
    if kind not in MEDICATION_TYPES:
        return None
    if not isinstance(ident, str | int) or ident == "":
        if fallback_id is None:
            return None
        ident = fallback_id
    name, token = _concept_name(medication_concept(resource, medications))
    name = name or medication_reference_display(resource)
    return Drug(f"{kind}/{ident}", name, token) if name else None


# What counts as a drug the patient is on: an active order or statement, or a dispense or administration
# recent enough to still act. "Recent" is measured against the record's own latest medication date, not
# the wall clock: a record (or a sandbox's test patient) may be years old, and its newest events are its
# present. A dispense or administration without a date counts (a missed interaction is the worse error).
ACTIVE_STATUSES = {
    "MedicationRequest": ACTIVE_MED_STATUSES,
    "MedicationStatement": {"active", "intended", "on-hold"},
    "MedicationDispense": {"preparation", "in-progress", "completed"},
    "MedicationAdministration": {"in-progress", "completed"},
}
RECENT_DAYS = 120  # dispenses and administrations: a 90-day supply plus a margin
EVENT_DATES = {
    "MedicationDispense": ("whenHandedOver", "whenPrepared"),
    "MedicationAdministration": ("effectiveDateTime", "effectivePeriod.end", "effectivePeriod.start"),
}


def _event_date(resource: dict[str, Any]) -> datetime | None:
    paths = EVENT_DATES.get(str(resource.get("resourceType")))
    return first_datetime(resource, *paths) if paths else None


def active_drugs(resources: list[dict[str, Any]], exclude: set[str]) -> list[Drug]:
    """The drugs the patient is on: active MedicationRequests and MedicationStatements, and recent
    MedicationDispenses and MedicationAdministrations (see `RECENT_DAYS`)."""
    medications = medication_index(resources)
    candidates = [
        r
        for r in resources
        if isinstance(r.get("status"), str) and r["status"] in ACTIVE_STATUSES.get(str(r.get("resourceType")), ())
    ]
    dated = [d for r in candidates if (d := _event_date(r)) is not None]
    newest = max(dated, default=None)
    out = []
    for r in candidates:
        when = _event_date(r)
        if newest is not None and when is not None and (newest - when).days > RECENT_DAYS:
            continue
        drug = drug_of(r, medications)
        if drug is not None and drug.reference not in exclude:
            out.append(drug)
    return out


def unknown_drugs(drugs: list[Drug]) -> list[Drug]:
    """The drugs the knowledge layer cannot resolve to any ingredient: nothing can be said about them."""
    return [d for d in drugs if not d.ingredients]


def drug_words(name: str) -> set[str]:
    """Ingredient names of a drug display: resolved ingredients, plus each component's leading words."""
    words = set(ingredients_of(name))
    for part in name.lower()[:300].split(" / "):
        lead = re.match(r"\s*([a-z][a-z \-]*?)\s*(\d|\[|\(|$)", part)
        if lead and lead.group(1) and lead.group(1) not in GENERIC_WORDS:
            words.add(lead.group(1).strip())
    return words


def check_interactions(drafts: list[Drug], others: list[Drug], all_drafts: list[Drug]) -> list[InteractionFinding]:
    found = []
    for draft in drafts:
        candidates = [(o, False) for o in others] + [(d, True) for d in all_drafts if d.reference != draft.reference]
        for other, is_draft in candidates:
            hits = interactions_between(draft.name, other.name, draft.rxcui, other.rxcui)
            if hits:
                found.append(InteractionFinding(draft, other, is_draft, hits[0]))
    return found


def _concept_intact(concept: Any) -> bool:
    """Whether a CodeableConcept that is present has the FHIR shape: text a string, coding a list of
    Codings whose members are strings."""
    if not isinstance(concept, dict):
        return False
    text, coding = concept.get("text"), concept.get("coding")
    if text is not None and not isinstance(text, str):
        return False
    if coding is None:
        return True
    if not isinstance(coding, list):
        return False
    return all(
        isinstance(c, dict)
        and all(c.get(k) is None or isinstance(c.get(k), str) for k in ("system", "code", "display"))
        for c in coding
    )


def _status_codes(concept: Any) -> set[str] | None:
    """The codes of a status CodeableConcept: empty when absent, None when malformed (cannot be read)."""
    if concept is None:
        return set()
    if not _concept_intact(concept):
        return None
    return {c["code"] for c in concept.get("coding") or [] if c.get("code")}


@dataclass(frozen=True)
class _Allergy:
    """What could be read of one AllergyIntolerance."""

    substances: list[str]
    active: bool
    status_read: bool
    criticality: str | None
    intact: bool  # every element read had its FHIR type


def _read_allergy(allergy: dict[str, Any]) -> _Allergy:
    intact = True
    concepts = [allergy.get("code")]
    reactions = allergy.get("reaction")
    if reactions is not None and not isinstance(reactions, list):
        intact, reactions = False, []
    for reaction in reactions or []:
        if isinstance(reaction, dict):
            concepts.append(reaction.get("substance"))
        else:
            intact = False
    substances = []
    for concept in concepts:
        if concept is None:
            continue
        intact = intact and _concept_intact(concept)
        name = _concept_name(concept)[0]
        if name:
            substances.append(name)
    clinical = _status_codes(allergy.get("clinicalStatus"))
    verification = _status_codes(allergy.get("verificationStatus"))
    status_read = clinical is not None and verification is not None
    # An unreadable status is taken as active: a malformed record must never hide an allergy.
    active = (not clinical or "active" in clinical) and not (verification or set()) & INVALID_ALLERGY
    criticality = allergy.get("criticality")
    if criticality is not None and not isinstance(criticality, str):
        intact, criticality = False, None
    return _Allergy(substances, active, status_read, criticality, intact and status_read)


def _substance_words(substance: str) -> set[str]:
    words = re.findall(r"[a-z][a-z\-]{3,}", substance.lower()[:300])
    return {w for w in words if w not in GENERIC_WORDS}


@dataclass(frozen=True)
class _Allergen:
    ingredients: frozenset[str]
    classes: tuple[AllergyClass, ...]  # the allergen's own allergy classes (recorded, or of its ingredients)


def _allergen(substance: str) -> _Allergen:
    vocabulary = load_knowledge().vocabulary
    recorded = allergy_classes(vocabulary).get(normalize_name(substance[:300]))
    if recorded is not None:
        return _Allergen(frozenset(), (recorded,))
    ingredients = ingredients_of(substance)
    own = {c.drug_class: c for i in ingredients if (c := class_of_allergy(vocabulary, i)) is not None}
    return _Allergen(ingredients, tuple(own.values()))


def _allergy_match(draft: Drug, allergen: _Allergen, substance: str) -> tuple[str, str] | None:
    """(match kind, note) when the draft is covered by the allergen, else None."""
    mine = draft.ingredients
    if mine & allergen.ingredients:
        return "ingredient", ""
    classes = {c for i in mine for c in load_knowledge().classes_of(i)}
    for allergy_class in allergen.classes:
        if allergy_class.drug_class in classes:
            return "class", allergy_class.note or f"{draft.name} belongs to the allergen's class"
    for allergy_class in allergen.classes:
        if allergy_class.cross_reactive & classes:
            return "cross-reactive", allergy_class.note
    if not mine or not (allergen.ingredients or allergen.classes):  # unknown to the layer: match by name
        drug = set(re.findall(r"[a-z][a-z\-]{3,}", draft.name.lower()[:300]))
        if _substance_words(substance) & drug:
            return "ingredient", ""
    return None


def _allergy_findings(drafts: list[Drug], allergy: dict[str, Any], read: _Allergy) -> list[AllergyFinding]:
    if not read.active:
        return []
    ident = allergy.get("id")
    ref = f"AllergyIntolerance/{ident}" if isinstance(ident, str | int) else "AllergyIntolerance"
    found = []
    for substance in read.substances:
        allergen = _allergen(substance)
        for draft in drafts:
            matched = _allergy_match(draft, allergen, substance)
            if matched is not None:
                kind, note = matched
                found.append(AllergyFinding(draft, ref, substance, read.criticality, read.status_read, kind, note))
    return found


def allergy_check(drafts: list[Drug], resources: list[dict[str, Any]]) -> AllergyCheck:
    """Drafts that name a substance of an active allergy, one resource at a time: a malformed
    AllergyIntolerance is checked on what can be read, or skipped, and counted as unreadable either way."""
    found: list[AllergyFinding] = []
    unreadable = 0
    for allergy in resources:
        if not isinstance(allergy, dict) or allergy.get("resourceType") != "AllergyIntolerance":
            continue
        try:
            read = _read_allergy(allergy)
            found.extend(_allergy_findings(drafts, allergy, read))
        except Exception as exc:  # the last guard of one resource: it costs only itself (type only: no PHI)
            log.warning("allergy check: skipped an AllergyIntolerance it could not read (%s)", type(exc).__name__)
            unreadable += 1
            continue
        unreadable += not read.intact
    strength = {"ingredient": 0, "class": 1, "cross-reactive": 2}
    best: dict[tuple[str, str], AllergyFinding] = {}
    for f in sorted(found, key=lambda f: strength[f.match]):
        best.setdefault((f.draft.reference, f.allergy), f)
    return AllergyCheck(list(best.values()), unreadable)


def check_allergies(drafts: list[Drug], resources: list[dict[str, Any]]) -> list[AllergyFinding]:
    """The findings of `allergy_check` (for callers that screen candidates and need no count)."""
    return allergy_check(drafts, resources).findings


def _duplicate_basis(a: Drug, b: Drug) -> tuple[str, ...]:
    """Why two drugs are duplicate therapy: shared ingredients, a shared duplicate-therapy class, the same
    code; or, for drugs the knowledge layer does not know, shared leading words of their names."""
    mine, theirs = a.ingredients, b.ingredients
    if mine and theirs:
        shared = tuple(sorted(mine & theirs))
        if shared:
            return shared
        knowledge = load_knowledge()
        groups = {
            g
            for x in mine
            for y in theirs
            for g in duplicate_groups(knowledge.classes_of(x), knowledge.classes_of(y), knowledge.duplicate_groups)
        }
        if groups:
            return tuple(f"class: {g}" for g in sorted(groups))
    elif shared_words := drug_words(a.name) & drug_words(b.name):
        return tuple(sorted(shared_words))
    return ("same code",) if a.token and a.token == b.token else ()


def check_duplicates(drafts: list[Drug], active: list[Drug]) -> list[DuplicateFinding]:
    found = []
    for draft in drafts:
        for other in active:
            shared = _duplicate_basis(draft, other)
            if shared:
                found.append(DuplicateFinding(draft, other, shared))
    return found


def conflicts(name: str, others: list[str]) -> bool:
    """Whether a drug interacts at major severity or worse with, or is duplicate therapy with, any of
    `others` (by name): what keeps it out of a recommendation."""
    me = Drug("candidate", name, None)
    return any(
        blocking_interaction(name, other) is not None or _duplicate_basis(me, Drug("other", other, None))
        for other in others
    )
