"""The cited interaction rules of `cds_service.drugs`: what they flag, what they leave alone, how they rank.

`CLASSES` stands in for the drug vocabulary: about thirty ingredients with their classes and pharmacology tags
(after CLASSES.md and the FDA Table of Substrates, Inhibitors and Inducers), so that these tests depend only on
the `classes_of` contract and not on the vocabulary's data.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest

from cds_service.drugs.context import load_context_factors
from cds_service.drugs.rules import (
    KNOWN_CLASS_IDS,
    SEVERITIES,
    Rule,
    RuleSchemaError,
    duplicate_groups,
    interactions_between,
    is_class_side,
    load_duplicate_groups,
    load_rules,
    matches_between,
    parse_duplicate_groups,
    vocabulary_problems,
)

CLASSES: dict[str, frozenset[str]] = {
    name: frozenset(tags.split())
    for name, tags in {
        "clarithromycin": "macrolide cyp3a4_strong_inhibitor pgp_inhibitor qt_known_risk",
        "azithromycin": "macrolide qt_known_risk",
        "erythromycin": "macrolide cyp3a4_moderate_inhibitor qt_known_risk",
        "simvastatin": "statin cyp3a4_sensitive_substrate",
        "atorvastatin": "statin",
        "warfarin": "vitamin_k_antagonist cyp2c9_sensitive_substrate bleeding_risk",
        "apixaban": "doac bleeding_risk",
        "digoxin": "cardiac_glycoside pgp_substrate_narrow",
        "verapamil": "non_dhp_ccb cyp3a4_moderate_inhibitor pgp_inhibitor bradycardic hypotensive",
        "metoprolol": "beta_blocker bradycardic hypotensive",
        "ibuprofen": "nsaid bleeding_risk nephrotoxic",
        "cyclosporine": "calcineurin_inhibitor pgp_inhibitor nephrotoxic",
        "sildenafil": "pde5_inhibitor cyp3a4_sensitive_substrate hypotensive",
        "isosorbide mononitrate": "nitrate hypotensive",
        "tizanidine": "muscle_relaxant cyp1a2_sensitive_substrate hypotensive cns_depressant",
        "ciprofloxacin": "fluoroquinolone cyp1a2_strong_inhibitor qt_known_risk",
        "metformin": "biguanide",
        "lisinopril": "ace_inhibitor potassium_raising hypotensive",
        "losartan": "arb potassium_raising hypotensive",
        "hydrochlorothiazide": "thiazide hypotensive",
        "amlodipine": "dhp_ccb hypotensive",
        "omeprazole": "ppi cyp2c19_moderate_inhibitor",
        "clopidogrel": "p2y12_inhibitor antiplatelet bleeding_risk",
        "fluconazole": "azole_antifungal cyp2c9_moderate_inhibitor cyp3a4_moderate_inhibitor "
        "cyp2c19_strong_inhibitor qt_known_risk",
        "sertraline": "ssri serotonergic",
        "escitalopram": "ssri serotonergic qt_known_risk",
        "phenelzine": "maoi",
        "linezolid": "oxazolidinone",
        "oxycodone": "opioid cns_depressant",
        "alprazolam": "benzodiazepine cns_depressant",
        "spironolactone": "aldosterone_antagonist potassium_sparing_diuretic potassium_raising",
        "potassium chloride": "potassium_supplement potassium_raising",
        "pimozide": "antipsychotic qt_known_risk",
    }.items()
}


def classes_of(ingredient: str) -> frozenset[str]:
    return CLASSES.get(ingredient, frozenset())


def between(a: str, b: str) -> list[Rule]:
    return interactions_between([a], [b], classes_of)


def top_severity(a: str, b: str) -> str | None:
    found = between(a, b)
    return found[0].severity if found else None


HEADER = "id,side_a,side_b,severity,mechanism,advice,citation,context\n"


def write_rules(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "rules.csv"
    path.write_text(HEADER + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


# ---- the packaged rules ------------------------------------------------------------------------------------------


def test_every_rule_is_cited_and_well_formed() -> None:
    rules = load_rules()
    assert len(rules) > 150
    for rule in rules:
        assert rule.citation and rule.mechanism and rule.advice, rule.id
        assert rule.severity in SEVERITIES
        assert set(rule.context) <= set(load_context_factors())
        for side in (rule.side_a, rule.side_b):
            assert not is_class_side(side) or side.removeprefix("class:") in KNOWN_CLASS_IDS
    assert len({rule.id for rule in rules}) == len(rules)
    # the class trap: azithromycin is a macrolide but not a CYP3A4 inhibitor
    assert not any("class:macrolide" in (rule.side_a, rule.side_b) for rule in rules)


def test_clarithromycin_interacts_at_label_severity() -> None:
    assert top_severity("clarithromycin", "simvastatin") == "contraindicated"
    assert top_severity("clarithromycin", "warfarin") == "major"
    assert top_severity("clarithromycin", "digoxin") == "major"
    assert top_severity("clarithromycin", "verapamil") == "major"


def test_azithromycin_is_not_a_cyp3a4_inhibitor() -> None:
    assert between("azithromycin", "simvastatin") == []
    assert between("azithromycin", "atorvastatin") == []


def test_hl7_pddi_exemplars() -> None:
    found = between("warfarin", "ibuprofen")
    assert found[0].severity == "major"
    assert found[0].id == "pddi-warfarin-nsaid"
    assert set(found[0].context) == {
        "age_65_or_older",
        "history_gi_bleed",
        "systemic_corticosteroid",
        "aldosterone_antagonist",
        "ppi_or_misoprostol",
    }
    assert "PDDI" in found[0].citation
    # the pair-level exemplar replaces the class-level vitamin K antagonist + NSAID rule
    assert [rule.id for rule in found] == ["pddi-warfarin-nsaid"]
    digoxin = between("digoxin", "cyclosporine")
    assert [rule.id for rule in digoxin] == ["pddi-digoxin-cyclosporine"]
    assert digoxin[0].severity == "major"


@pytest.mark.parametrize(
    ("a", "b", "severity"),
    [
        ("sildenafil", "isosorbide mononitrate", "contraindicated"),
        ("tizanidine", "ciprofloxacin", "contraindicated"),
        ("linezolid", "sertraline", "contraindicated"),
        ("phenelzine", "sertraline", "contraindicated"),
        ("clopidogrel", "omeprazole", "major"),
        ("oxycodone", "alprazolam", "major"),
        ("warfarin", "apixaban", "major"),
        ("warfarin", "fluconazole", "major"),
        ("verapamil", "metoprolol", "major"),
        ("lisinopril", "losartan", "major"),
        ("spironolactone", "potassium chloride", "major"),
        ("spironolactone", "lisinopril", "moderate"),
        ("sertraline", "escitalopram", "moderate"),
        ("pimozide", "clarithromycin", "contraindicated"),
    ],
)
def test_known_interactions(a: str, b: str, severity: str) -> None:
    assert top_severity(a, b) == severity


@pytest.mark.parametrize(
    ("a", "b"),
    [("metformin", "lisinopril"), ("losartan", "hydrochlorothiazide"), ("amlodipine", "lisinopril")],
)
def test_usual_combination_therapy_is_quiet(a: str, b: str) -> None:
    assert between(a, b) == []


def test_pair_level_beats_class_level_on_the_packaged_rules() -> None:
    ids = [rule.id for rule in between("clarithromycin", "simvastatin")]
    assert ids[0] == "onc-simvastatin-cyp3a4"
    assert "cyp3a4-strong-inhibitor-sensitive" not in ids  # subsumed: the label's contraindication wins
    digoxin = [rule.id for rule in between("clarithromycin", "digoxin")]
    assert digoxin == ["digoxin-clarithromycin"]  # not also digoxin + P-gp inhibitor


def test_rules_through_unrelated_classes_are_all_kept() -> None:
    ids = {rule.id for rule in between("pimozide", "clarithromycin")}
    assert {"pimozide-cyp3a4", "pimozide-qt"} <= ids


def test_order_of_sides_does_not_matter() -> None:
    for a, b in combinations(sorted(CLASSES), 2):
        assert between(a, b) == between(b, a), (a, b)


def test_an_ingredient_never_interacts_with_itself() -> None:
    # clarithromycin is qt_known_risk, and qt + qt is a class rule: still nothing for the same ingredient
    assert between("clarithromycin", "clarithromycin") == []
    combo = ["sulfamethoxazole", "trimethoprim"]
    assert interactions_between(combo, ["trimethoprim"], classes_of) == []


def test_combination_products_match_through_each_ingredient() -> None:
    found = matches_between(["sulfamethoxazole", "trimethoprim"], ["warfarin"], classes_of)
    assert [(m.ingredient_a, m.ingredient_b, m.rule.id) for m in found] == [
        ("sulfamethoxazole", "warfarin", "warfarin-sulfamethoxazole")
    ]


# ---- specificity on hand-written rules -----------------------------------------------------------------------


def test_pair_level_wins_but_never_downgrades(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        "class-rule,class:cyp3a4_strong_inhibitor,class:cyp3a4_sensitive_substrate,major,m,a,c,",
        "pair-rule,simvastatin,clarithromycin,contraindicated,m,a,c,",
        "weak-pair,sildenafil,clarithromycin,moderate,m,a,c,",
    )
    rules = load_rules(path)
    assert [r.id for r in interactions_between(["simvastatin"], ["clarithromycin"], classes_of, rules)] == ["pair-rule"]
    # a less severe pair rule does not hide the more severe class rule: both are reported, most severe first
    found = interactions_between(["clarithromycin"], ["sildenafil"], classes_of, rules)
    assert [(r.id, r.severity) for r in found] == [("class-rule", "major"), ("weak-pair", "moderate")]


def test_a_more_severe_rule_on_the_same_side_makes_a_weaker_one_redundant(tmp_path: Path) -> None:
    path = write_rules(
        tmp_path,
        "with-maoi,class:serotonergic,class:maoi,contraindicated,m,a,c,",
        "two-serotonergic,class:serotonergic,class:serotonergic,moderate,m,a,c,",
        "qt,class:qt_known_risk,class:qt_known_risk,major,m,a,c,",
        "pimozide-cyp3a4,pimozide,class:cyp3a4_strong_inhibitor,contraindicated,m,a,c,",
    )
    rules = load_rules(path)
    tags = {"selegiline": frozenset({"maoi", "serotonergic"}), "sertraline": frozenset({"serotonergic"})}
    found = interactions_between(["sertraline"], ["selegiline"], lambda i: tags.get(i, frozenset()), rules)
    assert [r.id for r in found] == ["with-maoi"]  # sertraline's side is the same in both: one statement
    # unrelated mechanisms (CYP3A4, QT) of different severity are both reported
    found = interactions_between(["pimozide"], ["clarithromycin"], classes_of, rules)
    assert [r.id for r in found] == ["pimozide-cyp3a4", "qt"]


# ---- the schema check ------------------------------------------------------------------------------------------

GOOD = "ok,warfarin,class:nsaid,major,m,a,c,"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("bad,aspirin,class:nsaid,severe,m,a,c,", "unknown severity"),
        ("bad,aspirin,class:nsaid,major,m,a,,", "empty citation"),
        ("bad,warfarin,class:no_such_class,major,m,a,c,", "unknown class id"),
        ("bad,Warfarin Sodium,class:nsaid,major,m,a,c,", "neither class:<id> nor"),
        ("bad,warfarin;,class:nsaid,major,m,a,c,", "neither class:<id> nor"),
        ("ok,aspirin,class:ppi,major,m,a,c,", "duplicate id"),
        ("bad,warfarin,warfarin,major,m,a,c,", "itself"),
        ("bad,class:nsaid,warfarin,major,m,a,c,", "same sides as rule ok"),
        ("bad,aspirin,class:ppi,major,m,a,c,Age Over 65", "context factors are snake_case"),
        ("bad,aspirin,class:ppi,major,m,a,c", "expected 8 fields"),
    ],
)
def test_the_schema_check_rejects_broken_rows(tmp_path: Path, row: str, message: str) -> None:
    path = write_rules(tmp_path, GOOD, row)
    with pytest.raises(RuleSchemaError, match=message) as caught:
        load_rules(path)
    assert "line 3" in str(caught.value)  # the offending row is named


def test_the_schema_check_rejects_a_wrong_header(tmp_path: Path) -> None:
    path = tmp_path / "rules.csv"
    path.write_text("id,a,b,severity\n", encoding="utf-8")
    with pytest.raises(RuleSchemaError, match="header"):
        load_rules(path)


def test_vocabulary_check_names_unknown_sides(tmp_path: Path) -> None:
    rules = load_rules(write_rules(tmp_path, GOOD, "two,warfarin,class:ppi,moderate,m,a,c,"))
    assert vocabulary_problems(rules, {"warfarin"}, {"nsaid", "ppi"}) == []
    assert vocabulary_problems(rules, set(), {"nsaid"}) == [
        "ok: ingredient 'warfarin' is not in the vocabulary",
        "two: ingredient 'warfarin' is not in the vocabulary",
        "two: class 'class:ppi' is not in the vocabulary",
    ]


# ---- duplicate therapy -----------------------------------------------------------------------------------------


def test_duplicate_groups() -> None:
    assert all(group.citation for group in load_duplicate_groups())
    assert duplicate_groups(classes_of("sertraline"), classes_of("escitalopram")) == ["ssri"]
    assert duplicate_groups(classes_of("lisinopril"), classes_of("losartan")) == ["raas_blocker"]
    assert duplicate_groups(classes_of("warfarin"), classes_of("apixaban")) == ["anticoagulant"]
    assert duplicate_groups(classes_of("simvastatin"), classes_of("atorvastatin")) == ["statin"]
    assert duplicate_groups(classes_of("metformin"), classes_of("lisinopril")) == []


def test_duplicate_groups_schema() -> None:
    with pytest.raises(RuleSchemaError, match="line 2"):
        parse_duplicate_groups("id,classes,citation\nbad,statin|qt_known_risk,c\n")
    with pytest.raises(RuleSchemaError, match="empty citation"):
        parse_duplicate_groups("id,classes,citation\nstatin,statin,\n")


def test_the_shipped_knowledge_is_consistent_and_a_gap_is_an_error() -> None:
    """Every rule side and duplicate group names what the vocabulary knows; a rule naming an unknown
    ingredient is reported, not silently never fired."""
    from dataclasses import replace as _replace

    from cds_service.drugs.knowledge import knowledge_problems, load_knowledge
    from cds_service.drugs.rules import RuleSet

    knowledge = load_knowledge()
    assert knowledge_problems(knowledge.vocabulary, knowledge.rules, knowledge.duplicate_groups) == []
    first = next(iter(knowledge.rules))
    broken = RuleSet([*knowledge.rules, _replace(first, id="typo-rule", side_a="simvastatine")])
    problems = knowledge_problems(knowledge.vocabulary, broken, knowledge.duplicate_groups)
    assert problems == ["typo-rule: ingredient 'simvastatine' is not in the vocabulary"]
    # a rule naming a context factor that no row of context_factors.csv defines is reported too
    undefined = RuleSet(
        [*knowledge.rules, _replace(first, id="factor-typo", side_a="aspirin", context=("age_over_9000",))]
    )
    problems = knowledge_problems(knowledge.vocabulary, undefined, knowledge.duplicate_groups)
    assert problems == ["factor-typo: context factor 'age_over_9000' is not defined"]
