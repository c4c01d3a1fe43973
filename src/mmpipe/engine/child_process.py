"""Worker processes for a stage marked ``in_processes`` (see ``engine.local``).

Each worker thread of such a stage owns one ``ChildProcess`` and keeps up to ``DEPTH`` batches
in it, so that the process never waits for this one between batches. A batch goes over a pipe
as the records the stage needs (ids, where to read); what comes back is the records without
their bulky array (``Stage.shared``), which the child wrote into a shared-memory slab: one small
message per batch.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import signal
import threading
import time
from collections import deque
from typing import Sequence

from ..records import Record
from ..stage import ROWS, ArrayField, RowSource, Stage
from .slabs import Slab, SlabPool, SlabReader

DEPTH = 2  # batches in a child at once: one it works on, one waiting in its inbox


def shipped_setup(stage: Stage) -> bytes:
    """The stage's ``setup`` pickled for its worker processes; refused by name if it cannot be."""
    try:
        return pickle.dumps(stage.setup)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(f"stage {stage.name!r} runs in processes, so its setup must pickle: "
                         f"{exc}") from None


def start_method() -> multiprocessing.context.BaseContext:
    """Forkserver where there is one: each child forks from a small server that has imported
    mmpipe once (a new worker in tens of ms, not a second), and never from this process, whose
    threads and OpenMP pools would make a plain fork unsafe. Spawn elsewhere (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mmpipe.jobs.embed", "mmpipe.jobs.moderate"])
    return ctx


class ChildDied(RuntimeError):
    """The worker process ended (crashed, killed) with a batch in it; it has been replaced."""


class ChildProcess:
    """One worker process running the batch function the shipped ``setup`` builds. If it dies (a
    decoder crashing on a hostile file, the OOM killer) it is replaced; the batch it held fails
    with a reason and the engine retries its items one by one, so only the culprit becomes an
    error row, where in a thread the crash would have ended the job."""

    def __init__(self, stage_name: str, recipe: bytes, slabs: SlabPool | None = None):
        self.stage_name, self.recipe, self.slabs = stage_name, recipe, slabs
        self.sent: deque[Slab | None] = deque()  # the slab of each batch in the child, oldest first
        self.busy_s = 0.0  # the child's own time in the batch function
        self._start()

    def _start(self) -> None:
        ctx = start_method()
        child_inbox, self.to_child = ctx.Pipe(duplex=False)
        self.from_child, child_outbox = ctx.Pipe(duplex=False)
        shared = (self.slabs.field, self.slabs.rows) if self.slabs else None
        self.process = ctx.Process(target=_child_main, args=(self.recipe, child_inbox, child_outbox, shared),
                                   name=f"mmpipe-{self.stage_name}", daemon=True)
        self.process.start()
        child_inbox.close()
        child_outbox.close()
        try:
            self.from_child.recv()  # the child's setup is done
        except (EOFError, OSError):
            self.close()
            # Spawned children import the parent's main script: an unguarded one runs again.
            raise RuntimeError(f"the {self.stage_name} worker process could not start; a script "
                               "that runs a job with worker processes needs its entry point "
                               "under `if __name__ == '__main__':`") from None

    def submit(self, batch: Sequence[Record], shared: bool = True) -> None:
        """Send a batch; with ``shared`` its arrays come back through a slab when one is free."""
        slab = self.slabs.acquire() if shared and self.slabs else None
        self.sent.append(slab)
        try:
            self.to_child.send((list(batch), slab.name if slab else None))
        except OSError:
            pass  # the child is gone: receive() says so

    def receive(self) -> list[Record]:
        """The oldest batch's results; raises what its batch function raised, or ``ChildDied``."""
        slab = self.sent.popleft()
        try:
            kind, value, busy = self._receive()
        except BaseException:
            self._drop(slab)
            raise
        self.busy_s += busy
        if kind == "raised":
            self._drop(slab)
            raise value
        records, placed = value
        if placed and slab is not None:
            # The records were made by unpickling just now: filling them in place is safe.
            rows = self.slabs.rows_of(slab, max(row for _, row in placed) + 1)
            name = self.slabs.field.name
            for i, row in placed:
                setattr(records[i], name, rows[row])
        else:
            self._drop(slab)
        return records

    def call(self, batch: Sequence[Record]) -> list[Record]:
        """One batch in and out, with nothing else in flight (retrying items one by one)."""
        self.submit(batch, shared=False)
        return self.receive()

    def reset(self) -> None:
        """Forget the batches still in the child: their results are read and dropped (the child
        lives) or the child is replaced (it died)."""
        while self.sent:
            try:
                self.receive()
            except Exception:  # noqa: BLE001 - a dropped batch's failure is nobody's; a death
                pass  # empties ``sent`` itself

    def _receive(self):
        try:
            return self.from_child.recv()
        except (EOFError, OSError):
            self._restart()
            raise ChildDied(f"the {self.stage_name} worker process died (crashed or was killed) "
                            "while this input was in it") from None

    def _restart(self) -> None:
        for slab in self.sent:
            self._drop(slab)
        self.sent.clear()
        self.close()
        self._start()

    def _drop(self, slab: Slab | None) -> None:
        if slab is not None:
            self.slabs.release(slab)

    def close(self) -> None:
        try:
            self.to_child.send(None)
        except OSError:
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.to_child.close()
        self.from_child.close()


def _child_main(recipe: bytes, inbox, outbox, shared: tuple[ArrayField, int] | None) -> None:
    # Ctrl-C reaches the terminal's whole process group: the parent decides what it stops (a
    # follower finishes its in-flight batches, which need this process alive).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fn = pickle.loads(recipe)()
    slabs = SlabReader(*shared) if shared else None
    # A thread empties the pipe into a queue, so that the parent's next batch never waits for
    # this process to finish the current one (both sides writing at once would deadlock).
    waiting: queue.Queue = queue.Queue()
    threading.Thread(target=_drain, args=(inbox, waiting), daemon=True).start()
    try:
        outbox.send(("ready", None, 0.0))
        while (message := waiting.get()) is not None:
            batch, slab = message
            start = time.perf_counter()
            rows = RowSource(slabs.rows_of(slab)) if slab else None
            token = ROWS.set(rows)
            try:
                out = fn(batch)
            except Exception as exc:  # noqa: BLE001 - raised again in the parent
                outbox.send(("raised", _portable(exc), time.perf_counter() - start))
                continue
            finally:
                ROWS.reset(token)
            placed = _into_slab(out, slabs, rows) if rows else []
            outbox.send(("done", (out, placed), time.perf_counter() - start))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone (killed): nothing left to do


def _drain(inbox, waiting: queue.Queue) -> None:
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):
            message = None  # the parent is gone
        waiting.put(message)
        if message is None:
            return


def _into_slab(records: list[Record], slabs: SlabReader, rows: RowSource) -> list[tuple[int, int]]:
    """(record, slab row) for each record whose shared array is in the slab: written there by the
    stage (``shared_row``), or else copied into the next free row. The arrays are taken off the
    records, which are about to be pickled away (so changed in place)."""
    field = slabs.field.name
    written = {id(view): k for k, view in enumerate(rows.taken)}  # the rows handed out, by identity
    placed = []
    for i, r in enumerate(records):
        value = getattr(r, field, None)
        row = written.pop(id(value), None) if value is not None else None
        if row is None and slabs.fits(value) and (free := rows.take()) is not None:
            free[...] = value
            row = len(rows.taken) - 1
        if row is not None:
            setattr(r, field, None)
            placed.append((i, row))
    return placed


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling, else a RuntimeError saying what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")
