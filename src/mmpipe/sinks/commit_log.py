"""An append-only log of committed shards: the single source of truth for what is done.

A shard counts as written only once its line is in the log (appended and fsynced after the
shard's atomic rename). A crash between rename and log line leaves an orphan shard that the next
run deletes; a crash mid-line leaves a torn last line that is ignored. Either way each id ends up
in exactly one committed shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_bytes


@dataclass(frozen=True)
class Commit:
    shard: str
    ids: list[str]
    errors: int
    # What an unbounded source's shard consumed (file names, partition offsets), as that source
    # writes it; None for listings, whose ids say it.
    consumed: dict | None = None


class CommitLog:
    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[Commit]:
        if not self.path.exists():
            return []
        commits = []
        for line in self.path.read_bytes().splitlines():
            try:
                entry = json.loads(line)
                commits.append(Commit(entry["shard"], entry["ids"], entry["errors"], entry.get("consumed")))
            except (ValueError, KeyError, TypeError):
                break  # a torn final line from a crash: nothing after it was committed
        return commits

    def repair(self, commits: list[Commit]) -> None:
        """Rewrite the log as exactly ``commits``, dropping a torn tail before appending to it."""
        write_bytes(self.path, b"".join(_line(c) for c in commits), durable=True)

    def append(self, commit: Commit) -> None:
        with open(self.path, "ab") as f:
            f.write(_line(commit))
            f.flush()
            os.fsync(f.fileno())


def _line(c: Commit) -> bytes:
    entry = {"shard": c.shard, "ids": c.ids, "errors": c.errors}
    if c.consumed is not None:
        entry["consumed"] = c.consumed
    return (json.dumps(entry, ensure_ascii=False) + "\n").encode()
