"""Folders and globs of image files, local or on any fsspec filesystem.

As in clip-retrieval, an image's caption is the sidecar ``.txt`` file with the same stem.
"""

from __future__ import annotations

import posixpath
from typing import Iterator

from ..records import Item
from .options import ReadFile, SourceOptions

# Files with these suffixes are items; a file that claims to be an image but is not (or is a
# format we cannot decode) becomes an error row, so nothing that looks like an image is skipped.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm",
                  ".pgm", ".pbm", ".ico", ".heic", ".heif", ".avif", ".jp2", ".jfif", ".svg")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".flv",
                  ".ogv", ".3gp", ".wmv")
CAPTION_SUFFIX = ".txt"


def media_suffixes(kinds: frozenset[str]) -> tuple[str, ...]:
    return (IMAGE_SUFFIXES if "image" in kinds or "video" in kinds else ()) + \
        (VIDEO_SUFFIXES if "video" in kinds else ())


def is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def iter_directory(fs, root: str, options: SourceOptions) -> Iterator[Item]:
    """Walk ``root`` one directory at a time, in sorted order, so listing streams."""
    root = root.rstrip("/")
    for dirpath, dirnames, filenames in fs.walk(root):
        dirnames.sort()
        names = sorted(n for n in filenames if not n.startswith("."))
        yield from items_in_dir(fs, dirpath, names, root, options)


def iter_glob(fs, pattern: str, matches: list[str], options: SourceOptions) -> Iterator[Item]:
    base = _glob_base(pattern)
    by_dir: dict[str, list[str]] = {}
    for m in matches:
        by_dir.setdefault(posixpath.dirname(m), []).append(posixpath.basename(m))
    for dirpath, names in by_dir.items():
        yield from items_in_dir(fs, dirpath, names, base, options, match_all=True,
                          siblings=_siblings(fs, dirpath, names))


def _siblings(fs, dirpath: str, names: list[str]) -> list[str]:
    # A pattern like ``*.jpg`` does not match the ``.txt`` captions beside the images, but they
    # are still the images' captions, as they are when the folder itself is the input.
    try:
        return [posixpath.basename(p.rstrip("/")) for p in fs.ls(dirpath, detail=False)]
    except OSError:
        return names


def items_in_dir(fs, dirpath: str, names: list[str], root: str, options: SourceOptions,
                 match_all: bool = False, siblings: list[str] | None = None) -> Iterator[Item]:
    """The items among ``names`` (files of ``dirpath``), ids relative to ``root``; captions are
    looked up among ``siblings`` (default: ``names``)."""
    suffixes = media_suffixes(options.kinds)
    everything = siblings or names
    captions = {posixpath.splitext(n)[0]: n for n in everything if n.lower().endswith(CAPTION_SUFFIX)}
    # A .txt is a caption when a media file of its stem is beside it, else (when text items are
    # wanted) an item of its own.
    media_stems = {posixpath.splitext(n)[0] for n in everything if n.lower().endswith(suffixes)}
    for name in names:
        lowered = name.lower()
        stem = posixpath.splitext(name)[0]
        if lowered.endswith(CAPTION_SUFFIX):
            if "text" not in options.kinds or stem in media_stems:
                continue
            path = posixpath.join(dirpath, name)
            yield Item(id=printable(_relative(path, root)), uri=printable(fs.unstrip_protocol(path)),
                       read=ReadFile(fs, path, None, options.max_bytes))
            continue
        if not (match_all or lowered.endswith(suffixes)):
            continue
        path = posixpath.join(dirpath, name)
        caption = captions.get(stem)
        yield Item(id=printable(_relative(path, root)), uri=printable(fs.unstrip_protocol(path)),
                   read=ReadFile(fs, path, caption and posixpath.join(dirpath, caption), options.max_bytes))


def printable(name: str) -> str:
    """A file name as valid UTF-8: bytes that are not (``caf\\xe9.jpg``) are written as escapes,
    so the row can be stored; the file itself is still read by its real name."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _relative(path: str, root: str) -> str:
    rel = posixpath.relpath(path, root) if root else path
    return posixpath.basename(path) if rel == "." else rel


def _glob_base(pattern: str) -> str:
    """The directory part of a glob before its first wildcard: ids are relative to it."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if is_glob(part):
            break
        fixed.append(part)
    return "/".join(fixed)
