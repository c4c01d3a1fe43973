"""Manifests (.csv, .jsonl, .parquet) with one row per item: an id, an image path or URL, a text.

Rows stream: CSV and JSONL line by line, Parquet batch by batch. Relative image paths are
resolved against the manifest's own folder, on the manifest's filesystem.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import posixpath
from typing import Any, Iterator

import pyarrow.parquet as pq

from ..errors import ConfigError
from ..records import Item
from .options import ReadFile, ReadUrl, SourceOptions, cut_text, filesystem

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")

# Tried in order when the matching --*-column option is not given.
ID_COLUMNS = ("id", "key", "uid")
IMAGE_COLUMNS = ("image", "image_path", "image_url", "url", "path", "filepath", "file")
TEXT_COLUMNS = ("text", "caption", "title")
# Rows read ahead to decide the columns.
HEAD_ROWS = 100


def iter_manifest(fs, path: str, options: SourceOptions) -> Iterator[Item]:
    """Items of the manifest at ``path``.

    The columns are checked here, not when the first item is asked for, so a bad --*-column
    stops the job before a model loads or an output folder is made.
    """
    rows = _rows(fs, path)
    # JSONL rows need not share their keys (a text-only row may have no image key, a first
    # line may be broken), so the columns come from the keys of the first rows together.
    head = list(itertools.islice(rows, HEAD_ROWS))
    if not head:
        return iter(())
    names = [k for k in dict.fromkeys(k for _, row in head if isinstance(row, dict) for k in row)
             if isinstance(k, str)]  # csv.DictReader files extra fields under None
    columns = _Columns(names, options)
    return _items(itertools.chain(head, rows), columns, fs, posixpath.dirname(path), options)


def _items(rows, columns: "_Columns", fs, base: str, options: SourceOptions) -> Iterator[Item]:
    for number, row in rows:
        if not isinstance(row, dict):
            yield Item(id=f"row-{number}", error=f"manifest row {number}: {row}")
            continue
        yield columns.item(number, row, fs, base, options)


def _rows(fs, path: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number, row) pairs; a row that cannot be parsed comes as (number, reason)."""
    lowered = path.lower()
    if lowered.endswith(".parquet"):
        with fs.open(path, "rb") as f:
            number = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    yield number, row
                    number += 1
        return
    with fs.open(path, "rb") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
        if lowered.endswith(".csv"):
            for number, row in enumerate(csv.DictReader(text)):
                yield number, row
            return
        for number, line in enumerate(text):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, f"invalid JSON: {exc.msg}"
                continue
            yield number, row if isinstance(row, dict) else "not a JSON object"


class _Columns:
    """Which columns hold id, image and text, decided once from the first rows' keys."""

    def __init__(self, names: list[str], options: SourceOptions):
        self.id = self._pick(names, options.id_column, ID_COLUMNS, "--id-column")
        self.image = self._pick(names, options.image_column, IMAGE_COLUMNS, "--image-column")
        self.text = self._pick(names, options.text_column, TEXT_COLUMNS, "--text-column")
        if self.image is None and self.text is None:
            raise ConfigError("--image-column", "manifest has no image or text column "
                              f"(columns: {', '.join(names)}); name them with "
                              "--image-column / --text-column")

    @staticmethod
    def _pick(names: list[str], given: str | None, candidates, flag: str) -> str | None:
        if given is not None:
            if given not in names:
                raise ConfigError(flag, f"no column {given!r} in manifest "
                                        f"(columns: {', '.join(names)})")
            return given
        return next((c for c in candidates if c in names), None)

    def item(self, number: int, row: dict[str, Any], fs, base: str,
             options: SourceOptions) -> Item:
        raw_id = row.get(self.id) if self.id else None
        item_id = str(raw_id) if raw_id not in (None, "") else f"row-{number}"
        text = row.get(self.text) if self.text else None
        text, cut = cut_text(str(text)) if text not in (None, "") else (None, False)
        location = row.get(self.image) if self.image else None
        if location in (None, ""):
            if text is None:
                return Item(id=item_id, error="row has neither an image nor a text")
            return Item(id=item_id, text=text, text_truncated=cut)
        location = str(location)
        uri, read = locate(location, fs, base, options)
        return Item(id=item_id, uri=uri, text=text, text_truncated=cut, read=read)


def locate(location: str, fs, base: str, options: SourceOptions):
    """A URI for the row's image and a function that reads it."""
    scheme = location.split("://", 1)[0].lower() if "://" in location else ""
    if scheme in ("http", "https", "file"):
        return location, ReadUrl(location, options.allow_private_urls, options.max_bytes)
    if scheme:
        other_fs, path = filesystem(location, options.storage_options)
    else:
        other_fs = fs
        # Object stores have no "..": resolve it here, as a local filesystem would.
        path = location if posixpath.isabs(location) else posixpath.join(base, location)
        path = posixpath.normpath(path)
    return other_fs.unstrip_protocol(path), ReadFile(other_fs, path, None, options.max_bytes)
