"""Source ``words``: word lists and regexes (``mmpipe.policy.words``) on item texts and OCR
texts; a match scores 1."""

from __future__ import annotations

import re
from typing import Literal, Sequence

from pydantic import ConfigDict, Field, field_validator, model_validator

from ...policy import Category, Policy, WordMatcher
from .source import Source, categories_of


class WordsCategory(Category):
    model_config = ConfigDict(extra="forbid")

    source: Literal["words"]
    words: list[str] = Field(default_factory=list)
    word_lists: list[str] = Field(default_factory=list)  # names of the policy's word_lists
    patterns: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"bad regex {p!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _lists(self) -> "WordsCategory":
        if not (self.words or self.word_lists or self.patterns):
            raise ValueError("source 'words' needs words, word_lists or patterns")
        return self

    @classmethod
    def misplaced(cls, owner: str, fields: list[str], source: str) -> str:
        return f"words/word_lists/patterns only apply to source 'words', not {source!r}"

    def bad_reference(self, policy: Policy) -> str | None:
        for name in self.word_lists:
            if name not in policy.word_lists:
                return (f"word_lists: no word list {name!r} "
                        f"(defined: {', '.join(policy.word_lists) or 'none'})")
        return None

    def words_in(self, policy: Policy) -> list[str]:
        """Its own words, then those of the word lists it names."""
        return [*self.words, *(w for name in self.word_lists for w in policy.word_lists[name])]


class WordsScorer:
    def __init__(self, policy: Policy):
        self.matchers = {c.name: WordMatcher(c.words_in(policy), c.patterns)
                         for c in categories_of(policy, "words")}

    def __call__(self, texts: Sequence[str]) -> dict[str, list[tuple[float, list[str]]]]:
        found = {}
        for name, matcher in self.matchers.items():
            hits = [matcher.find(t) for t in texts]
            found[name] = [(1.0 if h else 0.0, h) for h in hits]
        return found


def words_scorer(policy: Policy) -> WordsScorer | None:
    return WordsScorer(policy) if categories_of(policy, "words") else None


SOURCE = Source(WordsCategory, text_scorer=words_scorer)
