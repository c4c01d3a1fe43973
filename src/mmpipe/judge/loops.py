"""Catching degenerate, looping answers from a generative judge.

A model stuck in a loop repeats itself until it runs out of tokens: "the image shows the image
shows …", or one sentence again and again. The rule: an answer is degenerate when

- one word n-gram (``n`` whitespace-separated words, case-insensitive) occurs more than
  ``max_repeats`` times anywhere in it, or
- it ends (trailing whitespace ignored) in one piece of up to ``CYCLE_CHARS`` characters repeated
  at least ``CYCLE_COPIES`` times back to back: loops without spaces, like "}}}}…" or "abcabc…",
  that the n-gram count cannot see.

A real verdict is a short JSON object: it repeats no four words five times and ends in "}".
"""

from __future__ import annotations

import re
from collections import Counter

CYCLE_CHARS = 30
CYCLE_COPIES = 8
TAIL_CHARS = 400  # enough for CYCLE_COPIES of the longest piece; keeps the regex cheap
_TAIL_CYCLE = re.compile(rf"(.{{1,{CYCLE_CHARS}}}?)\1{{{CYCLE_COPIES - 1},}}$", re.S)


def is_degenerate(text: str, n: int = 4, max_repeats: int = 4) -> bool:
    words = text.lower().split()
    if len(words) >= n:
        grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        if grams.most_common(1)[0][1] > max_repeats:
            return True
    return _TAIL_CYCLE.search(text.rstrip()[-TAIL_CHARS:]) is not None
