"""Drug-drug interaction rules at pair, class and mechanism level, as cited data.

What: `data/interaction_rules.csv` holds one rule a row. Each side of a rule is an ingredient id ("simvastatin")
or a class: a therapeutic class or a pharmacology tag ("class:cyp3a4_strong_inhibitor") from the shared list of
class ids (`KNOWN_CLASS_IDS`, read from the vocabulary's `classes.csv`). `interactions_between` finds every rule
that two drugs (each a set of ingredient ids) match, given a `classes_of(ingredient)` function; this module knows
nothing else of the vocabulary, so the vocabulary and its resolver can change without touching the rules.

Why as data: a clinician or pharmacist reviews a table, not code, and every row carries its citation (an FDA
label section, the FDA Table of Substrates, Inhibitors and Inducers, Phansalkar et al. 2012 (ONC high-priority
DDIs), the HL7 PDDI CDS guide). Rules at mechanism level ("a strong CYP3A4 inhibitor with a sensitive CYP3A4
substrate") cover drugs no one listed pair by pair, and tags rather than therapeutic classes keep class traps
quiet: azithromycin is a macrolide but no CYP3A4 inhibitor, so no rule is written for `class:macrolide`.

Specificity: for one pair of ingredients, a rule subsumes another when each of its sides is the same side or the
ingredient itself where the other has a class (simvastatin + class:cyp3a4_strong_inhibitor subsumes
class:cyp3a4_sensitive_substrate + class:cyp3a4_strong_inhibitor; an ingredient-ingredient rule subsumes every
class rule the pair matches). A subsumed rule is dropped when the subsuming one is at least as severe: the label's
pair-level severity wins, but the result is never downgraded below the most severe match. A rule is also dropped
when a strictly more severe rule for the same pair names the same side for the same drug (serotonergic + MAOI,
contraindicated, makes serotonergic + serotonergic, moderate, redundant for a serotonergic MAOI). Rules through
unrelated classes (pimozide with clarithromycin: CYP3A4 and QT) are all kept. An ingredient never interacts with itself:
two products of one ingredient are duplicate therapy, which `duplicate_groups` and the caller handle.

`context` names contextual factors (defined in `drugs.context`, checked against it by `drugs.knowledge`) that
`safety.context` evaluates against the patient record, e.g. the HL7 PDDI warfarin + NSAID exemplar's age >= 65,
gastroprotection, corticosteroid, aldosterone antagonist and GI-bleeding history. Loading checks the schema and
names the offending row; `vocabulary_problems` checks the ingredient and class ids against a vocabulary.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

SEVERITIES = ("moderate", "major", "contraindicated")  # ascending
FACTOR_NAME = re.compile(r"[a-z][a-z0-9_]*")
CLASS_PREFIX = "class:"
COLUMNS = ("id", "side_a", "side_b", "severity", "mechanism", "advice", "citation", "context")
DUPLICATE_COLUMNS = ("id", "classes", "citation")


def _class_ids(kind: str | None = None) -> frozenset[str]:
    """Class ids of the vocabulary's `classes.csv` (the one list of them), optionally of one kind."""
    text = resources.files("cds_service.drugs").joinpath("data/classes.csv").read_text(encoding="utf-8")
    return frozenset(row["id"] for row in csv.DictReader(text.splitlines()) if kind in (None, row["kind"]))


# Rule sides are checked against the vocabulary's own class list, read from its file (not copied here).
THERAPEUTIC_CLASSES = _class_ids("therapeutic")
KNOWN_CLASS_IDS = _class_ids()

# Contextual factors a rule may name; a later step evaluates them against the record (direction in the text).

# Lowercase INN/USAN words joined by single spaces or hyphens ("warfarin", "insulin glargine", "methylene blue").
INGREDIENT_ID = re.compile(r"[a-z0-9]+(?:[ -][a-z0-9]+)*")
RULE_ID = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")

ClassesOf = Callable[[str], AbstractSet[str]]


class RuleSchemaError(ValueError):
    """A rules or duplicate-classes CSV that breaks the schema; the message names the file and row."""


def is_class_side(side: str) -> bool:
    return side.startswith(CLASS_PREFIX)


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    side_a: str
    side_b: str
    severity: str
    mechanism: str
    advice: str
    citation: str
    context: tuple[str, ...] = ()

    @property
    def rank(self) -> int:
        """Position in `SEVERITIES`: higher is more severe."""
        return SEVERITIES.index(self.severity)

    @property
    def specificity(self) -> int:
        """Number of ingredient (not class) sides: 2 for a pair-level rule, 0 for a class-level one."""
        return sum(not is_class_side(side) for side in (self.side_a, self.side_b))

    @property
    def kind(self) -> str:
        return ("class", "ingredient-class", "pair")[self.specificity]


@dataclass(frozen=True, slots=True)
class Match:
    """A rule matched by one ingredient of each drug (`ingredient_a` from the first, `ingredient_b` the second)."""

    ingredient_a: str
    ingredient_b: str
    rule: Rule


Orientation = tuple[str, str]  # (the rule side matched by the first ingredient, the side matched by the second)


class RuleSet:
    """The loaded rules in file order (iterable, sized), indexed by side for matching."""

    __slots__ = ("_by_side_a", "_by_side_b", "_rules")

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._rules = tuple(rules)
        self._by_side_a: dict[str, list[Rule]] = {}
        self._by_side_b: dict[str, list[Rule]] = {}
        for rule in self._rules:
            self._by_side_a.setdefault(rule.side_a, []).append(rule)
            self._by_side_b.setdefault(rule.side_b, []).append(rule)

    def __len__(self) -> int:
        return len(self._rules)

    def by_id(self, rule_id: str) -> Rule:
        return next(rule for rule in self._rules if rule.id == rule_id)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules)

    def matching(self, keys_x: frozenset[str], keys_y: frozenset[str]) -> dict[Rule, set[Orientation]]:
        """Rules whose sides are matched by keys of x and keys of y, in either order, with how they matched."""
        found: dict[Rule, set[Orientation]] = {}
        for key in keys_x:
            for rule in self._by_side_a.get(key, ()):
                if rule.side_b in keys_y:
                    found.setdefault(rule, set()).add((rule.side_a, rule.side_b))
            for rule in self._by_side_b.get(key, ()):
                if rule.side_a in keys_y:
                    found.setdefault(rule, set()).add((rule.side_b, rule.side_a))
        return found


# ---- loading and schema -------------------------------------------------------------------------------------------


def _side_problem(side: str) -> str | None:
    if is_class_side(side):
        class_id = side[len(CLASS_PREFIX) :]
        return None if class_id in KNOWN_CLASS_IDS else f"unknown class id {class_id!r}"
    if not INGREDIENT_ID.fullmatch(side):
        return f"side {side!r} is neither class:<id> nor a lowercase ingredient id"
    return None


def _rows(text: str, source: str, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != columns:
        raise RuleSchemaError(f"{source}: header must be {','.join(columns)}, got {reader.fieldnames}")
    for row in reader:
        line = reader.line_num
        if None in row or any(value is None for value in row.values()):
            raise RuleSchemaError(f"{source} line {line}: expected {len(columns)} fields")
        yield line, {key: value.strip() for key, value in row.items()}


def parse_rules(text: str, source: str = "interaction_rules.csv") -> RuleSet:
    """Parse and schema-check a rules CSV; `RuleSchemaError` names the first offending row."""
    rules: list[Rule] = []
    seen_ids: set[str] = set()
    seen_sides: dict[frozenset[str], str] = {}
    for line, row in _rows(text, source, COLUMNS):
        where = f"{source} line {line} (id={row['id'] or '?'})"
        if not RULE_ID.fullmatch(row["id"]):
            raise RuleSchemaError(f"{where}: id must be lowercase words joined by - or _")
        if row["id"] in seen_ids:
            raise RuleSchemaError(f"{where}: duplicate id")
        seen_ids.add(row["id"])
        if row["severity"] not in SEVERITIES:
            raise RuleSchemaError(f"{where}: unknown severity {row['severity']!r} (one of {', '.join(SEVERITIES)})")
        for column in ("side_a", "side_b"):
            problem = _side_problem(row[column])
            if problem:
                raise RuleSchemaError(f"{where}: {column}: {problem}")
        if row["side_a"] == row["side_b"] and not is_class_side(row["side_a"]):
            raise RuleSchemaError(f"{where}: an ingredient cannot interact with itself")
        sides = frozenset((row["side_a"], row["side_b"]))
        if sides in seen_sides:
            raise RuleSchemaError(f"{where}: same sides as rule {seen_sides[sides]}")
        seen_sides[sides] = row["id"]
        for column in ("mechanism", "advice", "citation"):
            if not row[column]:
                raise RuleSchemaError(f"{where}: empty {column}")
        context = tuple(factor.strip() for factor in row["context"].split("|")) if row["context"] else ()
        if not all(FACTOR_NAME.fullmatch(factor) for factor in context):
            raise RuleSchemaError(f"{where}: context factors are snake_case names joined by |")
        rules.append(
            Rule(
                id=row["id"],
                side_a=row["side_a"],
                side_b=row["side_b"],
                severity=row["severity"],
                mechanism=row["mechanism"],
                advice=row["advice"],
                citation=row["citation"],
                context=context,
            )
        )
    return RuleSet(rules)


def _packaged_text(name: str) -> str:
    return resources.files("cds_service.drugs").joinpath("data", name).read_text(encoding="utf-8")


@cache
def _packaged_rules() -> RuleSet:
    return parse_rules(_packaged_text("interaction_rules.csv"))


def load_rules(path: Path | None = None) -> RuleSet:
    """The packaged rules (cached), or those of the CSV at `path`."""
    if path is None:
        return _packaged_rules()
    return parse_rules(path.read_text(encoding="utf-8"), source=str(path))


def vocabulary_problems(
    rules: Iterable[Rule], known_ingredients: AbstractSet[str], known_classes: AbstractSet[str]
) -> list[str]:
    """Rule sides that the vocabulary does not know, one message each ("rule-id: ..."); empty when all resolve."""
    problems: list[str] = []
    for rule in rules:
        for side in (rule.side_a, rule.side_b):
            if is_class_side(side):
                if side[len(CLASS_PREFIX) :] not in known_classes:
                    problems.append(f"{rule.id}: class {side!r} is not in the vocabulary")
            elif side not in known_ingredients:
                problems.append(f"{rule.id}: ingredient {side!r} is not in the vocabulary")
    return problems


# ---- matching --------------------------------------------------------------------------------------------------------


def _refines(specific: str, general: str) -> bool:
    return specific == general or (not is_class_side(specific) and is_class_side(general))


def _subsumes(specific: set[Orientation], general: set[Orientation]) -> bool:
    return any(s != g and _refines(s[0], g[0]) and _refines(s[1], g[1]) for s in specific for g in general)


def _shares_a_side(stronger: set[Orientation], weaker: set[Orientation]) -> bool:
    return any(s[0] == w[0] or s[1] == w[1] for s in stronger for w in weaker)


def _pair_rules(x: str, y: str, classes_of: ClassesOf, rules: RuleSet) -> list[Rule]:
    keys_x = frozenset({x, *(CLASS_PREFIX + c for c in classes_of(x))})
    keys_y = frozenset({y, *(CLASS_PREFIX + c for c in classes_of(y))})
    found = rules.matching(keys_x, keys_y)

    def redundant(rule: Rule, how: set[Orientation]) -> bool:
        for other, other_how in found.items():
            if other is rule:
                continue
            if other.rank >= rule.rank and _subsumes(other_how, how):
                return True  # a more specific rule, at least as severe
            if other.rank > rule.rank and _shares_a_side(other_how, how):
                return True  # the same role of one drug, a more severe statement about the other
        return False

    return [rule for rule, how in found.items() if not redundant(rule, how)]


def _order(rule: Rule) -> tuple[int, int, str]:
    return (-rule.rank, -rule.specificity, rule.id)


def matches_between(
    a: Iterable[str], b: Iterable[str], classes_of: ClassesOf, rules: RuleSet | None = None
) -> list[Match]:
    """Every (ingredient of a, ingredient of b, rule) that applies, most severe first, subsumed rules dropped."""
    ruleset = load_rules() if rules is None else rules
    ingredients_b = sorted(set(b))
    out = [
        Match(x, y, rule)
        for x in sorted(set(a))
        for y in ingredients_b
        if x != y
        for rule in _pair_rules(x, y, classes_of, ruleset)
    ]
    return sorted(out, key=lambda m: (*_order(m.rule), m.ingredient_a, m.ingredient_b))


def interactions_between(
    a: Iterable[str], b: Iterable[str], classes_of: ClassesOf, rules: RuleSet | None = None
) -> list[Rule]:
    """The rules two drugs (each a set of ingredient ids) match, in either order, most severe first.

    Symmetric: `interactions_between(a, b, f) == interactions_between(b, a, f)`. See the module docstring for
    how a more specific rule replaces a less specific one on the same pair of ingredients.
    """
    unique = {match.rule: None for match in matches_between(a, b, classes_of, rules)}
    return sorted(unique, key=_order)


# ---- duplicate therapy ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DuplicateGroup:
    """Classes whose different members taken together are duplicate therapy (e.g. an ACE inhibitor and an ARB)."""

    id: str
    classes: frozenset[str]
    citation: str


def parse_duplicate_groups(text: str, source: str = "duplicate_classes.csv") -> tuple[DuplicateGroup, ...]:
    groups: list[DuplicateGroup] = []
    seen: set[str] = set()
    for line, row in _rows(text, source, DUPLICATE_COLUMNS):
        where = f"{source} line {line} (id={row['id'] or '?'})"
        if not RULE_ID.fullmatch(row["id"]) or row["id"] in seen:
            raise RuleSchemaError(f"{where}: id missing, malformed or duplicate")
        seen.add(row["id"])
        classes = frozenset(c.strip() for c in row["classes"].split("|") if c.strip())
        unknown = sorted(classes - THERAPEUTIC_CLASSES)
        if not classes or unknown:
            raise RuleSchemaError(f"{where}: classes must be therapeutic class ids, unknown: {unknown}")
        if not row["citation"]:
            raise RuleSchemaError(f"{where}: empty citation")
        groups.append(DuplicateGroup(row["id"], classes, row["citation"]))
    return tuple(groups)


@cache
def _packaged_duplicate_groups() -> tuple[DuplicateGroup, ...]:
    return parse_duplicate_groups(_packaged_text("duplicate_classes.csv"))


def load_duplicate_groups(path: Path | None = None) -> tuple[DuplicateGroup, ...]:
    """The packaged duplicate-therapy groups (cached), or those of the CSV at `path`."""
    if path is None:
        return _packaged_duplicate_groups()
    return parse_duplicate_groups(path.read_text(encoding="utf-8"), source=str(path))


def duplicate_groups(
    a_classes: AbstractSet[str], b_classes: AbstractSet[str], groups: Iterable[DuplicateGroup] | None = None
) -> list[str]:
    """Ids of the duplicate-therapy groups that two different ingredients, given their classes, both fall in."""
    chosen = load_duplicate_groups() if groups is None else groups
    return [group.id for group in chosen if group.classes & a_classes and group.classes & b_classes]
