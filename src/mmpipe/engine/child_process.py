"""Worker processes for a stage marked ``in_processes`` (see ``engine.local``)."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Callable

from ..records import Record
from ..stage import BatchFn, Stage


def shipped_setup(stage: Stage) -> bytes:
    """The stage's ``setup`` pickled for its worker processes; refused by name if it cannot be."""
    try:
        return pickle.dumps(stage.setup)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(f"stage {stage.name!r} runs in processes, so its setup must pickle: "
                         f"{exc}") from None


class ChildProcess:
    """One spawned process running the batch function the shipped ``setup`` builds; each worker
    thread of an ``in_processes`` stage owns one (spawned, not forked: forking a process that
    runs threads and OpenMP can deadlock). If it dies — a decoder crashing on a hostile file, the
    OOM killer — it is replaced and the batch fails with a reason; ``apply_batch`` then retries
    the items one by one, so only the culprit becomes an error row, where in a thread the crash
    would have ended the job."""

    def __init__(self, stage_name: str, recipe: bytes):
        self.stage_name, self.recipe = stage_name, recipe
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_child_setup,
                                   initargs=(self.recipe,))

    def __call__(self, batch: list[Record]) -> list[Record]:
        return self.call(_child_call, batch)

    def call(self, fn: Callable, *args):
        try:
            return self.pool.submit(fn, *args).result()
        except BrokenProcessPool:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._start()
            raise RuntimeError(f"the {self.stage_name} worker process died (crashed or was killed) "
                               "while this input was in it") from None

    def close(self) -> None:
        self.pool.shutdown()


_child_fn: BatchFn | None = None  # in a ChildProcess: the batch function its setup built


def _child_setup(recipe: bytes) -> None:
    global _child_fn
    _child_fn = pickle.loads(recipe)()


def child_ready() -> None:
    """A no-op a worker thread calls to have its process started and set up."""


def _child_call(batch: list[Record]) -> list[Record]:
    return _child_fn(batch)
