"""Parquet shards of ``shard_size`` rows, each written to a temp name, renamed, then logged."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..atomic import atomic_path
from ..records import Record
from .commit_log import Commit
from .output_dir import OutputDir


class ParquetShardSink:
    """Records arrive a chunk at a time; every ``CHUNK`` of them becomes a small Arrow table, so
    a shard of many thousand rows waits in Arrow's compact buffers, not as Python records holding
    model outputs (which also fragmented the heap: peak RSS grew with the shard size)."""

    CHUNK = 256

    def __init__(self, out: OutputDir, to_table: Callable[[Sequence[Record]], pa.Table],
                 shard_size: int, first_index: int = 0,
                 consumed_of: Callable[[Sequence[str]], dict] | None = None,
                 on_commit: Callable[[Commit], None] | None = None):
        self.out = out
        # For an unbounded source: its entry for a shard's commit line, and word once it is durable.
        self.consumed_of, self.on_commit = consumed_of, on_commit
        self.to_table = to_table
        self.shard_size = shard_size
        self.index = first_index
        self.pending: list[Record] = []
        self.tables: list[pa.Table] = []
        self.ids: list[str] = []
        self.shard_errors = 0
        self.opened_at: float | None = None  # monotonic time of the open shard's first row
        self.rows = 0
        self.errors = 0
        # An empty table now: Arrow's first conversion imports pandas (~0.5 s), which belongs to
        # the job's setup, not to the clock of its first rows.
        schema = to_table([]).schema
        # Dictionary pages only for text: on a float vector column Arrow hashes every value
        # (7x the CPU of the rest of the write) to find the values repeat too rarely to use one.
        self.dictionary = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_binary(f.type)]

    def add(self, records: Sequence[Record]) -> None:
        """Buffer ``records``, writing each shard as it fills (a chunk may end one and start the next)."""
        start = 0
        while start < len(records):
            take = records[start: start + self.shard_size - len(self.ids)]
            start += len(take)
            if not self.ids:
                self.opened_at = time.monotonic()
            self.pending.extend(take)
            self.ids.extend(r.id for r in take)
            self.shard_errors += sum(r.error is not None for r in take)
            if len(self.ids) >= self.shard_size:
                self.flush()
            elif len(self.pending) >= self.CHUNK:
                self._convert()

    def drop(self, ids: Sequence[str]) -> None:
        """Take the rows of ``ids`` out of the open shard again (a followed partition moved to
        another consumer, which does those items again)."""
        gone = set(ids).intersection(self.ids)
        if not gone:
            return
        self._convert()
        removed = pa.array(sorted(gone), pa.string())
        kept = []
        for table in self.tables:
            taken = pc.is_in(table["id"], removed)
            self.shard_errors -= pc.sum(pc.and_(taken, pc.is_valid(table["error"]))).as_py() or 0
            kept.append(table.filter(pc.invert(taken)))
        self.tables = kept
        self.ids = [i for i in self.ids if i not in gone]
        if not self.ids:
            self.tables, self.shard_errors, self.opened_at = [], 0, None

    def _convert(self) -> None:
        if self.pending:
            self.tables.append(self.to_table(self.pending))
            self.pending = []

    def flush(self) -> None:
        if not self.ids:
            return
        self._convert()
        name = f"part-{self.index:05d}.parquet"
        with atomic_path(self.out.path / name, durable=True) as tmp:
            pq.write_table(pa.concat_tables(self.tables), tmp, compression="zstd",
                           use_dictionary=self.dictionary)
        consumed = self.consumed_of(self.ids) if self.consumed_of else None
        commit = Commit(name, self.ids, self.shard_errors, consumed)
        self.out.log.append(commit)
        self.rows += len(self.ids)
        self.errors += self.shard_errors
        self.index += 1
        self.tables, self.ids, self.shard_errors, self.opened_at = [], [], 0, None
        if self.on_commit:
            self.on_commit(commit)
