"""Text bytes → a string a classifier can take, never unbounded and never silently cut."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodedText:
    text: str
    truncated: bool  # a line or the whole text was cut
    invalid_utf8: bool  # undecodable bytes were replaced with U+FFFD


def decode_text(data: bytes, max_chars: int = 100_000, max_line_chars: int = 10_000) -> DecodedText:
    """UTF-8 (a leading byte-order mark dropped), NULs removed, line ends made ``\\n``, outer
    whitespace stripped; each line cut at ``max_line_chars`` (a minified file or a base64 blob
    would otherwise be all a classifier sees), then the whole at ``max_chars``."""
    try:
        text, invalid = data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        text, invalid = data.decode("utf-8-sig", errors="replace"), True
    lines = text.replace("\x00", "").splitlines()
    cut = any(len(line) > max_line_chars for line in lines)
    text = "\n".join(line[:max_line_chars] for line in lines).strip()
    if len(text) > max_chars:
        text, cut = text[:max_chars], True
    return DecodedText(text, cut, invalid)
