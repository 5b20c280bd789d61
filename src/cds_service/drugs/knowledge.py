"""All the drug knowledge, loaded and cross-checked once: the vocabulary (ingredients and classes), the
interaction rules, the duplicate-therapy groups, the rules' contextual factors and the drugs' indications.

Each file is schema-checked by its own loader; here they are checked against each other (every rule side
and every duplicate group names an ingredient or class the vocabulary knows, every context factor a rule
names is defined, and every drug a factor names is known), so a rule that could never
fire is an error at start-up rather than a silent gap in the safety checks. The API calls
`load_knowledge()` in its lifespan: a broken knowledge file stops the service from starting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from cds_service.drugs.context import ContextFactor, load_context_factors
from cds_service.drugs.indications import Indication, load_indications
from cds_service.drugs.rules import DuplicateGroup, RuleSet, load_duplicate_groups, load_rules, vocabulary_problems
from cds_service.drugs.vocabulary import Vocabulary, VocabularyError, load_vocabulary


@dataclass(frozen=True, eq=False)
class DrugKnowledge:
    vocabulary: Vocabulary
    rules: RuleSet
    duplicate_groups: tuple[DuplicateGroup, ...]
    context_factors: Mapping[str, ContextFactor]
    indications: tuple[Indication, ...] = ()

    def classes_of(self, ingredient: str) -> frozenset[str]:
        return self.vocabulary.classes_of(ingredient)


def knowledge_problems(
    vocabulary: Vocabulary,
    rules: RuleSet,
    groups: tuple[DuplicateGroup, ...],
    factors: Mapping[str, ContextFactor] | None = None,
    indications: tuple[Indication, ...] | None = None,
) -> list[str]:
    """What the rules, groups and factors name that the vocabulary (or the factor table) does not know
    (empty when consistent)."""
    known_classes = set(vocabulary.classes)
    problems = vocabulary_problems(rules, set(vocabulary.ingredients), known_classes)
    for group in groups:
        problems += [f"duplicate group {group.id}: class {c!r} is not in the vocabulary" for c in
                     sorted(group.classes - known_classes)]  # fmt: skip
    factors = load_context_factors() if factors is None else factors
    for rule in rules:
        problems += [f"{rule.id}: context factor {f!r} is not defined" for f in rule.context if f not in factors]
    for factor in factors.values():
        for code in factor.drug_codes():
            name = code.removeprefix("class:")
            known = known_classes if code.startswith("class:") else set(vocabulary.ingredients)
            if name not in known:
                problems.append(f"context factor {factor.id}: {code!r} is not in the vocabulary")
    for indication in load_indications() if indications is None else indications:
        name = indication.drug.removeprefix("class:")
        known = known_classes if indication.drug.startswith("class:") else set(vocabulary.ingredients)
        if name not in known:
            problems.append(f"indication {indication.id}: {indication.drug!r} is not in the vocabulary")
    return problems


@cache
def load_knowledge() -> DrugKnowledge:
    vocabulary, rules, groups = load_vocabulary(), load_rules(), load_duplicate_groups()
    factors, indications = load_context_factors(), load_indications()
    problems = knowledge_problems(vocabulary, rules, groups, factors, indications)
    if problems:
        raise VocabularyError("drug knowledge is inconsistent: " + "; ".join(problems[:10]))
    return DrugKnowledge(vocabulary, rules, groups, factors, indications)
