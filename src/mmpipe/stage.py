"""A stage is data + function + resources; engines decide how to run it.

The engine knows nothing about models and a stage knows nothing about threads or Ray: the same
list of stages runs on the local engine, on Ray Data and inside the server.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import numpy as np

from .records import Record

BatchFn = Callable[[Sequence[Record]], list[Record]]


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class ArrayField:
    """An array of one shape and dtype that every output record of a stage may carry (a decoded
    image's pixels): an engine running the stage in other processes returns it through shared
    memory, one slab per batch, instead of pickling it record by record."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "uint8"


class RowSource:
    """Rows of one array handed out in turn (a worker process's slab for the batch it works on)."""

    def __init__(self, rows: np.ndarray):
        self.rows = rows
        self.taken: list[np.ndarray] = []  # the views handed out, in order: row k is taken[k]

    def take(self) -> np.ndarray | None:
        if len(self.taken) == len(self.rows):
            return None
        self.taken.append(self.rows[len(self.taken)])
        return self.taken[-1]


ROWS: ContextVar[RowSource | None] = ContextVar("mmpipe_shared_rows", default=None)


def shared_row() -> np.ndarray | None:
    """Where a stage's function may write the ``Stage.shared`` array of the record it is making:
    in a worker process, the next row of the batch's shared-memory slab, so that nothing is
    copied on the way back; None anywhere else (make the array as usual)."""
    source = ROWS.get()
    return source.take() if source is not None else None


@dataclass(frozen=True)
class Stage:
    """``setup`` runs once per worker and returns the batch function that worker calls.

    A model stage loads its weights in ``setup``, so each replica owns one model. The batch
    function gets only healthy records and must return one record per input, in order; a record
    it cannot handle comes back as ``failed(record, reason)``.
    """

    name: str
    setup: Callable[[], BatchFn]
    batch_size: int = 1
    concurrency: int = 1
    resources: Resources = field(default_factory=Resources)
    # Setup is cheap and keeps no model (reading, decoding): an engine may call it per task and
    # spread the work over every free CPU instead of keeping long-lived workers.
    stateless: bool = False
    # The local engine runs this stateless stage's workers in processes of their own rather than
    # threads, so that its Python work never waits for the model's thread's GIL (Ray always
    # does). ``setup`` must then pickle.
    in_processes: bool = False
    # See ``ArrayField``: how such a stage's bulky output comes back to the engine's process.
    shared: ArrayField | None = None


class SharedSetup:
    """A ``setup`` whose workers in one process share what the first of them built: N model
    replicas with one copy of the weights, each calling it from its own thread. Pickled (to a Ray
    actor) it carries only the recipe, so each process builds its own."""

    def __init__(self, setup: Callable[[], BatchFn]):
        self.setup = setup
        self._lock = threading.Lock()
        self._built: BatchFn | None = None

    def __call__(self) -> BatchFn:
        with self._lock:
            if self._built is None:
                self._built = self.setup()
            return self._built

    def __getstate__(self) -> dict:
        return {"setup": self.setup}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["setup"])


class DeviceSetups:
    """``setup`` for a model stage's workers spread over several devices (every GPU of a node):
    the k-th worker to start runs on ``devices[k % n]`` and the workers of one device share one
    build of ``build(device)`` (``SharedSetup``). Pickled it carries only the recipe."""

    def __init__(self, build: Callable[[str], BatchFn], devices: Sequence[str]):
        self.build, self.devices = build, list(devices)
        self._shared = [SharedSetup(partial(build, d)) for d in self.devices]
        self._lock = threading.Lock()
        self._started = 0

    def __call__(self) -> BatchFn:
        with self._lock:
            k, self._started = self._started, self._started + 1
        return self._shared[k % len(self._shared)]()

    def __getstate__(self) -> dict:
        return {"build": self.build, "devices": self.devices}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["build"], state["devices"])
