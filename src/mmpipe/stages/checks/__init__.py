"""The registry of policy sources: what can score a moderation category.

A source is one module here (its category schema, how it scores, what it reads of a frame:
``Source``) plus one line in ``SOURCES``. The policy's categories are validated as the union of
the sources' schemas, told apart by ``source``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Union

from pydantic import Field, ValidationError, WrapValidator
from pydantic_core import InitErrorDetails

from ...policy import Category as AnyCategory
from ...policy import Policy, load_policy
from . import bank, clip, open_nsfw, profanity, words
from .source import ModerationOptions, Source, TextScorer, categories_of

# In stage order: the bank stage reads the vectors that the clip stage leaves.
SOURCES: tuple[Source, ...] = (open_nsfw.SOURCE, profanity.SOURCE, words.SOURCE, clip.SOURCE, bank.SOURCE)
BY_NAME = {s.name: s for s in SOURCES}
_COMMON = set(AnyCategory.model_fields)


def _policy_errors(value, handler):
    """The union's errors as a policy's reader expects them: located at the category (not under
    the union's tag), and a field of another source named as such, not as an unknown field."""
    try:
        return handler(value)
    except ValidationError as exc:
        source = value.get("source") if isinstance(value, dict) else None
        errors, foreign = _rewritten(exc.errors(), source)
        if not errors:
            # Only fields of other sources: a mistake in the common fields is named first, as it
            # was when one class held every source's fields.
            try:
                AnyCategory.model_validate(value)
            except ValidationError as common:
                errors = _rewritten(common.errors(), source)[0]
        errors = errors or [
            InitErrorDetails(type="value_error", loc=(), input=value, ctx={"error": ValueError(
                owner.schema.misplaced(owner.name, fields, source))}) for owner, fields in foreign.items()]
        raise ValidationError.from_exception_data(exc.title, errors) from None


def _rewritten(errors: list[dict], source) -> tuple[list[InitErrorDetails], dict[Source, list[str]]]:
    """Errors located at the category, and apart: the fields that other sources own."""
    out, foreign = [], {}
    for e in errors:
        loc = e["loc"][1:] if e["loc"] and e["loc"][0] == source else e["loc"]
        if e["type"] == "extra_forbidden" and len(loc) == 1 and (owner := _owner(loc[0])):
            foreign.setdefault(owner, []).append(loc[0])
        elif e["type"] == "union_tag_not_found":
            out.append(InitErrorDetails(type="missing", loc=("source",), input=e["input"]))
        elif e["type"] == "union_tag_invalid":
            expected = " or ".join(", ".join(repr(n) for n in BY_NAME).rsplit(", ", 1))
            out.append(InitErrorDetails(type="literal_error", loc=("source",), input=source,
                                        ctx={"expected": expected}))
        else:
            out.append(InitErrorDetails(type=e["type"], loc=loc, input=e["input"], **(
                {"ctx": e["ctx"]} if "ctx" in e else {})))
    return out, foreign


def _owner(field: str) -> Source | None:
    """The source whose categories have ``field`` (not one that every category has)."""
    return next((s for s in SOURCES if field in s.schema.model_fields and field not in _COMMON), None)


Category = Annotated[Union[tuple(s.schema for s in SOURCES)], Field(discriminator="source"),
                     WrapValidator(_policy_errors)]


class ModerationPolicy(Policy):
    """A policy whose categories are each validated by its source's schema."""

    categories: list[Category] = Field(min_length=1)


def load_moderation_policy(path: str | Path | None = None) -> ModerationPolicy:
    """``mmpipe.policy.load_policy`` with every source's fields validated."""
    return load_policy(path, ModerationPolicy)


__all__ = ["BY_NAME", "SOURCES", "Category", "ModerationOptions", "ModerationPolicy", "Source",
           "TextScorer", "categories_of", "load_moderation_policy"]
