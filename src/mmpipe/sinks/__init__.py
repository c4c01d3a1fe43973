"""Sinks write what the stages produced; shards are committed exactly once."""

from .commit_log import CommitLog
from .output_dir import OutputDir
from .parquet import ParquetShardSink

__all__ = ["CommitLog", "OutputDir", "ParquetShardSink"]
