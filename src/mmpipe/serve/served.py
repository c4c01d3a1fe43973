"""A batch job's stage list, split the way a server runs it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..engine.local import run_in_turn
from ..stage import Stage

@dataclass(frozen=True)
class ServedModel:
    name: str
    prepare: Callable[[list], list]
    predict: Callable[[list], list]


def served_model(name: str, stages: Sequence[Stage]) -> ServedModel:
    """Every stage set up once: replicas share these functions, so the weights are in memory
    once however many replicas serve them. The stateless stages (reading, decoding) work on one
    request's items, in the request's own thread, in parallel across requests; the rest run
    batched across requests in the replicas."""
    prepare = [(s.name, s.setup()) for s in stages if s.stateless]
    predict = [(s.name, s.setup()) for s in stages if not s.stateless]
    return ServedModel(name, lambda batch: run_in_turn(prepare, list(batch)),
                       lambda batch: run_in_turn(predict, list(batch)))
