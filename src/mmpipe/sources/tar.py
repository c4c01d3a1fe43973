"""WebDataset ``.tar`` shards: files grouped into samples by key (the name up to its first dot).

Tars are read front to back in one pass, so bytes come with the listing here; the members of a
sample sit next to each other in a WebDataset shard, which keeps only one sample in memory.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from typing import Iterator

from ..records import Item
from .files import media_suffixes
from .options import SourceOptions, cut_text, caption_text

TEXT_EXTENSIONS = ("txt", "caption", "text")


def iter_tars(fs, paths: list[str], options: SourceOptions) -> Iterator[Item]:
    for path in paths:
        shard = posixpath.basename(path)
        try:
            yield from _iter_tar(fs, path, shard, options)
        except (tarfile.TarError, OSError, EOFError) as exc:
            # A broken shard is one error row; the samples read before the break are kept.
            yield Item(id=f"{shard}/<unreadable>", uri=fs.unstrip_protocol(path),
                       error=f"read: cannot read tar shard: {exc}")


def _iter_tar(fs, path: str, shard: str, options: SourceOptions) -> Iterator[Item]:
    uri = fs.unstrip_protocol(path)
    key, members = None, {}
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = posixpath.basename(member.name)
            if base.startswith("."):
                continue
            dirname = posixpath.dirname(member.name)
            stem, _, ext = base.partition(".")
            member_key = posixpath.join(dirname, stem)
            if member_key != key and members:
                yield _sample(shard, uri, key, members, options.kinds)
                members = {}
            key = member_key
            if member.size > options.max_bytes:
                members[ext.lower()] = ValueError(
                    f"too large: {member.size} bytes exceeds the {options.max_bytes}-byte limit")
                continue
            members[ext.lower()] = tar.extractfile(member).read()
    if members:
        yield _sample(shard, uri, key, members, options.kinds)


def _sample(shard: str, uri: str, key: str, members: dict, kinds: frozenset[str]) -> Item:
    item = Item(id=f"{shard}/{key}", uri=f"{uri}#{key}")
    text = next((members[e] for e in TEXT_EXTENSIONS if e in members), None)
    if text is None and isinstance(members.get("json"), bytes):
        text = _caption_from_json(members["json"])
    if isinstance(text, bytes):
        item.text, item.text_truncated = cut_text(caption_text(text))
    suffixes = media_suffixes(kinds)
    image_ext = next((e for e in members if "." + e.rsplit(".", 1)[-1] in suffixes), None)
    if image_ext is None:
        if item.text is None:
            item.error = f"read: sample has no image or text member ({', '.join(sorted(members))})"
        return item
    image = members[image_ext]
    if isinstance(image, Exception):
        item.error = f"read: {image}"
    else:
        item.data = image
    return item


def _caption_from_json(raw: bytes) -> bytes | None:
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    caption = meta.get("caption") or meta.get("text") if isinstance(meta, dict) else None
    return caption.encode() if isinstance(caption, str) else None
