"""Engines run a list of stages over a stream of records."""

from .local import LocalEngine
from .stats import EngineStats, StageStats

__all__ = ["EngineStats", "LocalEngine", "StageStats"]
