"""Drug interactions between two drugs as EHRs write them, through the drug knowledge layer.

A drug (display and, when coded, its RxNorm code) is resolved to ingredients by `drugs.resolve` (brands,
salts, combinations, tall-man lettering, bounded misspellings); the cited rules of `drugs.rules` match at
pair, class or mechanism level (a CYP3A4-sensitive statin with any strong CYP3A4 inhibitor, not with every
macrolide). Every caller that asks "do these two interact?" asks here: the order checks, the model's
recommendation filter and the evaluation's DDI metric, so there is one answer.

A drug that resolves to no ingredient is *unknown*, not safe: callers see it through `drug_known` and say
so (a "not checked" card, a reason in the audit record) instead of reporting "no interaction".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

from cds_service.drugs.knowledge import load_knowledge
from cds_service.drugs.resolve import Resolution
from cds_service.drugs.resolve import ingredients_of as resolve
from cds_service.drugs.rules import SEVERITIES, matches_between


@dataclass(frozen=True, slots=True)
class Interaction:
    ingredient_a: str  # of the first drug asked about
    ingredient_b: str  # of the second
    severity: str  # contraindicated | major | moderate
    mechanism: str
    source: str  # the rule's citation
    advice: str = ""
    rule_id: str = ""
    local: bool = False  # one of the two is applied locally (skin, eye, ear): little systemic exposure
    context: tuple[str, ...] = ()  # the rule's contextual factors (`drugs.context`), for `safety.context`


# Routes whose products reach the blood in amounts too small for the systemic mechanisms the rules describe
# (the HL7 PDDI CDS guide: topical diclofenac with warfarin needs no special precautions). Nasal and inhaled
# products are not local here: inhaled or nasal fluticasone with ritonavir causes Cushing's syndrome; nor are
# vaginal rings (systemic contraception that inducers defeat). An intrauterine levonorgestrel system acts in the
# uterus, and inducers do not lower its efficacy (CDC US Medical Eligibility Criteria 2024, rifampin: category 1).
LOCAL_ROUTES = frozenset({"topical", "ophthalmic", "otic", "intrauterine"})


def resolution(drug_name: str, rxcui: str | None = None) -> Resolution:
    return resolve(drug_name, rxcui, vocabulary=load_knowledge().vocabulary)


def ingredients_of(drug_name: str, rxcui: str | None = None) -> frozenset[str]:
    """The ingredients of a drug, by its display (and RxNorm code when given)."""
    return frozenset(resolution(drug_name, rxcui).ingredients)


def drug_known(drug_name: str, rxcui: str | None = None) -> bool:
    """Whether the drug resolves to at least one ingredient (else nothing can be said about it)."""
    return not resolution(drug_name, rxcui).unknown


def interactions_between(
    drug_a: str, drug_b: str, rxcui_a: str | None = None, rxcui_b: str | None = None
) -> list[Interaction]:
    """Every rule two drugs match, most severe first (one entry per rule)."""
    knowledge = load_knowledge()
    a, b = resolution(drug_a, rxcui_a), resolution(drug_b, rxcui_b)
    local = any(r.routes and set(r.routes) <= LOCAL_ROUTES for r in (a, b))
    found: dict[str, Interaction] = {}
    for match in matches_between(a.ingredients, b.ingredients, knowledge.classes_of, knowledge.rules):
        rule = match.rule
        found.setdefault(
            rule.id,
            Interaction(
                match.ingredient_a,
                match.ingredient_b,
                rule.severity,
                rule.mechanism,
                rule.citation,
                rule.advice,
                rule.id,
                local,
                rule.context,
            ),
        )
    return sorted(found.values(), key=lambda i: (-SEVERITIES.index(i.severity), i.rule_id))


# What keeps a drug from being recommended, and what the model's DDI penalty and metric count: a major or
# contraindicated interaction. Moderate ones are still warned about on draft orders, but a recommendation
# list that avoided every moderate interaction would drop much usual therapy.
BLOCKING_SEVERITIES = frozenset({"major", "contraindicated"})


def blocking_interaction(drug_a: str, drug_b: str) -> Interaction | None:
    """The most severe interaction of the two drugs if it is major or worse, else None."""
    found = interactions_between(drug_a, drug_b)
    return found[0] if found and found[0].severity in BLOCKING_SEVERITIES and not found[0].local else None


def interacting_pairs(drug_names: Iterable[str]) -> list[tuple[str, str, Interaction]]:
    """Every interacting pair among a set of drugs (each pair once, with its most severe interaction)."""
    out = []
    for a, b in combinations(sorted(set(drug_names)), 2):
        found = interactions_between(a, b)
        if found:
            out.append((a, b, found[0]))
    return out
