"""Contextual factors of an interaction, read from the patient's record.

An interaction rule may name factors (`drugs.context`): the HL7 PDDI CDS warfarin + NSAID logic raises its
advice to "use only if benefit outweighs risk" for a patient over 65, with a history of GI bleeding, or on a
systemic corticosteroid or aldosterone antagonist, and lowers it to "assess risk" under a proton pump
inhibitor. Here each factor is looked up in the record (conditions, the other drugs taken, the latest
observation, the patient's age) and returned with the evidence a clinician can check. A factor that cannot
be read is *not found*, never an error: the interaction card stands without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from cds_service.drugs.context import ContextFactor, Criterion
from cds_service.drugs.knowledge import load_knowledge
from cds_service.fhir.elements import (
    INVALID_CONDITION,
    Resource,
    codings,
    first_datetime,
    parse_datetime,
    status_codes,
)
from cds_service.safety.interactions import LOCAL_ROUTES, resolution
from cds_service.safety.orders import Drug

CODE_PREFIXES = {
    "http://hl7.org/fhir/sid/icd-10-cm": "icd10",
    "http://hl7.org/fhir/sid/icd-10": "icd10",
    "http://snomed.info/sct": "snomed",
    "http://loinc.org": "loinc",
}
PDDI_ASSESS = "Assess risk and take action if necessary."
PDDI_AVOID_UNLESS = "Use only if benefit outweighs risk."


@dataclass(frozen=True, slots=True)
class FactorFinding:
    factor: str
    effect: str  # raises | lowers | review
    label: str
    evidence: str  # what in the record shows it ("aged 78", "Omeprazole 20 MG Oral Capsule"); "" when absent
    present: bool


def concept_codes(concept: Any) -> set[str]:
    """`system:code` of each coding in a system we name (icd10 codes without their dot-suffix kept whole)."""
    out = set()
    for coding in codings(concept):
        prefix, code = CODE_PREFIXES.get(str(coding.get("system"))), coding.get("code")
        if prefix and isinstance(code, str) and code:
            out.add(f"{prefix}:{code.strip().upper() if prefix == 'icd10' else code.strip()}")
    return out


def concept_texts(concept: Any) -> list[str]:
    texts = [c.get("display") for c in codings(concept)]
    if isinstance(concept, dict):
        texts.append(concept.get("text"))
    return [t[:300].lower() for t in texts if isinstance(t, str)]


def _code_matches(criterion: Criterion, codes: set[str]) -> bool:
    for wanted in criterion.codes:
        if wanted.startswith("icd10:"):
            stem = wanted.upper().removeprefix("ICD10:")
            if any(c.startswith("icd10:") and c[6:].startswith(stem) for c in codes):
                return True
        elif wanted in codes:
            return True
    return False


def _keyword_matches(criterion: Criterion, texts: list[str]) -> bool:
    return any(re.search(rf"\b{re.escape(k)}\b", text) for k in criterion.keywords for text in texts)


def condition_matches(criterion: Criterion, codes: set[str], texts: list[str]) -> bool:
    """Whether a condition with these codes (`concept_codes`) and texts (`concept_texts`) meets `criterion`."""
    return _code_matches(criterion, codes) or _keyword_matches(criterion, texts)


def _day(resource: Resource, *paths: str) -> str:
    when = first_datetime(resource, *paths)
    return f" ({when.date().isoformat()})" if when else ""


class RecordContext:
    """The parts of one record that factors read, indexed once per answer (lazily)."""

    def __init__(self, resources: Sequence[Resource], drugs: Sequence[Drug], now: datetime | None = None) -> None:
        self._resources = resources
        self._drugs = drugs
        self._now = now or datetime.now(UTC)

    @cached_property
    def _conditions(self) -> list[tuple[Resource, set[str], list[str]]]:
        out = []
        for r in self._resources:
            if r.get("resourceType") != "Condition" or status_codes(r, "verificationStatus") & INVALID_CONDITION:
                continue
            out.append((r, concept_codes(r.get("code")), concept_texts(r.get("code"))))
        return out

    @cached_property
    def _observations(self) -> list[tuple[datetime, Resource, set[str]]]:
        out = []
        for r in self._resources:
            if r.get("resourceType") != "Observation" or r.get("status") in ("entered-in-error", "cancelled"):
                continue
            when = first_datetime(r, "effectiveDateTime", "effectivePeriod.start", "issued")
            if when is not None:
                out.append((when, r, concept_codes(r.get("code"))))
        out.sort(key=lambda item: item[0], reverse=True)
        return out

    @cached_property
    def age(self) -> float | None:
        for r in self._resources:
            if r.get("resourceType") == "Patient":
                born = parse_datetime(r.get("birthDate"))
                if born is not None:
                    return (self._now - born).days / 365.25
        return None

    def _drug_evidence(self, criterion: Criterion, exclude: set[str]) -> str:
        classes_of = load_knowledge().classes_of
        for drug in self._drugs:
            if drug.reference in exclude:
                continue
            routes = resolution(drug.name, drug.rxcui).routes
            if routes and set(routes) <= LOCAL_ROUTES:  # eye drops or a cream do not act systemically
                continue
            for ingredient in drug.ingredients:
                keys = {ingredient} | {f"class:{c}" for c in classes_of(ingredient)}
                if keys & set(criterion.codes):
                    return drug.name
        return ""

    def _condition_evidence(self, criterion: Criterion) -> str:
        for resource, codes, texts in self._conditions:
            if condition_matches(criterion, codes, texts):
                name = texts[0] if texts else "condition"
                return f"{name}{_day(resource, 'onsetDateTime', 'recordedDate')}"
        return ""

    def _observation_evidence(self, criterion: Criterion) -> tuple[str, bool]:
        """(evidence, crosses the threshold) of the latest matching observation."""
        for when, resource, codes in self._observations:
            if not _code_matches(criterion, codes):
                continue
            quantity = resource.get("valueQuantity")
            value = quantity.get("value") if isinstance(quantity, dict) else None
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            assert isinstance(quantity, dict)  # a number was read from it above
            unit = quantity.get("unit") or quantity.get("code") or ""
            name = (concept_texts(resource.get("code")) or ["result"])[0]
            return f"{name}: {value:g} {unit}".rstrip() + f" ({when.date().isoformat()})", criterion.crosses(value)
        return "", False

    def evaluate(self, factor: ContextFactor, exclude: Iterable[str] = ()) -> FactorFinding:
        """Whether `factor` is present, with its evidence; drugs in `exclude` (the pair itself) do not count."""
        skip = set(exclude)
        for criterion in factor.criteria:
            evidence, present = "", False
            if criterion.kind == "age" and self.age is not None:
                present = criterion.crosses(self.age)
                evidence = f"aged {int(self.age)}" if present else ""
            elif criterion.kind == "drug":
                evidence = self._drug_evidence(criterion, skip)
                present = bool(evidence)
            elif criterion.kind == "condition":
                evidence = self._condition_evidence(criterion)
                present = bool(evidence)
            elif criterion.kind == "observation":
                evidence, crosses = self._observation_evidence(criterion)
                present = bool(evidence) and (crosses or factor.effect == "review")
            if present:
                return FactorFinding(factor.id, factor.effect, factor.label, evidence, True)
        return FactorFinding(factor.id, factor.effect, factor.label, "", False)

    def factors_of(self, names: Iterable[str], exclude: Iterable[str] = ()) -> tuple[FactorFinding, ...]:
        known = load_knowledge().context_factors
        return tuple(self.evaluate(known[name], exclude) for name in names if name in known)


def recommended_action(findings: Sequence[FactorFinding]) -> str | None:
    """The HL7 PDDI CDS warfarin + NSAID logic's tier, for rules of that shape (risk factors weighed against
    a mitigating one): a risk-lowering factor present (gastroprotection) means "assess risk"; otherwise any
    risk-raising factor means "use only if benefit outweighs risk"; none found means "assess risk". None for
    rules without a mitigating factor, whose factors are shown but not turned into a tier."""
    weighed = [f for f in findings if f.effect in ("raises", "lowers")]
    if not any(f.effect == "lowers" for f in weighed):
        return None
    if any(f.present and f.effect == "lowers" for f in weighed):
        return PDDI_ASSESS
    if any(f.present and f.effect == "raises" for f in weighed):
        return PDDI_AVOID_UNLESS
    return PDDI_ASSESS
