"""The moderation policy: categories with their source model and thresholds, word lists,
temporal aggregation and escalation to a judge. Validated at load, so a bad policy stops the job
before any model loads."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..bank.hashing import HASHES
from ..judge.client import JudgeSettings

MEDIA = ("image", "video", "text")
VISUAL_SOURCES = ("open_nsfw", "clip", "bank")
# Hamming distances at which a hash matches a bank entry: PDQ's is Meta's recommended 31 of 256.
MAX_DISTANCE = {"pdq": 31, "phash": 10}
# Cosine similarity at which a frame's CLIP image vector matches a bank entry's (hash: clip).
# CLIP keeps re-encoded and resized copies of an image close to 1 and photos that only share a
# subject lower, so 0.9 leans to copies; it is a starting point, not a figure measured here (the
# tests' CLIP is tiny and random): check your model's copies (bank_match shows each similarity).
MIN_SIMILARITY = 0.9
_NAME = re.compile(r"^[a-z][a-z0-9_/-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Aggregation(_Strict):
    method: Literal["max", "mean_topk"] = "max"
    top_k: int = Field(3, ge=1)
    segment_gap_s: float = Field(1.0, ge=0)


class Prompts(_Strict):
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)


class Category(_Strict):
    name: str
    source: Literal["open_nsfw", "profanity", "words", "clip", "bank"]
    media: list[Literal["image", "video", "text"]] = Field(min_length=1)
    review: float = Field(ge=0, le=1)
    block: float = Field(ge=0, le=2)  # above 1: never blocks, at most review
    words: list[str] = Field(default_factory=list)
    word_lists: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    prompts: Prompts | None = None
    temperature: float = Field(100.0, gt=0)
    bank: str | None = None  # source bank: the folder made by 'mmpipe bank add/import'
    hash: Literal["pdq", "phash", "clip"] = "pdq"  # clip: the bank's CLIP vectors, by cosine
    max_distance: int | None = Field(None, ge=0, le=256)  # pdq, phash; None: MAX_DISTANCE[hash]
    min_similarity: float | None = Field(None, gt=-1, le=1)  # clip; None: MIN_SIMILARITY

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} must be lowercase letters, digits, _ / - (like 'self-harm')")
        return v

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
    def _consistent(self) -> "Category":
        if self.block < self.review:
            raise ValueError(f"block ({self.block}) must be >= review ({self.review})")
        lists = self.words or self.word_lists or self.patterns
        if self.source == "words" and not lists:
            raise ValueError("source 'words' needs words, word_lists or patterns")
        if self.source != "words" and lists:
            raise ValueError(f"words/word_lists/patterns only apply to source 'words', not {self.source!r}")
        if self.source == "clip" and self.prompts is None:
            raise ValueError("source 'clip' needs prompts: {positive: [...], negative: [...]}")
        if self.source != "clip" and self.prompts is not None:
            raise ValueError(f"prompts only apply to source 'clip', not {self.source!r}")
        if self.source == "bank" and self.bank is None:
            raise ValueError("source 'bank' needs bank: FOLDER (made by 'mmpipe bank add')")
        # By value, not by the fields set: a policy is re-validated from its full dump, where
        # every category has the default hash.
        bank_only = [k for k in ("bank", "max_distance", "min_similarity") if getattr(self, k) is not None]
        bank_only += ["hash"] if self.hash != "pdq" else []
        if self.source != "bank" and bank_only:
            raise ValueError(f"{', '.join(sorted(bank_only))} only apply to source 'bank', not {self.source!r}")
        if self.hash == "clip" and self.max_distance is not None:
            raise ValueError("max_distance applies to hash pdq and phash; hash 'clip' matches by min_similarity")
        if self.hash != "clip" and self.min_similarity is not None:
            raise ValueError(f"min_similarity applies to hash 'clip'; hash {self.hash!r} matches by max_distance")
        if self.hash != "clip" and self.distance >= 8 * HASHES[self.hash]:
            raise ValueError(f"max_distance must be below {8 * HASHES[self.hash]}, the bits of a {self.hash} hash")
        if self.source in VISUAL_SOURCES and "text" in self.media:
            raise ValueError(f"source {self.source!r} scores pixels: media can be image and video, not text")
        return self

    @property
    def distance(self) -> int:
        return MAX_DISTANCE[self.hash] if self.max_distance is None else self.max_distance

    @property
    def similarity(self) -> float:
        return MIN_SIMILARITY if self.min_similarity is None else self.min_similarity


class Escalation(JudgeSettings):
    """When to call the judge (and where, how: the JudgeSettings fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    enabled: bool = False
    api_key_env: str | None = None  # name of the environment variable holding the API key
    categories: list[str] = Field(default_factory=list)  # empty: any category in its band


class Policy(_Strict):
    version: Literal[1] = 1
    aggregation: Aggregation = Field(default_factory=Aggregation)
    word_lists: dict[str, list[str]] = Field(default_factory=dict)
    categories: list[Category] = Field(min_length=1)
    escalation: Escalation = Field(default_factory=Escalation)

    @model_validator(mode="after")
    def _references(self) -> "Policy":
        seen = set()
        for i, c in enumerate(self.categories):
            if c.name in seen:
                raise ValueError(f"categories[{i}].name: duplicate category {c.name!r}")
            seen.add(c.name)
            for name in c.word_lists:
                if name not in self.word_lists:
                    raise ValueError(f"categories[{i}].word_lists: no word list {name!r} "
                                     f"(defined: {', '.join(self.word_lists) or 'none'})")
        for name in self.escalation.categories:
            if name not in seen:
                raise ValueError(f"escalation.categories: no category {name!r}")
        return self

    def thresholds(self, source: str) -> list[float]:
        """The review and block thresholds of the categories ``source`` scores: where a faster
        variant of that model must make the same decisions as the original."""
        return sorted({t for c in self.categories if c.source == source for t in (c.review, c.block)})

    def words_of(self, category: Category) -> list[str]:
        return [*category.words, *(w for name in category.word_lists for w in self.word_lists[name])]
