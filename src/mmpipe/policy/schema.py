"""The moderation policy: categories with their source model and thresholds, word lists,
temporal aggregation and escalation to a judge. Validated at load, so a bad policy stops the job
before any model loads."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..judge.client import JudgeSettings

MEDIA = ("image", "video", "text")
_NAME = re.compile(r"^[a-z][a-z0-9_/-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Aggregation(_Strict):
    method: Literal["max", "mean_topk"] = "max"
    top_k: int = Field(3, ge=1)
    segment_gap_s: float = Field(1.0, ge=0)


class Category(BaseModel):
    """What every category has, whatever scores it. Each source (``mmpipe.stages.checks``)
    subclasses this with its own fields and validators; read as this class alone, a category's
    other fields are ignored: enough for what needs only names and thresholds."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    # Set by sources that score pixels: their categories cannot apply to text.
    scores_pixels: ClassVar[bool] = False

    name: str
    source: str
    media: list[Literal["image", "video", "text"]] = Field(min_length=1)
    review: float = Field(ge=0, le=1)
    block: float = Field(ge=0, le=2)  # above 1: never blocks, at most review

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r} must be lowercase letters, digits, _ / - (like 'self-harm')")
        return v

    @model_validator(mode="after")
    def _thresholds_and_media(self) -> "Category":
        if self.block < self.review:
            raise ValueError(f"block ({self.block}) must be >= review ({self.review})")
        if self.scores_pixels and "text" in self.media:
            raise ValueError(f"source {self.source!r} scores pixels: media can be image and video, not text")
        return self

    @classmethod
    def misplaced(cls, owner: str, fields: list[str], source: str) -> str:
        """Why ``fields``, which belong to source ``owner``, are wrong in a ``source`` category."""
        return f"{', '.join(sorted(fields))} only apply to source {owner!r}, not {source!r}"

    def bad_reference(self, policy: "Policy") -> str | None:
        """``field: reason`` when the category names something the policy lacks; None if not."""
        return None


class Escalation(JudgeSettings):
    """When to call the judge (and where, how: the JudgeSettings fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    enabled: bool = False
    api_key_env: str | None = None  # name of the environment variable holding the API key
    categories: list[str] = Field(default_factory=list)  # empty: any category in its band


class Policy(_Strict):
    """A policy as ``mmpipe.policy`` needs it: categories by their common fields. The stages'
    registry (``mmpipe.stages.checks.ModerationPolicy``) narrows ``categories`` to one model per
    source, which validates every field; ``load_policy`` takes either."""

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
            if (why := c.bad_reference(self)) is not None:
                raise ValueError(f"categories[{i}].{why}")
        for name in self.escalation.categories:
            if name not in seen:
                raise ValueError(f"escalation.categories: no category {name!r}")
        return self

    def thresholds(self, source: str) -> list[float]:
        """The review and block thresholds of the categories ``source`` scores: where a faster
        variant of that model must make the same decisions as the original."""
        return sorted({t for c in self.categories if c.source == source for t in (c.review, c.block)})
