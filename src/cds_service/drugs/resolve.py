"""Which ingredients a drug is: from its RxNorm code, or from the display text EHRs actually write.

What: `ingredients_of(display, rxcui)` returns a `Resolution`: the vocabulary ingredient ids found (ordered by
first appearance, deduplicated), how each was recognised (`MatchKind`: code, name, synonym, brand, fuzzy), the
words that were not recognised (`remainder`, so that a caller can say "unknown drug" instead of "no
interaction") and the routes the dose form names ("topical", "ophthalmic"...).

Why this shape: no RxNorm server is reachable at run time, and real records name drugs as RxNorm product codes
whose displays carry brands in brackets ("Simvastatin 20 MG Oral Tablet [Zocor]"), salts and esters ("Warfarin
Sodium 5 MG"), combinations ("Amlodipine 5 MG / Atorvastatin 10 MG Oral Tablet") and packs ("{4 (Ethinyl
Estradiol 0.035 MG / Norethindrone 0.5 MG Oral Tablet) / 2 (Inert Ingredients 1 MG Oral Tablet) } Pack"),
tall-man lettering ("oxyCODONE"), doses glued to names ("Sertraline 100MG") and misspellings ("Simvistatin").

How: an RxNorm ingredient (IN) code maps directly; a product code we do not know falls back to the display. The
display is capped at `MAX_DISPLAY` characters before anything else (and before the per-input cache), split on
"/", braces and parentheses, bracketed brand text is looked up as a phrase of its own, and each part is
tokenised (`name_tokens`: casefolded, so tall-man is undone; letters and digits split, so "100MG" is "100 mg").
Tokens are matched longest vocabulary phrase first, so "potassium chloride" and "sodium bicarbonate" are
ingredients while "potassium" after "losartan" is a salt. Unmatched numbers, units, dose forms and fillers are
dropped; salt and ester words are dropped from a part that named an ingredient and reported otherwise. A word
left over gets a bounded fuzzy match (optimal string alignment distance): only for words of at least 6 letters,
at most 1 edit for 6-8 letters and 2 for longer (the bound of the shorter of the two words), never for a word the
vocabulary uses exactly ("glargine"), only to a word with the same first letter (misspellings keep it, while
different drugs two edits apart often differ there: protamine/ergotamine, sufentanil/alfentanil,
reteplase/alteplase), and only when exactly one ingredient is that close: "simvistatin" is simvastatin, while
"prednisolne" (one edit from both prednisone and prednisolone) is no match. Every regex is linear (no nested
quantifiers) and the work per display is bounded, so a hostile display costs little.

Code and display together: the coded ingredient comes first and the display's ingredients are added (a safety
check should rather see one ingredient too many than miss one); when the display names ingredients but not the
coded one, `Resolution.conflict` says so, so that a caller can report the record as inconsistent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from cds_service.drugs.vocabulary import MatchKind, Vocabulary, load_vocabulary, name_tokens

__all__ = ["MAX_DISPLAY", "Match", "MatchKind", "Resolution", "ingredients_of"]

MAX_DISPLAY = 300  # characters of a display looked at (RxNorm's longest names are about 250)
_MAX_CODE = 16
_MAX_FUZZY_WORDS = 12  # leftover words tried per display
_MAX_FUZZY_LENGTH = 40
_CACHE_SIZE = 8192

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_PARTS = re.compile(r"[/{}()]")  # combinations "A / B" and the pack syntax "{n (A / B) / m (C)} Pack"
_RXCUI = re.compile(r"[1-9][0-9]{0,8}")

_STRENGTH = {kind: rank for rank, kind in enumerate(MatchKind)}
_Add = Callable[[str, MatchKind, str], None]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Units, strengths and counts ("mg", "unt", "actuat", "hr", "meq").
_UNITS = _words(
    """
    mg mcg ug g gm gram grams kg ml l liter litre dl meq mmol mol unt unit units iu hr hrs hour hours day days
    wk week weeks min mins actuat actuation actuations puff puffs dose doses drop drops cm mm square oz lb per each
    of and with in for to or plus gtt tsp tbsp cc
    """
)
# Dose forms and their route words; a route word also sets `Resolution.routes`.
_ROUTES = {
    **dict.fromkeys(_words("oral orally tablet tablets tab tabs capsule capsules cap caps chewable caplet"), "oral"),
    **dict.fromkeys(_words("lozenge troche elixir syrup granules sprinkle"), "oral"),
    **dict.fromkeys(_words("topical cream ointment lotion shampoo foam paste cutaneous dermal"), "topical"),
    **dict.fromkeys(_words("ophthalmic eye"), "ophthalmic"),
    **dict.fromkeys(_words("otic ear"), "otic"),
    **dict.fromkeys(_words("nasal intranasal"), "nasal"),
    **dict.fromkeys(_words("inhalation inhaler inhalant inhaled nebulizer nebuliser metered"), "inhalation"),
    **dict.fromkeys(_words("injection injectable injector syringe prefilled infusion intravenous iv"), "injection"),
    **dict.fromkeys(_words("intramuscular im subcutaneous subcut sc sq cartridge vial ampule auto"), "injection"),
    **dict.fromkeys(_words("transdermal patch"), "transdermal"),
    **dict.fromkeys(_words("sublingual buccal"), "sublingual"),
    **dict.fromkeys(_words("vaginal intravaginal"), "vaginal"),
    **dict.fromkeys(_words("rectal suppository enema"), "rectal"),
    **dict.fromkeys(_words("intrauterine"), "intrauterine"),
}
_FORMS = _words(
    """
    solution suspension emulsion liquid concentrate powder packet drug implant system device insert ring pen
    delayed extended release released sustained controlled immediate disintegrating orally film coated enteric
    dispersible effervescent soluble dry mist spray sprays gel jelly pad swab wafer strip kit pack bag mucosal
    irrigation piggyback premix premixed abuse deterrent breath actuated preservative free medicated wash soap
    stick tape dressing bead beads pellet pellets microspheres liposomal depot reconstituted diluent bottle
    er xr sr cr dr xl la ir odt ec hfa diskus ellipta respimat handihaler flexpen kwikpen solostar flextouch
    autoinjector usp nf bp ep modified porcine bovine recombinant human rdna sterile generic nda anda bla
    strength extra maximum regular fe product table sliding scale ds ss forte
    """
)
# Salts, esters and hydrates: the ingredient is the word(s) before them. Where a salt is itself the ingredient
# ("potassium chloride", "magnesium sulfate") the vocabulary phrase matches first.
_SALTS = _words(
    """
    sodium disodium potassium dipotassium calcium magnesium lithium zinc aluminum ammonium hydrochloride
    dihydrochloride monohydrochloride hcl hydrobromide hbr bromide chloride iodide fluoride hyclate besylate
    besilate maleate succinate hemisuccinate tartrate bitartrate hemitartrate mesylate mesilate dimesylate
    fumarate hemifumarate acetate diacetate sulfate sulphate bisulfate citrate dicitrate phosphate diphosphate
    nitrate carbonate bicarbonate gluconate lactate lactobionate oxalate tosylate malate succinic pamoate
    embonate stearate palmitate estolate ethylsuccinate propionate dipropionate valerate furoate acetonide
    cypionate enanthate undecanoate decanoate benzoate xinafoate trihydrate dihydrate monohydrate hemihydrate
    hydrate anhydrous macrocrystals saccharate aspartate tromethamine trometamol meglumine benzathine procaine
    etexilate mofetil axetil proxetil pivoxil medoxomil cilexetil disoproxil alafenamide teoclate orotate
    glycinate tannate polistirex hippurate sulfosalicylate
    """
)


@dataclass(frozen=True, slots=True)
class Match:
    """How one ingredient was recognised: its strongest match and the words (or code) that made it."""

    ingredient: str
    kind: MatchKind
    text: str


@dataclass(frozen=True, slots=True)
class Resolution:
    """The ingredients of one drug, how each was found, and what of its display was not understood."""

    ingredients: tuple[str, ...]
    matches: tuple[Match, ...]  # one per ingredient, in the same order
    remainder: tuple[str, ...]  # unrecognised words, one entry per part of the display
    routes: tuple[str, ...] = ()  # routes named by the dose form, in order of appearance
    truncated: bool = False  # the display was longer than MAX_DISPLAY and only its start was read
    conflict: bool = False  # the RxNorm code's ingredient is not among those the display names

    @property
    def unknown(self) -> bool:
        """Nothing recognised: the caller knows no more than the drug's name."""
        return not self.ingredients

    @property
    def complete(self) -> bool:
        """At least one ingredient and no unrecognised words."""
        return bool(self.ingredients) and not self.remainder

    def how(self, ingredient: str) -> MatchKind | None:
        return next((m.kind for m in self.matches if m.ingredient == ingredient), None)


def ingredients_of(
    display: str | None, rxcui: str | None = None, *, vocabulary: Vocabulary | None = None
) -> Resolution:
    """Resolve a drug to vocabulary ingredients; see the module docstring. Never raises on odd input."""
    text = display[:MAX_DISPLAY] if isinstance(display, str) else ""
    truncated = isinstance(display, str) and len(display) > MAX_DISPLAY
    code = rxcui[:_MAX_CODE].strip() if isinstance(rxcui, str) else ""
    if not _RXCUI.fullmatch(code):
        code = ""
    return _resolve(text, code, truncated, vocabulary or load_vocabulary())


@lru_cache(maxsize=_CACHE_SIZE)
def _resolve(text: str, code: str, truncated: bool, vocabulary: Vocabulary) -> Resolution:
    found: dict[str, Match] = {}
    from_display: set[str] = set()

    def add(ingredient: str, kind: MatchKind, matched: str) -> None:
        if kind is not MatchKind.CODE:
            from_display.add(ingredient)
        previous = found.get(ingredient)
        if previous is None or _STRENGTH[kind] < _STRENGTH[previous.kind]:
            found[ingredient] = Match(ingredient, kind, matched)  # an existing key keeps its position

    coded = vocabulary.by_rxcui(code) if code else None
    if coded is not None:
        add(coded.id, MatchKind.CODE, code)

    parts = [*_PARTS.split(_BRACKETS.sub(" / ", text)), *_BRACKETS.findall(text)]
    remainder: list[str] = []
    routes: list[str] = []
    fuzzy_budget = _MAX_FUZZY_WORDS
    for part in parts:
        tokens = name_tokens(part)
        matched, leftovers = _match_phrases(tokens, vocabulary, add)
        unknown: list[str] = []
        for token in leftovers:
            if token[0].isdigit() or len(token) == 1 or token in _UNITS or token in _FORMS:
                continue
            route = _ROUTES.get(token)
            if route is not None:
                if route not in routes:
                    routes.append(route)
                continue
            if token in _SALTS:
                if not matched:
                    unknown.append(token)
                continue
            if fuzzy_budget > 0:
                fuzzy_budget -= 1
                guess = _fuzzy(token, vocabulary)
                if guess is not None:
                    add(guess, MatchKind.FUZZY, token)
                    matched = True
                    continue
            unknown.append(token)
        if unknown:
            remainder.append(" ".join(unknown))
    return Resolution(
        ingredients=tuple(found),
        matches=tuple(found.values()),
        remainder=tuple(remainder),
        routes=tuple(routes),
        truncated=truncated,
        conflict=coded is not None and bool(from_display) and coded.id not in from_display,
    )


def _match_phrases(tokens: tuple[str, ...], vocabulary: Vocabulary, add: _Add) -> tuple[bool, list[str]]:
    """Longest vocabulary phrase at each position; returns whether any matched and the tokens left over."""
    matched = False
    leftovers: list[str] = []
    i = 0
    longest = vocabulary.max_phrase_tokens
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            hits = vocabulary.phrase_hits(tokens[i : i + n])
            if hits:
                phrase = " ".join(tokens[i : i + n])
                for hit in hits:
                    add(hit.ingredient, hit.kind, phrase)
                matched = True
                i += n
                break
        else:
            leftovers.append(tokens[i])
            i += 1
    return matched, leftovers


def _edit_bound(length: int) -> int:
    return 1 if length <= 8 else 2


def _fuzzy(word: str, vocabulary: Vocabulary) -> str | None:
    """The ingredient whose single-word name or synonym (same first letter) is nearest within the edit bound, if
    it is the only one at that distance ("amlodapine": amlodipine at 1 edit, not amoxapine at 2), else None."""
    n = len(word)
    if n < 6 or n > _MAX_FUZZY_LENGTH or not word.isalpha() or word in vocabulary.known_words:
        return None
    reach = _edit_bound(n)
    within: list[tuple[str, str, int]] = []  # (known word, ingredient, its own bound)
    for length in range(n - reach, n + reach + 1):
        for known, ingredient in vocabulary.fuzzy_words(length):
            bound = min(reach, _edit_bound(len(known)))
            if known[0] == word[0] and _within(word, known, bound):
                within.append((known, ingredient, bound))
    for distance in range(1, reach + 1):  # nearest first; a tie at the nearest distance is no match
        nearest = {
            ingredient for known, ingredient, bound in within if distance <= bound and _within(word, known, distance)
        }
        if nearest:
            return next(iter(nearest)) if len(nearest) == 1 else None
    return None


def _within(a: str, b: str, bound: int) -> bool:
    """Optimal string alignment distance (Damerau-Levenshtein, adjacent transpositions) of a and b <= bound."""
    if abs(len(a) - len(b)) > bound:
        return False
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            best = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                best = min(best, before[j - 2] + 1)
            current[j] = best
        if min(current) > bound:
            return False
        before, previous = previous, current
    return previous[-1] <= bound
