"""Sources list the items of an input lazily: a folder, a glob, a manifest, tar shards, a URL.

``open_source`` looks at INPUT and picks the reader; every reader yields ``Item`` records whose
bytes are read later, by the engine's read stage, so listing stays cheap and streaming.
"""

from __future__ import annotations

from typing import Iterator

from ..errors import ConfigError
from ..records import Item
from .files import iter_directory, iter_glob, is_glob
from .manifest import MANIFEST_SUFFIXES, iter_manifest
from .options import SourceOptions, filesystem
from .tar import iter_tars

__all__ = ["SourceOptions", "open_source"]


def open_source(input: str, options: SourceOptions) -> Iterator[Item]:
    """Items of ``input``; raises ConfigError (naming INPUT) when it cannot be listed at all."""
    fs, path = filesystem(input, options.storage_options)
    lowered = path.lower()
    if is_glob(path):
        matches = sorted(fs.glob(path))
        if not matches:
            raise ConfigError("INPUT", f"no files match {input!r}")
        if all(m.lower().endswith(".tar") for m in matches):
            return iter_tars(fs, matches, options)
        return iter_glob(fs, path, matches, options)
    if lowered.endswith(MANIFEST_SUFFIXES) and not _is_dir(fs, path):
        _require_exists(fs, path, input)
        return iter_manifest(fs, path, options)
    if lowered.endswith(".tar"):
        _require_exists(fs, path, input)
        return iter_tars(fs, [path], options)
    if _is_dir(fs, path):
        return iter_directory(fs, path, options)
    _require_exists(fs, path, input)
    return iter_glob(fs, path, [path], options)


def _is_dir(fs, path: str) -> bool:
    try:
        return fs.isdir(path)
    except OSError:
        return False


def _require_exists(fs, path: str, input: str) -> None:
    try:
        exists = fs.exists(path)
    except OSError as exc:
        raise ConfigError("INPUT", f"cannot access {input!r}: {exc}") from None
    if not exists:
        raise ConfigError("INPUT", f"{input!r} does not exist")
