"""The embedded engine: stage worker pools joined by bounded queues.

Queues carry chunks (a list of records: what one worker made of one batch), not single records:
the process that feeds the model then pays one queue round trip per batch, not one per item.
Queue capacity is the backpressure: a fast stage blocks on a full queue instead of piling
records up, so memory stays flat however large the input. Workers are threads; each model
stage worker calls its stage's ``setup`` once and owns the model it returns. A stage marked
``in_processes`` keeps its threads but each drives a worker process of its own
(``ChildProcess``), so that many decoders never hold the GIL the model's thread needs, and
its ``Stage.shared`` arrays come back through shared memory (``SlabPool``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Callable, Iterable, Sequence, TypeVar

from ..records import Record, failed
from ..stage import BatchFn, Resources, Stage
from .child_process import DEPTH, ChildProcess, shipped_setup
from .slabs import SlabPool
from .stats import EngineStats, StageStats
from .streaming import IDLE, Stream, lingering

_END = object()
T = TypeVar("T")
_POLL_S = 0.1
Chunk = list[Record]


class _Stopped(Exception):
    """Raised inside a worker when the run is being torn down."""


class LocalEngine:
    def __init__(self, queue_batches: int = 2):
        # Each queue holds this many chunks per downstream worker: enough to keep a model fed
        # while the next batch is decoded, small enough that memory does not follow input size.
        self.queue_batches = queue_batches

    def run_once(self, fn: Callable[[], T], resources: Resources) -> T:
        """``fn()`` where a model stage would run: here, in this process."""
        return fn()

    def run(
        self,
        records: Iterable[Record],
        stages: Sequence[Stage],
        consume: Callable[[Chunk], None],
        stream: Stream | None = None,
    ) -> EngineStats:
        """Push ``records`` through ``stages``; ``consume`` gets every result, a chunk at a time,
        in this thread. ``stream``: ``records`` is endless (see engine.streaming)."""
        stop = threading.Event()
        errors: list[BaseException] = []
        queues = [queue.Queue(maxsize=self._capacity(s)) for s in stages]
        queues.append(queue.Queue(maxsize=self._capacity(stages[-1]) if stages else 4))
        stats = stream.stats if stream else EngineStats()
        stats.stages = [StageStats(s.name, s.concurrency) for s in stages]
        linger_s = stream.linger_s if stream else None

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
        pools = {i: SlabPool(s.shared, s.batch_size, pin=_feeds_gpu(stages[i + 1:]))
                 for i, s in enumerate(stages) if s.in_processes and s.shared}
        first_batch = stages[0].batch_size if stages else 64
        cpu_start: list[float] = []

        def feed() -> None:
            # Model loading is not throughput: the clocks start once every worker is set up.
            ready.wait(stop)
            stats.setup_s = time.perf_counter() - start
            cpu_start.append(time.process_time())
            chunk: Chunk = []
            source = records if stream is None else lingering(records, stream.linger_s, stop, first_batch)
            for record in source:
                if record is IDLE:
                    if chunk:
                        _put(queues[0], chunk, stop)
                        chunk = []
                    continue
                chunk.append(record)
                if len(chunk) == first_batch:
                    _put(queues[0], chunk, stop)
                    chunk = []
            if chunk:
                _put(queues[0], chunk, stop)
            _put(queues[0], _END, stop)

        threads = [threading.Thread(target=guard(feed), name="mmpipe-feed", daemon=True)]
        for i, stage in enumerate(stages):
            remaining = [stage.concurrency]
            lock = threading.Lock()
            for w in range(stage.concurrency):
                work = _Worker(stage, stats.stages[i], queues[i], queues[i + 1], stop, remaining, lock,
                               ready, recipes.get(i), pools.get(i), linger_s)
                threads.append(threading.Thread(target=guard(work.run), name=f"mmpipe-{stage.name}-{w}",
                                                daemon=True))

        start = time.perf_counter()
        for t in threads:
            t.start()
        try:
            while True:
                chunk = _get(queues[-1], stop)
                if chunk is _END:
                    break
                consume(chunk)
                stats.items += len(chunk)
        except _Stopped:
            pass
        except BaseException:
            stop.set()
            raise
        finally:
            stats.wall_s = time.perf_counter() - start - stats.setup_s
            stats.cpu_s = time.process_time() - cpu_start[0] if cpu_start else 0.0
            stop.set()
            if stream:
                stream.source_stop.set()
            for t in threads:
                t.join()
            for pool in pools.values():
                pool.close()
        if errors:
            raise errors[0]
        return stats

    def _capacity(self, stage: Stage) -> int:
        return max(2, self.queue_batches * stage.concurrency)


class _Worker:
    """One worker of a stage: batches from its inbox through the stage's function (in this
    thread, or in a worker process of its own) into its outbox."""

    def __init__(self, stage: Stage, stats: StageStats, inbox: queue.Queue, outbox: queue.Queue,
                 stop: threading.Event, remaining: list[int], lock: threading.Lock,
                 ready: "_Countdown", recipe: bytes | None, slabs: SlabPool | None,
                 linger_s: float | None):
        self.stage, self.stats, self.outbox, self.stop = stage, stats, outbox, stop
        self.remaining, self.lock, self.ready = remaining, lock, ready
        self.recipe, self.slabs = recipe, slabs
        self.batches = _Batches(inbox, stage.batch_size, stop, linger_s)

    def run(self) -> None:
        if self.recipe is None:
            self._in_thread(self.stage.setup())
        else:
            child = ChildProcess(self.stage.name, self.recipe, self.slabs)
            try:
                self._in_child(child)
            finally:
                child.close()
        with self.lock:
            self.remaining[0] -= 1
            last = self.remaining[0] == 0
        if last:
            _put(self.outbox, _END, self.stop)

    def _in_thread(self, fn: BatchFn) -> None:
        self.ready.count_down()
        while (batch := self.batches.take()) is not None:
            t0 = time.perf_counter()
            out = apply_to_healthy(self.stage.name, fn, batch)
            self._done(batch, out, time.perf_counter() - t0)

    def _in_child(self, child: ChildProcess) -> None:
        """Up to ``DEPTH`` batches in the child at once. When one fails (its function raised, or
        the child died), the batches sent after it are taken back and sent again, and its own
        items are retried one at a time, so that only the item at fault becomes an error row."""
        self.ready.count_down()
        waiting: deque[Chunk] = deque()  # taken back after a failure, to send again
        sent: deque[tuple[Chunk, Chunk]] = deque()  # (batch, its healthy records), oldest first
        while True:
            # On a stream, a batch in the child is not kept waiting for input that may not come.
            while len(sent) < DEPTH and (batch := waiting.popleft() if waiting else
                                         self.batches.take(not sent or self.batches.linger_s is None)):
                healthy = _healthy(batch)
                if healthy:
                    child.submit(healthy)
                sent.append((batch, healthy))
            if not sent:
                return
            batch, healthy = sent.popleft()
            before = child.busy_s
            if not healthy:
                out = batch
            else:
                try:
                    out = _in_place(batch, child.receive())
                except Exception:  # noqa: BLE001 - retried item by item, as apply_batch does
                    waiting.extendleft(b for b, _ in reversed(sent))
                    sent.clear()
                    child.reset()
                    out = [apply_batch(self.stage.name, child.call, [r])[0] if r.error is None else r
                           for r in batch]
            self._done(batch, out, child.busy_s - before)

    def _done(self, batch: Chunk, out: Chunk, busy: float) -> None:
        healthy = sum(r.error is None for r in batch)
        if healthy:
            with self.lock:
                self.stats.busy_s += busy
                self.stats.items += healthy
                self.stats.batches += 1
                self.stats.batch_s.append(busy)
        _put(self.outbox, out, self.stop)


class _Batches:
    """Batches of ``size`` records taken from a queue of chunks: whole chunks while they fit, the
    rest of a larger chunk kept for the next batch. Static batching suits offline jobs: a short
    batch comes only at the end. With ``linger_s`` (a stream) a partial batch goes on once no
    chunk came for that long."""

    def __init__(self, inbox: queue.Queue, size: int, stop: threading.Event, linger_s: float | None):
        self.inbox, self.size, self.stop, self.linger_s = inbox, size, stop, linger_s
        self.carry: Chunk = []
        self.ended = False

    def take(self, block: bool = True) -> Chunk | None:
        """The next batch, None at the end; ``block=False``: an empty one when no chunk waits."""
        if not block and not self.carry and not self.ended and self.inbox.empty():
            return []
        batch, self.carry = self.carry[:self.size], self.carry[self.size:]
        while len(batch) < self.size and not self.ended:
            if batch and self.linger_s is not None:
                try:
                    chunk = self.inbox.get(timeout=self.linger_s)
                except queue.Empty:
                    break
            else:
                chunk = _get(self.inbox, self.stop)
            if chunk is _END:
                _put(self.inbox, _END, self.stop)  # the stage's other workers must see the end too
                self.ended = True
                break
            room = self.size - len(batch)
            batch.extend(chunk[:room])
            self.carry = chunk[room:]
        return batch or None


def _healthy(batch: Chunk) -> Chunk:
    return [r for r in batch if r.error is None]


def _in_place(batch: Chunk, healthy_out: Chunk) -> Chunk:
    """The batch with each healthy record replaced by its result; error records stay put."""
    done = iter(_checked(healthy_out, _healthy(batch)))
    return [next(done) if r.error is None else r for r in batch]


def _feeds_gpu(downstream: Sequence[Stage]) -> bool:
    return any(s.resources.num_gpus > 0 for s in downstream)


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
    healthy = _healthy(batch)
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
