"""The drug vocabulary and the resolver: real-world spellings resolve, look-alikes do not cross, bad tables fail."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from cds_service.drugs.resolve import MAX_DISPLAY, MatchKind, ingredients_of
from cds_service.drugs.vocabulary import (
    VocabularyError,
    load_vocabulary,
    load_vocabulary_from,
    name_tokens,
)


def _ids(text: str) -> set[str]:
    return set(text.split())


# The class ids of the spec (CLASSES.md), by kind.
THERAPEUTIC = _ids(
    """
    statin ace_inhibitor arb beta_blocker non_dhp_ccb dhp_ccb ssri snri tca maoi nsaid cox2_inhibitor opioid
    benzodiazepine z_drug vitamin_k_antagonist doac heparin p2y12_inhibitor antiplatelet salicylate ppi h2_blocker
    nitrate pde5_inhibitor potassium_sparing_diuretic aldosterone_antagonist thiazide loop_diuretic thiopurine
    xanthine_oxidase_inhibitor macrolide fluoroquinolone azole_antifungal hiv_protease_inhibitor
    pharmacokinetic_enhancer triptan ergot antipsychotic class_iii_antiarrhythmic class_ic_antiarrhythmic
    cardiac_glycoside systemic_corticosteroid calcineurin_inhibitor mtor_inhibitor penicillin cephalosporin
    carbapenem sulfonamide_antibiotic tetracycline aminoglycoside oxazolidinone rifamycin insulin sulfonylurea
    biguanide dpp4_inhibitor sglt2_inhibitor glp1_agonist thyroid_hormone potassium_supplement anticonvulsant
    muscle_relaxant alpha_blocker antihistamine bisphosphonate methotrexate_class lithium_class colchicine_class
    5ht3_antagonist antiemetic_dopamine stimulant smoking_cessation urinary_antispasmodic cholinesterase_inhibitor
    hormonal_contraceptive alpha2_agonist integrase_inhibitor vmat2_inhibitor valproate opioid_antagonist
    hcv_protease_inhibitor fluoropyrimidine
    """
)
PHARMACOLOGY = _ids(
    """
    cyp3a4_strong_inhibitor cyp3a4_moderate_inhibitor cyp3a4_strong_inducer cyp3a4_moderate_inducer
    cyp3a4_sensitive_substrate cyp2c9_strong_inhibitor cyp2c9_moderate_inhibitor cyp2c9_inducer
    cyp2c9_sensitive_substrate cyp2c19_strong_inhibitor cyp2c19_moderate_inhibitor cyp2c19_inducer
    cyp2c19_sensitive_substrate cyp2d6_strong_inhibitor cyp2d6_moderate_inhibitor cyp2d6_sensitive_substrate
    cyp1a2_strong_inhibitor cyp1a2_moderate_inhibitor cyp1a2_inducer cyp1a2_sensitive_substrate pgp_inhibitor
    pgp_inducer pgp_substrate_narrow qt_known_risk serotonergic cns_depressant potassium_raising bleeding_risk
    nephrotoxic hypoglycemia_risk bradycardic hypotensive polyvalent_cation oct2_mate_inhibitor qt_conditional_risk
    anticholinergic oatp1b1_inhibitor
    """
)


def ids(display: str | None, rxcui: str | None = None) -> tuple[str, ...]:
    return ingredients_of(display, rxcui).ingredients


# ---- the vocabulary -------------------------------------------------------------------------------------------------


def test_vocabulary_is_large_and_uses_exactly_the_spec_classes() -> None:
    vocabulary = load_vocabulary()
    assert load_vocabulary() is vocabulary  # loaded once
    assert len(vocabulary.ingredients) >= 300
    assert {c.id for c in vocabulary.classes.values() if c.kind == "therapeutic"} == THERAPEUTIC
    assert {c.id for c in vocabulary.classes.values() if c.kind == "pharmacology"} == PHARMACOLOGY
    for ingredient in vocabulary.ingredients.values():
        assert ingredient.classes <= vocabulary.classes.keys(), ingredient.id
        assert ingredient.rxcui is None or ingredient.rxcui.isdigit(), ingredient.id
        assert ingredient.citation or not ingredient.classes, ingredient.id
    with_code = [i for i in vocabulary.ingredients.values() if i.rxcui]
    assert len(with_code) >= 300


def test_vocabulary_lookups() -> None:
    vocabulary = load_vocabulary()
    warfarin = vocabulary.by_rxcui("11289")
    assert warfarin is not None and warfarin.id == "warfarin"
    assert vocabulary.by_rxcui("855332") is None  # a product (SCD) code, not an ingredient
    assert vocabulary.lookup("Coumadin") == ("warfarin",)
    assert vocabulary.lookup("HCTZ") == ("hydrochlorothiazide",)
    assert vocabulary.lookup("St. John's Wort") == ("st johns wort",)
    assert set(vocabulary.lookup("Bactrim")) == {"sulfamethoxazole", "trimethoprim"}  # a combination brand
    assert vocabulary.lookup("no such drug") == ()
    assert {"simvastatin", "atorvastatin", "rosuvastatin"} <= set(vocabulary.members("statin"))
    with pytest.raises(KeyError):
        vocabulary.members("not_a_class")
    assert vocabulary.classes_of("nonexistent") == frozenset()
    ingredient = vocabulary.ingredient("insulin glargine")
    assert ingredient is not None and ingredient.rxcui == "274783"


@pytest.mark.parametrize(
    ("ingredient", "present", "absent"),
    [
        ("clarithromycin", {"macrolide", "cyp3a4_strong_inhibitor", "pgp_inhibitor", "qt_known_risk"}, set()),
        ("azithromycin", {"macrolide", "qt_known_risk"}, {"cyp3a4_strong_inhibitor", "cyp3a4_moderate_inhibitor"}),
        ("erythromycin", {"macrolide", "cyp3a4_moderate_inhibitor"}, {"cyp3a4_strong_inhibitor"}),
        ("simvastatin", {"statin", "cyp3a4_sensitive_substrate"}, set()),
        ("rosuvastatin", {"statin"}, {"cyp3a4_sensitive_substrate"}),
        ("warfarin", {"vitamin_k_antagonist", "bleeding_risk", "cyp2c9_sensitive_substrate"}, set()),
        ("fluconazole", {"azole_antifungal", "cyp2c9_moderate_inhibitor", "cyp2c19_strong_inhibitor"}, set()),
        ("ritonavir", {"hiv_protease_inhibitor", "pharmacokinetic_enhancer", "cyp3a4_strong_inhibitor"}, set()),
        ("celecoxib", {"nsaid", "cox2_inhibitor", "bleeding_risk"}, set()),
        ("aspirin", {"salicylate", "antiplatelet", "bleeding_risk"}, {"nsaid"}),
        ("potassium chloride", {"potassium_supplement", "potassium_raising"}, set()),
        ("spironolactone", {"aldosterone_antagonist", "potassium_raising"}, set()),
        ("linezolid", {"oxazolidinone", "serotonergic"}, {"maoi"}),
        ("tramadol", {"opioid", "serotonergic", "cns_depressant"}, set()),
        ("digoxin", {"cardiac_glycoside", "pgp_substrate_narrow"}, set()),
        ("rifampin", {"rifamycin", "cyp3a4_strong_inducer", "pgp_inducer"}, set()),
    ],
)
def test_key_class_memberships(ingredient: str, present: set[str], absent: set[str]) -> None:
    classes = load_vocabulary().classes_of(ingredient)
    assert present <= classes, present - classes
    assert not absent & classes, absent & classes


# ---- real-world spellings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("display", "expected"),
    [
        ("Simvastatin 20 MG Oral Tablet [Zocor]", ("simvastatin",)),
        ("Warfarin Sodium 5 MG", ("warfarin",)),
        ("warfarin sodium 5 MG Oral Tablet", ("warfarin",)),
        ("losartan potassium", ("losartan",)),
        ("Amlodipine 5 MG / Atorvastatin 10 MG Oral Tablet", ("amlodipine", "atorvastatin")),
        (
            "{4 (Ethinyl Estradiol 0.035 MG / Norethindrone 0.5 MG Oral Tablet) / "
            "2 (Inert Ingredients 1 MG Oral Tablet) } Pack",
            ("ethinyl estradiol", "norethindrone"),
        ),
        ("oxyCODONE", ("oxycodone",)),
        ("hydrOXYzine", ("hydroxyzine",)),
        ("Sertraline 100MG", ("sertraline",)),
        ("Simvistatin 10 MG", ("simvastatin",)),
        ("Lisinopril 10 MG Oral Tablet", ("lisinopril",)),
        ("Hydrochlorothiazide 25 MG / Losartan Potassium 100 MG Oral Tablet", ("hydrochlorothiazide", "losartan")),
        ("24 HR Metoprolol Succinate 50 MG Extended Release Oral Tablet", ("metoprolol",)),
        ("Acetaminophen 325 MG / oxyCODONE Hydrochloride 5 MG Oral Tablet", ("acetaminophen", "oxycodone")),
        ("insulin glargine 100 UNT/ML Pen Injector [Lantus]", ("insulin glargine",)),
        ("Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet", ("amoxicillin", "clavulanate")),
        ("Clopidogrel 75 MG Oral Tablet [Plavix]", ("clopidogrel",)),
        ("Potassium Chloride 20 MEQ Extended Release Oral Tablet", ("potassium chloride",)),
        ("Sodium Bicarbonate 650 MG Oral Tablet", ("sodium bicarbonate",)),
        ("Magnesium Sulfate 500 MG/ML Injectable Solution", ("magnesium sulfate",)),
        ("Esomeprazole Magnesium 40 MG Delayed Release Oral Capsule", ("esomeprazole",)),
        ("Rosuvastatin Calcium 10 MG Oral Tablet [Crestor]", ("rosuvastatin",)),
        ("doxycycline hyclate 100 MG", ("doxycycline",)),
        ("amLODIPine Besylate 10 MG Oral Tablet", ("amlodipine",)),
        ("enalapril maleate 10 MG Oral Tablet", ("enalapril",)),
        ("Zolpidem Tartrate 10 MG Oral Tablet", ("zolpidem",)),
        ("Doxazosin Mesylate 4 MG Oral Tablet", ("doxazosin",)),
        ("Quetiapine Fumarate 100 MG Oral Tablet", ("quetiapine",)),
        ("medroxyPROGESTERone acetate 150 MG/ML Injection", ("medroxyprogesterone",)),
        ("Morphine Sulfate 5 MG/ML Injection", ("morphine",)),
        ("Sildenafil Citrate 20 MG Oral Tablet", ("sildenafil",)),
        ("Ipratropium Bromide 0.5 MG/ML Inhalation Solution", ("ipratropium",)),
        (
            "Breath-Actuated 120 ACTUAT beclomethasone dipropionate 0.04 MG/ACTUAT Metered Dose Inhaler",
            ("beclomethasone",),
        ),
        ("Divalproex Sodium 500 MG Delayed Release Oral Tablet", ("valproic acid",)),
        ("Levothyroxine Sodium 0.075 MG Oral Tablet", ("levothyroxine",)),
        ("Penicillin V Potassium 500 MG Oral Tablet", ("penicillin v",)),
        ("tenofovir disoproxil fumarate 300 MG Oral Tablet", ("tenofovir",)),
        ("heparin sodium, porcine 5000 UNT/ML Injection", ("heparin",)),
        ("Sulfamethoxazole / Trimethoprim (Bactrim)", ("sulfamethoxazole", "trimethoprim")),
        ("Warfarin (Coumadin)", ("warfarin",)),
        ("Acetaminophen/Hydrocodone", ("acetaminophen", "hydrocodone")),
        ("Percocet 5/325", ("acetaminophen", "oxycodone")),  # a brand lists its ingredients in table order
        ("Camila 28 Day Pack", ("norethindrone",)),
        ("Levora 0.15/30 28 Day Pack", ("ethinyl estradiol", "levonorgestrel")),
        ("Cipro 500", ("ciprofloxacin",)),
        ("Azithromycin 250mg", ("azithromycin",)),
        ("HCTZ 25 MG", ("hydrochlorothiazide",)),
        ("ASA 81 MG", ("aspirin",)),
        ("APAP 500 MG", ("acetaminophen",)),
        ("Vitamin D (Cholecalciferol)", ("cholecalciferol",)),
        (
            "insulin isophane, human 70 UNT/ML / insulin, regular, human 30 UNT/ML Injectable Suspension [Humulin]",
            ("insulin isophane", "insulin human"),
        ),
        ("NDA020503 200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler [Proventil]", ("albuterol",)),
        ("Simvastatin20MG", ("simvastatin",)),
        ("Estradiol 1 MG Oral Tablet", ("estradiol",)),
    ],
)
def test_real_world_spellings_resolve(display: str, expected: tuple[str, ...]) -> None:
    assert ids(display) == expected


def test_how_each_ingredient_was_matched() -> None:
    zocor = ingredients_of("Zocor 20 MG Oral Tablet")
    assert zocor.ingredients == ("simvastatin",) and zocor.how("simvastatin") is MatchKind.BRAND
    assert ingredients_of("Simvastatin 20 MG [Zocor]").how("simvastatin") is MatchKind.NAME  # strongest wins
    assert ingredients_of("HCTZ 25 MG").how("hydrochlorothiazide") is MatchKind.SYNONYM
    typo = ingredients_of("Simvistatin 10 MG")
    assert typo.how("simvastatin") is MatchKind.FUZZY and typo.matches[0].text == "simvistatin"
    coded = ingredients_of(None, "11289")
    assert coded.ingredients == ("warfarin",) and coded.how("warfarin") is MatchKind.CODE
    assert not coded.conflict


def test_codes_map_directly_and_product_codes_fall_back_to_the_display() -> None:
    assert ids("Warfarin Sodium 5 MG Oral Tablet", "11289") == ("warfarin",)
    # 316672 is the SCD Java Synthea writes as "Simvistatin 10 MG": not an ingredient code, so the display decides
    assert ids("Simvistatin 10 MG", "316672") == ("simvastatin",)
    assert ids(None, "316672") == ()
    assert ids("Lisinopril 10 MG", "not a code") == ("lisinopril",)
    # code and display disagree: both are kept (a safety check would rather see too much) and flagged
    clash = ingredients_of("Clopidogrel 75 MG Oral Tablet", "2670")  # 2670 is codeine
    assert clash.ingredients == ("codeine", "clopidogrel") and clash.conflict


def test_routes_and_remainder() -> None:
    cream = ingredients_of("ketoconazole 20 MG/ML Topical Cream")
    assert cream.ingredients == ("ketoconazole",) and cream.routes == ("topical",) and cream.complete
    inert = ingredients_of("Inert Ingredients 1 MG Oral Tablet")
    assert inert.unknown and inert.remainder == ("inert ingredients",)
    pack = ingredients_of(
        "{4 (Ethinyl Estradiol 0.035 MG / Norethindrone 0.5 MG Oral Tablet) / "
        "2 (Inert Ingredients 1 MG Oral Tablet) } Pack"
    )
    assert pack.remainder == ("inert ingredients",) and not pack.unknown and not pack.complete
    calcium = ingredients_of("Calcium 500 MG")  # a salt word alone is reported, not silently dropped
    assert calcium.unknown and calcium.remainder == ("calcium",)
    unknown_brand = ingredients_of("Ibuprofen 400 MG Oral Tablet [Ibu]")
    assert unknown_brand.ingredients == ("ibuprofen",) and unknown_brand.remainder == ("ibu",)
    for empty in (None, "", "   ", "100 MG Oral Tablet"):
        nothing = ingredients_of(empty)
        assert nothing.unknown and nothing.remainder == ()


# ---- fuzzy matching, both ways --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "ingredient"),
    [
        ("Simvistatin", "simvastatin"),
        ("Lisinoprel", "lisinopril"),
        ("Metforman", "metformin"),
        ("metfromin", "metformin"),  # transposition
        ("Amoxicilin", "amoxicillin"),
        ("hydroxizine", "hydroxyzine"),
        ("Clonodine", "clonidine"),
        ("atorvastatine", "atorvastatin"),
        ("Gabapentine", "gabapentin"),
        ("Omeprazol 20 MG", "omeprazole"),
        ("Amlodapine 5 MG", "amlodipine"),  # the nearest wins: amoxapine is two edits away, amlodipine one
    ],
)
def test_misspellings_match(typo: str, ingredient: str) -> None:
    resolution = ingredients_of(typo)
    assert resolution.ingredients == (ingredient,) and resolution.how(ingredient) is MatchKind.FUZZY


@pytest.mark.parametrize(
    ("display", "expected"),
    [
        ("hydroxyzine", ("hydroxyzine",)),
        ("hydralazine", ("hydralazine",)),
        ("clonidine", ("clonidine",)),
        ("clozapine", ("clozapine",)),
        ("Klonopin", ("clonazepam",)),
        ("metformin", ("metformin",)),
        ("metoprolol", ("metoprolol",)),
        ("tramadol", ("tramadol",)),
        ("trazodone", ("trazodone",)),
        ("Celexa", ("citalopram",)),
        ("Celebrex", ("celecoxib",)),
        ("prednisone", ("prednisone",)),
        ("prednisolone", ("prednisolone",)),
        ("cyclosporine", ("cyclosporine",)),
        ("cycloserine", ("cycloserine",)),
        ("Lamictal", ("lamotrigine",)),
        ("Lamisil", ("terbinafine",)),
        ("Zyprexa", ("olanzapine",)),
        ("Zyrtec", ("cetirizine",)),
    ],
)
def test_look_alike_drugs_do_not_cross_match(display: str, expected: tuple[str, ...]) -> None:
    resolution = ingredients_of(display)
    assert resolution.ingredients == expected
    assert resolution.how(expected[0]) is not MatchKind.FUZZY


@pytest.mark.parametrize(
    "display",
    [
        "Estriol 1 MG",  # a real drug two edits from estradiol: too far for a 7-letter word
        "prednisolne",  # one edit from both prednisone and prednisolone: ambiguous
        "Inhalant",
        "Chewable",
        "Ingredients",
        "Xyzabc 10 MG",
        "hydroxyzalamine",  # three edits from hydroxyzine
    ],
)
def test_unknown_or_ambiguous_words_resolve_to_nothing(display: str) -> None:
    resolution = ingredients_of(display)
    assert resolution.unknown
    assert all(m.kind is not MatchKind.FUZZY for m in resolution.matches)


def test_short_words_are_never_fuzzy_matched() -> None:
    assert ids("Asprin") == ("aspirin",)  # 6 letters: one edit allowed
    assert ids("Bactrm") == ()  # brands are matched exactly only
    assert ids("Lasx") == ()  # under 6 letters


# ---- hostile input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "display",
    [
        "A" * 1_000_000,
        "Warfarin Sodium 5 MG / " * 50_000,
        "[" * 500_000 + "]" * 500_000,
        "{(" * 400_000,
        "1." * 500_000,
        "simvistatin " * 100_000,
        "\u0301" * 1_000_000,
    ],
)
def test_a_one_megabyte_display_resolves_quickly(display: str) -> None:
    start = time.perf_counter()
    resolution = ingredients_of(display)
    assert time.perf_counter() - start < 2.0
    assert resolution.truncated
    assert len(" ".join(resolution.remainder)) <= MAX_DISPLAY


def test_displays_are_capped_before_caching() -> None:
    head = "Warfarin Sodium 5 MG Oral Tablet "
    first = ingredients_of(head + "x" * 1_000_000)
    second = ingredients_of(head + "y" * 1_000_000)
    assert first.ingredients == ("warfarin",)
    assert ingredients_of(head + "x" * 2_000_000) is first  # same capped key: one cache entry
    assert second.ingredients == ("warfarin",)


# ---- the schema check -----------------------------------------------------------------------------------------------


def _packaged(name: str) -> str:
    return resources.files("cds_service.drugs").joinpath("data", name).read_text(encoding="utf-8")


def _write(tmp_path: Path, classes: str, ingredients: str) -> tuple[Path, Path]:
    classes_path, ingredients_path = tmp_path / "classes.csv", tmp_path / "ingredients.csv"
    classes_path.write_text(classes, encoding="utf-8")
    ingredients_path.write_text(ingredients, encoding="utf-8")
    return classes_path, ingredients_path


def test_packaged_copies_load_through_the_path_loader(tmp_path: Path) -> None:
    vocabulary = load_vocabulary_from(*_write(tmp_path, _packaged("classes.csv"), _packaged("ingredients.csv")))
    assert vocabulary.ingredients.keys() == load_vocabulary().ingredients.keys()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("zzdrug,,no_such_class,,,FDA label", "unknown class id"),
        ("warfarin,,,,,", "duplicate ingredient"),
        (",,,,,", "empty ingredient id"),
        ("Zzdrug,,,,,", "lowercase"),
        ("zz  drug,,,,,", "lowercase"),
        ("zzdrug,12a4,,,,", "rxcui"),
        ("zzdrug,0123,,,,", "rxcui"),
        ("zzdrug,11289,,,,", "already 'warfarin'"),
        ("zzdrug,,,coumadin,,", "collides with the brand of 'warfarin'"),
        ("zzdrug,,,simvastatin,,", "collides with the name of 'simvastatin'"),
        ("zzdrug,,,,hctz,", "collides with the synonym of 'hydrochlorothiazide'"),
        ("zzdrug,,,,warfarin,", "collides with the name of 'warfarin'"),
        ("zzdrug,,,zzdrug,,", "repeats its own name"),
        ("zzdrug,,,,250 500,", "has no letters"),
        ("zzdrug,,statin,,,", "without a citation"),
        ("zzdrug,,statin|statin,,,ATC", "listed twice"),
        ("zzdrug,,,a||b,,", "empty synonym"),
        ("zzdrug,,", "expected 6 fields"),
    ],
)
def test_schema_check_names_the_bad_row(tmp_path: Path, row: str, message: str) -> None:
    ingredients = _packaged("ingredients.csv").rstrip("\n") + "\n" + row + "\n"
    line = ingredients.count("\n")
    with pytest.raises(VocabularyError) as raised:
        load_vocabulary_from(*_write(tmp_path, _packaged("classes.csv"), ingredients))
    assert message in str(raised.value)
    assert f"line {line}" in str(raised.value)


def test_a_brand_may_be_shared_by_the_ingredients_of_a_combination(tmp_path: Path) -> None:
    ingredients = _packaged("ingredients.csv").rstrip("\n") + "\nzzdrug,,,,bactrim,\n"
    vocabulary = load_vocabulary_from(*_write(tmp_path, _packaged("classes.csv"), ingredients))
    assert set(vocabulary.lookup("bactrim")) == {"sulfamethoxazole", "trimethoprim", "zzdrug"}


@pytest.mark.parametrize(
    ("classes_edit", "message"),
    [
        (lambda text: text.replace("id,kind,label,citation", "id,kind,label"), "header"),
        (lambda text: text + "statin,therapeutic,again,ATC\n", "duplicate class id"),
        (lambda text: text + "new_class,clinical,label,ATC\n", "kind must be one of"),
        (lambda text: text + "Bad-Id,therapeutic,label,ATC\n", "lowercase words"),
        (lambda text: text + "new_class,therapeutic,,ATC\n", "empty label or citation"),
        (lambda text: text.replace("\nstatin,", "\nstatins,", 1), "unknown class id(s) 'statin'"),
    ],
)
def test_schema_check_rejects_a_bad_classes_table(
    tmp_path: Path, classes_edit: Callable[[str], str], message: str
) -> None:
    classes = classes_edit(_packaged("classes.csv"))
    with pytest.raises(VocabularyError, match=r"classes\.csv|ingredients\.csv") as raised:
        load_vocabulary_from(*_write(tmp_path, classes, _packaged("ingredients.csv")))
    assert message in str(raised.value)


def test_name_tokens_normalise_case_accents_punctuation_and_glued_doses() -> None:
    assert name_tokens("hydrOXYzine HCl 25MG") == ("hydroxyzine", "hcl", "25", "mg")
    assert name_tokens("St. John\u2019s Wort") == ("st", "johns", "wort")
    assert name_tokens("Ethinyl Estradiol 0.035 MG") == ("ethinyl", "estradiol", "0.035", "mg")
    assert name_tokens("Caf\u00e9ine") == ("cafeine",)
