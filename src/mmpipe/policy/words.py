"""Word lists and regexes that survive the usual obfuscations (leetspeak, accents, stretching).

Matching runs on a normalised copy of the text: NFKC, lowercase, accents stripped, leetspeak
digits and symbols mapped to letters, and any letter repeated three or more times cut to two.
Words are normalised the same way and matched as whole words, with each letter allowed to repeat
("stuuupid" -> "stuupid" still matches "stupid"), and a plural s. Separators inside a word ("i.d.i.o.t") are not
undone: that would make ordinary text match too often.
"""

from __future__ import annotations

import re
import unicodedata

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a",
                       "$": "s", "!": "i", "|": "l", "8": "b"})
_STRETCH = re.compile(r"(\w)\1{2,}")
_TOKEN = re.compile(r"[\w@$!|]*[a-z][\w@$!|]*")


def _unleet(m: re.Match) -> str:
    # Only inside tokens that have a letter ("1d10t", not "2024"); trailing "!" stays punctuation.
    token = m.group(0)
    core = token.rstrip("@$!|")
    return core.translate(_LEET) + token[len(core):]


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return _STRETCH.sub(r"\1\1", _TOKEN.sub(_unleet, text))


def _word_regex(word: str) -> str:
    # Every letter may repeat (the text has stretches cut to two), spaces match any whitespace.
    parts = [r"\s+" if c.isspace() else re.escape(c) + "+" for c in normalise(word).strip()]
    return "".join(parts) + "(?:e?s)?"  # plurals: "idiots" is as bad as "idiot"


class WordMatcher:
    """Finds the listed words (whole words) and patterns in a text; thread-safe (no state)."""

    def __init__(self, words: list[str], patterns: list[str] = ()):
        self.words = [w for w in dict.fromkeys(w.strip() for w in words) if w]
        groups = [f"(?P<w{i}>{_word_regex(w)})" for i, w in enumerate(self.words)]
        self._words = re.compile(r"(?<!\w)(?:" + "|".join(groups) + r")(?!\w)") if groups else None
        self._patterns = [re.compile(p) for p in patterns]

    def find(self, text: str) -> list[str]:
        if not text:
            return []
        norm = normalise(text)
        found: list[str] = []
        if self._words is not None:
            for m in self._words.finditer(norm):
                word = self.words[int(m.lastgroup[1:])]
                if word not in found:
                    found.append(word)
        for p in self._patterns:
            m = p.search(norm)
            if m and m.group(0) not in found:
                found.append(m.group(0))
        return found
