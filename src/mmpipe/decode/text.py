"""Text bytes → a string a classifier can take, never unbounded and never silently cut."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodedText:
    text: str
    truncated: bool  # a line or the whole text was cut
    invalid_utf8: bool  # undecodable bytes were replaced with U+FFFD


def decode_text(data: bytes, max_chars: int = 100_000, max_line_chars: int = 10_000) -> DecodedText:
    try:
        text, invalid = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, invalid = data.decode("utf-8", errors="replace"), True
    text = text.replace("\x00", "")
    lines = text.splitlines()
    cut = any(len(line) > max_line_chars for line in lines)
    text = "\n".join(line[:max_line_chars] for line in lines).strip()
    if len(text) > max_chars:
        text, cut = text[:max_chars], True
    return DecodedText(text, cut, invalid)
