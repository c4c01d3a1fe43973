"""How a source finds and reads its items."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..extras import MissingExtra
from ..net import fetch_url
from ..records import Item

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Captions longer than this are cut: the text tower sees at most a few dozen tokens anyway.
MAX_TEXT_CHARS = 10_000


MEDIA_KINDS = frozenset({"image", "video", "text"})


def filesystem(url: str, storage_options: dict, field: str = "INPUT"):
    """(fsspec filesystem, path) of ``url``; a protocol whose package is not installed is one
    line saying what to install (s3:// is mmpipe's s3 extra)."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as exc:
        if url.lower().startswith(("s3://", "s3a://")):
            raise MissingExtra(f"reading {url}", ["s3"]) from None
        raise ConfigError(field, f"{url}: {exc}") from None


@dataclass(frozen=True)
class SourceOptions:
    # Which files of a folder are items: embedding wants images; moderation also wants videos
    # and stand-alone .txt files (a .txt beside a media file of the same stem stays its caption).
    kinds: frozenset[str] = frozenset({"image"})
    id_column: str | None = None
    image_column: str | None = None
    text_column: str | None = None
    storage_options: dict = field(default_factory=dict)
    allow_private_urls: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES


def read_capped(fs, path: str, max_bytes: int) -> bytes:
    """Bytes of ``path``; files over the cap are refused without reading them whole."""
    with fs.open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"too large: exceeds the {max_bytes}-byte limit")
    return data


@dataclass(frozen=True)
class ReadFile:
    """Reads a listed file and its caption file: a plain object, not a closure, so that an item
    travels to a worker process that reads it there (fsspec filesystems pickle)."""

    fs: Any
    path: str
    caption: str | None
    max_bytes: int

    @property
    def waits(self) -> bool:
        """Whether reading waits on a network (worth a thread of its own) rather than a disk."""
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol
        return "file" not in protocols

    def __call__(self) -> tuple[bytes, str | None]:
        data = read_capped(self.fs, self.path, self.max_bytes)
        text = caption_text(read_capped(self.fs, self.caption, self.max_bytes)) if self.caption else None
        return data, text


@dataclass(frozen=True)
class ReadUrl:
    """Fetches an http(s) (or, when allowed, file://) URL; see ``ReadFile``."""

    url: str
    allow_private: bool
    max_bytes: int
    waits = True

    def __call__(self) -> tuple[bytes, None]:
        return fetch_url(self.url, allow_private=self.allow_private, max_bytes=self.max_bytes), None


def caption_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").strip()


def cut_text(text: str) -> tuple[str, bool]:
    """``text`` cut to MAX_TEXT_CHARS, and whether it was cut (reported, never silent)."""
    return text[:MAX_TEXT_CHARS], len(text) > MAX_TEXT_CHARS


def read_item(item: Item) -> Item:
    """The read stage's work on one item: fill in its bytes and caption."""
    if item.read is not None:
        data, text = item.read()
        item.data, item.read = data, None
        if text is not None:
            item.text, item.text_truncated = cut_text(text)
    return item
