"""Source ``profanity``: the offensive-language classifier on item texts and OCR texts."""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from pydantic import ConfigDict

from ...policy import Category, Policy
from .source import Source, categories_of


class ProfanityCategory(Category):
    model_config = ConfigDict(extra="forbid")

    source: Literal["profanity"]


class ProfanityScorer:
    def __init__(self, names: list[str]):
        from ...models.profanity import ProfanityScorer as Model

        self.names = names
        self.model = Model()

    def __call__(self, texts: Sequence[str]) -> dict[str, list[tuple[float, list[str]]]]:
        probs = self.model.score(list(texts)) if texts else np.zeros(0)
        return {name: [(float(p), []) for p in probs] for name in self.names}


def profanity_scorer(policy: Policy) -> ProfanityScorer | None:
    names = [c.name for c in categories_of(policy, "profanity")]
    return ProfanityScorer(names) if names else None


SOURCE = Source(ProfanityCategory, text_scorer=profanity_scorer)
