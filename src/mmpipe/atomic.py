"""Files that appear whole or not at all: written to a temporary name beside the target, then
renamed onto it, so a reader (or a crash) sees either the old file, no file or the whole new one.

``durable``: the file is fsynced before the rename and its folder after, so the new file also
survives a power cut once the call returns (shards and the commit log, whose line says a shard is
done). Without it a crash may lose the new file but never leaves half of one.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Every temporary name ends so: an output folder removes what a crash left behind by this suffix.
TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(target: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside ``target`` to write; renamed onto ``target`` on success, removed
    on failure. Several processes may write the same target at once: each gets its own name."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, target)
        if durable:
            _fsync(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: str | Path, text: str, *, durable: bool = False) -> Path:
    """``text`` (UTF-8) as the whole of ``target``, atomically."""
    with atomic_path(target, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes(target: str | Path, data: bytes, *, durable: bool = False) -> Path:
    """``data`` as the whole of ``target``, atomically."""
    with atomic_path(target, durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a folder opens read-only too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
