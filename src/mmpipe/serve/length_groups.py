"""Length-aware batching: a batch of texts runs padded to its longest, so a 10-token text batched
with a 500-token one costs as much as a second long text. The batcher fills each batch around its
oldest request with the waiting requests closest in length (as Infinity sorts by length); the
oldest always goes first, so a request of unusual length waits its turn and no longer."""

from __future__ import annotations

import math
from typing import Sequence


def text_length(records: Sequence) -> int | None:
    """The most tokens among a request's records; None when none is a tokenized text (images,
    moderation): such requests keep their order."""
    return max(_lengths(records), default=None)


def closest_first(length: int | None, candidates: Sequence[int | None]) -> list[int]:
    """Indexes of ``candidates`` (lengths, in arrival order) by closeness to ``length``, ties and
    untokenized requests in arrival order; arrival order alone when ``length`` is None."""
    if length is None:
        return list(range(len(candidates)))
    return sorted(range(len(candidates)),
                  key=lambda i: math.inf if candidates[i] is None else abs(candidates[i] - length))


def padding_tokens(records: Sequence) -> tuple[int, int]:
    """(tokens, padding) of one batch of records: its texts' tokens, and the pad tokens that
    bringing each to the batch's longest adds."""
    lengths = _lengths(records)
    return sum(lengths), max(lengths, default=0) * len(lengths) - sum(lengths)


def _lengths(records: Sequence) -> list[int]:
    """The token counts of the records that are tokenized texts."""
    return [len(t) for r in records if (t := getattr(r, "tokens", None)) is not None]
