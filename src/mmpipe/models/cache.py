"""Where derived model files (quantised, exported) are kept between runs, keyed by what made them.

Several workers may build the same file at once: each writes it with ``mmpipe.atomic``, so a
reader sees either no file or a whole one.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$MMPIPE_CACHE`` (default ``~/.cache/mmpipe``) / parts, created."""
    root = os.environ.get("MMPIPE_CACHE") or Path.home() / ".cache" / "mmpipe"
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The file's sha256, hashed once per process while its size and mtime stay the same
    (every model load asks for it)."""
    st = os.stat(path)
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def cache_key(source_sha256: str, settings: dict) -> str:
    """A short name for the file derived from ``source_sha256`` with ``settings``."""
    blob = json.dumps({"source": source_sha256, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]
