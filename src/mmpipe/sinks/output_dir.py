"""An output folder a job can resume in: its manifest, commit log and shards."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import TMP_SUFFIX, write_text
from ..errors import OutputDirError
from .commit_log import Commit, CommitLog

MANIFEST = "_manifest.json"
COMMITS = "_commits.jsonl"
STATS = "stats.json"
EMITTED = "_emitted.json"  # the last shard --emit delivered (sinks.kafka_emit)
SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")


class OutputDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.log = CommitLog(self.path / COMMITS)

    def open(self, signature: dict, overwrite: bool) -> list[Commit]:
        """Prepare for a run; returns the commits already done (empty when starting fresh).

        ``signature`` says what produced the output (job, model, precision…): resuming with a
        different one would mix incompatible rows, so it is refused.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            self._clear()
        previous = self.read_manifest()
        if previous is not None:
            theirs = previous.get("signature", {})
            for key, value in signature.items():
                if theirs.get(key) != value:
                    raise OutputDirError(
                        f"{self.path} holds output made with {key}={theirs.get(key)!r}, not "
                        f"{value!r}; pass --overwrite to replace it or choose another --out")
        commits = self.log.read()
        self.log.repair(commits)
        committed = {c.shard for c in commits}
        for c in commits:
            if not (self.path / c.shard).exists():
                raise OutputDirError(f"{self.path / c.shard} is in the commit log but missing; "
                                     "pass --overwrite to start again")
        for p in self.path.iterdir():
            orphan = SHARD_RE.match(p.name) and p.name not in committed
            if orphan or p.name.endswith(TMP_SUFFIX):
                p.unlink()
        return commits

    def next_shard_index(self, commits: list[Commit]) -> int:
        return max((int(SHARD_RE.match(c.shard).group(1)) for c in commits), default=-1) + 1

    def shards(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if SHARD_RE.match(p.name))

    def committed_shards(self) -> list[Path]:
        """The shards the commit log vouches for (an orphan from a crash is not one of them)."""
        committed = {c.shard for c in self.log.read()}
        return [p for p in self.shards() if p.name in committed]

    def read_table(self) -> pa.Table:
        """All committed rows; the folder also holds JSON files, so shards are named, not globbed."""
        paths = [str(p) for p in self.committed_shards()]
        if not paths:
            raise OutputDirError(f"{self.path} has no committed shards")
        return pa.concat_tables(pq.read_table(p) for p in paths)

    def read_manifest(self) -> dict | None:
        return self.read_json(MANIFEST)

    def read_json(self, name: str) -> dict | None:
        """The JSON file ``name`` of the folder; None if it is missing or unreadable."""
        path = self.path / name
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None

    def write_json(self, name: str, data: dict, durable: bool = False) -> None:
        write_text(self.path / name, json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                   durable=durable)

    def _clear(self) -> None:
        for p in self.path.iterdir():
            if SHARD_RE.match(p.name) or p.name in (MANIFEST, COMMITS, STATS, EMITTED) or p.name.endswith(TMP_SUFFIX):
                p.unlink()
