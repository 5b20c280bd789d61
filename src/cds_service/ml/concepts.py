"""Concept-level fallbacks for codes the model's vocabulary does not know.

Real records carry codes the training generator never wrote: RxNorm product codes change between versions
and every EHR stocks other products ("Simvistatin 10 MG", RxNorm 316672, is simvastatin), and other builds of
Synthea code the same condition differently. An unknown code becomes the model's [UNK] token and its signal
is lost. So, before giving up on a code:

- a medication is resolved to its ingredients by the drug knowledge layer and takes the token of the
  training product with exactly the same ingredients (the most frequent one in training): a new product of
  a known ingredient is not unknown;
- any other code takes the token of a training code of the same family with the same normalised display
  ("Hypertension (disorder)" = "hypertension").

What stays unknown is counted by the familiarity guard (`ml.familiarity`), which abstains when too much is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cds_service.safety.interactions import ingredients_of
from cds_service.timeline.events import EventKind

_SEMANTIC_TAG = re.compile(r"\s*\((disorder|finding|procedure|situation|event|observable entity|regime/therapy)\)\s*$")
_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalised(display: str) -> str:
    text = _SEMANTIC_TAG.sub("", display.lower()[:200])
    return " ".join(_NON_WORD.sub(" ", text).split())


def _family(token: str) -> str:
    return token.split("/", 1)[0]


class ConceptMap:
    """Fallback token ids for unknown codes, built once from the model's vocabulary (tokens, displays and
    training counts, `vocab.json`)."""

    def __init__(self, tokens: Sequence[str], displays: Sequence[str], counts: Sequence[int]) -> None:
        by_ingredients: dict[frozenset[str], tuple[int, int]] = {}
        by_display: dict[tuple[str, str], tuple[int, int]] = {}
        for i, (token, display, count) in enumerate(zip(tokens, displays, counts, strict=True)):
            if "/" not in token or not display:
                continue
            if token.startswith("RXNORM/"):
                ingredients = frozenset(ingredients_of(display, token.removeprefix("RXNORM/")))
                if ingredients and count > by_ingredients.get(ingredients, (-1, 0))[0]:
                    by_ingredients[ingredients] = (count, i)
            key = (_family(token), normalised(display))
            if key[1] and count > by_display.get(key, (-1, 0))[0]:
                by_display[key] = (count, i)
        self._by_ingredients = {k: i for k, (_, i) in by_ingredients.items()}
        self._by_display = {k: i for k, (_, i) in by_display.items()}
        self._memo: dict[tuple[str, str], int | None] = {}

    def fallback(self, token: str, display: str, kind: EventKind) -> int | None:
        """The id of a known token for the same concept, or None (the code stays unknown)."""
        key = (token, display)
        if key not in self._memo:
            self._memo[key] = self._find(token, display, kind)
        return self._memo[key]

    def _find(self, token: str, display: str, kind: EventKind) -> int | None:
        if kind is EventKind.MEDICATION:
            rxcui = token.removeprefix("RXNORM/") if token.startswith("RXNORM/") else None
            ingredients = frozenset(ingredients_of(display, rxcui))
            if ingredients:
                return self._by_ingredients.get(ingredients)
            return None
        return self._by_display.get((_family(token), normalised(display)))
