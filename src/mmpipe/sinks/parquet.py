"""Parquet shards of ``shard_size`` rows, each written to a temp name, renamed, then logged."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..records import Record
from .commit_log import Commit
from .output_dir import OutputDir


class ParquetShardSink:
    def __init__(self, out: OutputDir, to_table: Callable[[Sequence[Record]], pa.Table],
                 shard_size: int, first_index: int = 0):
        self.out = out
        self.to_table = to_table
        self.shard_size = shard_size
        self.index = first_index
        self.buffer: list[Record] = []
        self.rows = 0
        self.errors = 0

    def add(self, record: Record) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"part-{self.index:05d}.parquet"
        tmp = self.out.path / f".{name}.tmp"
        pq.write_table(self.to_table(self.buffer), tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.out.path / name)
        _fsync_dir(self.out.path)
        errors = sum(r.error is not None for r in self.buffer)
        self.out.log.append(Commit(name, [r.id for r in self.buffer], errors))
        self.rows += len(self.buffer)
        self.errors += errors
        self.index += 1
        self.buffer = []


def _fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
