"""Engines run a list of stages over a stream of records."""

from __future__ import annotations

from typing import Callable, Iterable, Protocol, Sequence, TypeVar

from ..errors import ConfigError
from ..extras import MissingExtra
from ..records import Record
from ..stage import Resources, Stage
from .local import LocalEngine
from .stats import EngineStats, StageStats

__all__ = ["Engine", "EngineStats", "LocalEngine", "StageStats", "make_engine"]


T = TypeVar("T")


class Engine(Protocol):
    def run_once(self, fn: Callable[[], T], resources: Resources) -> T: ...

    def run(self, records: Iterable[Record], stages: Sequence[Stage],
            consume: Callable[[list[Record]], None]) -> EngineStats:
        """``consume`` gets the results a chunk (a list of records) at a time."""


def make_engine(name: str, ray_address: str | None = None) -> Engine:
    if name == "local":
        if ray_address is not None:
            raise ConfigError("--ray-address", "only applies with --engine ray")
        return LocalEngine()
    try:
        from .ray import RayEngine
    except ImportError:
        raise MissingExtra("--engine ray", ["ray"]) from None
    return RayEngine(ray_address)
