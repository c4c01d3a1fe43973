"""The embedded engine: stage worker pools joined by bounded queues.

Queue capacity is the backpressure: a fast stage blocks on a full queue instead of piling
records up, so memory stays flat however large the input. Decode workers are threads because
PIL and NumPy release the GIL; each model stage worker calls its stage's ``setup`` once and owns
the model it returns. A stage marked ``in_processes`` keeps its threads but each hands its
batches to a worker process of its own (``ChildProcess``) and waits, so many decoders never hold
the GIL the model's thread needs to keep a GPU fed.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterable, Sequence, TypeVar

from ..records import Record, failed
from ..stage import BatchFn, Resources, Stage
from .child_process import ChildProcess, child_ready, shipped_setup
from .stats import EngineStats, StageStats

_END = object()
T = TypeVar("T")
_POLL_S = 0.1


class _Stopped(Exception):
    """Raised inside a worker when the run is being torn down."""


class LocalEngine:
    def __init__(self, queue_batches: int = 2):
        # Each queue holds this many batches per downstream worker: enough to keep a model fed
        # while the next batch is decoded, small enough that memory does not follow input size.
        self.queue_batches = queue_batches

    def run_once(self, fn: Callable[[], T], resources: Resources) -> T:
        """``fn()`` where a model stage would run: here, in this process."""
        return fn()

    def run(
        self,
        records: Iterable[Record],
        stages: Sequence[Stage],
        consume: Callable[[Record], None],
    ) -> EngineStats:
        """Push ``records`` through ``stages``; ``consume`` gets every result in this thread."""
        stop = threading.Event()
        errors: list[BaseException] = []
        queues = [queue.Queue(maxsize=self._capacity(s)) for s in stages]
        queues.append(queue.Queue(maxsize=max(self._capacity(s) for s in stages) if stages else 64))
        stats = EngineStats(stages=[StageStats(s.name, s.concurrency) for s in stages])

        def guard(fn: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    fn()
                except _Stopped:
                    pass
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    errors.append(exc)
                    stop.set()
            return run

        ready = _Countdown(sum(s.concurrency for s in stages))
        recipes = {i: shipped_setup(s) for i, s in enumerate(stages) if s.in_processes}

        def feed() -> None:
            # Model loading is not throughput: the clock starts once every worker is set up.
            ready.wait(stop)
            stats.setup_s = time.perf_counter() - start
            for record in records:
                _put(queues[0], record, stop)
            _put(queues[0], _END, stop)

        threads = [threading.Thread(target=guard(feed), name="mmpipe-feed", daemon=True)]
        for i, stage in enumerate(stages):
            remaining = [stage.concurrency]
            lock = threading.Lock()
            for w in range(stage.concurrency):
                work = self._worker(stage, stats.stages[i], queues[i], queues[i + 1], stop,
                                    remaining, lock, ready, recipes.get(i))
                threads.append(threading.Thread(target=guard(work), name=f"mmpipe-{stage.name}-{w}",
                                                daemon=True))

        start = time.perf_counter()
        for t in threads:
            t.start()
        try:
            while True:
                record = _get(queues[-1], stop)
                if record is _END:
                    break
                consume(record)
                stats.items += 1
        except _Stopped:
            pass
        except BaseException:
            stop.set()
            raise
        finally:
            stats.wall_s = time.perf_counter() - start - stats.setup_s
            stop.set()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        return stats

    def _capacity(self, stage: Stage) -> int:
        return max(4, self.queue_batches * stage.batch_size * stage.concurrency)

    @staticmethod
    def _worker(stage: Stage, stats: StageStats, inbox: queue.Queue, outbox: queue.Queue,
                stop: threading.Event, remaining: list[int], lock: threading.Lock,
                ready: "_Countdown", recipe: bytes | None):
        def work() -> None:
            if recipe is None:
                serve(stage.setup())
                return
            child = ChildProcess(stage.name, recipe)
            try:
                try:
                    child.call(child_ready)  # the process starts (and sets up) during setup
                except RuntimeError:
                    # Spawned children import the parent's main script: an unguarded one runs again.
                    raise RuntimeError(f"the {stage.name} worker process could not start; a script "
                                       "that runs a job with worker processes needs its entry point "
                                       "under `if __name__ == '__main__':`") from None
                serve(child)
            finally:
                child.close()

        def serve(fn: BatchFn) -> None:
            ready.count_down()
            ended = False
            while not ended:
                batch, ended = _take_batch(inbox, stage.batch_size, stop)
                healthy = sum(r.error is None for r in batch)
                if healthy:
                    t0 = time.perf_counter()
                    batch = apply_to_healthy(stage.name, fn, batch)
                    busy = time.perf_counter() - t0
                    with lock:
                        stats.busy_s += busy
                        stats.items += healthy
                        stats.batches += 1
                        stats.batch_s.append(busy)
                for r in batch:
                    _put(outbox, r, stop)
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                _put(outbox, _END, stop)
        return work


def apply_batch(stage_name: str, fn: BatchFn, batch: list[Record]) -> list[Record]:
    """Run ``fn`` on a batch; if it raises, retry item by item so one bad item fails alone."""
    try:
        return _checked(fn(batch), batch)
    except Exception as exc:  # noqa: BLE001 - becomes an error row
        if len(batch) == 1:
            return [failed(batch[0], f"{stage_name}: {type(exc).__name__}: {exc}")]
    out = []
    for record in batch:
        out.extend(apply_batch(stage_name, fn, [record]))
    return out


def apply_to_healthy(stage_name: str, fn: BatchFn, batch: list[Record]) -> list[Record]:
    """``fn`` on the records without an error; error records pass through in their place."""
    healthy = [r for r in batch if r.error is None]
    if not healthy:
        return batch
    done = iter(apply_batch(stage_name, fn, healthy))
    return [next(done) if r.error is None else r for r in batch]


def run_in_turn(stage_fns: Sequence[tuple[str, BatchFn]], batch: list[Record]) -> list[Record]:
    """Every stage on the whole batch, one after the other, in this thread (what a server
    replica does with a dynamic batch)."""
    for name, fn in stage_fns:
        batch = apply_to_healthy(name, fn, batch)
    return batch


def _checked(out: list[Record], batch: list[Record]) -> list[Record]:
    if len(out) != len(batch):
        raise RuntimeError(f"stage returned {len(out)} records for {len(batch)}")
    return out


def _take_batch(inbox: queue.Queue, size: int, stop: threading.Event) -> tuple[list[Record], bool]:
    """Wait for a full batch (static batching suits offline jobs); a short one only at the end."""
    batch: list[Record] = []
    while len(batch) < size:
        record = _get(inbox, stop)
        if record is _END:
            _put(inbox, _END, stop)  # the stage's other workers must see the end too
            return batch, True
        batch.append(record)
    return batch, False


class _Countdown:
    def __init__(self, n: int):
        self.n = n
        self.lock = threading.Lock()
        self.done = threading.Event()
        if n == 0:
            self.done.set()

    def count_down(self) -> None:
        with self.lock:
            self.n -= 1
            if self.n == 0:
                self.done.set()

    def wait(self, stop: threading.Event) -> None:
        while not self.done.wait(_POLL_S):
            if stop.is_set():
                raise _Stopped


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped from None


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        try:
            q.put(item, timeout=_POLL_S)
            return
        except queue.Full:
            if stop.is_set():
                raise _Stopped from None
