"""Dynamic batching: requests wait at most ``max_wait_ms`` to share a forward pass of up to
``max_batch_size`` items, texts grouped by length (``length_groups``); admission is bounded, so
overload is refused, never queued forever: by items (``max_queue``, the memory bound) and by the
time a new request would wait, estimated from how long the replicas' recent batches took, against
``max_queue_delay_ms`` or, by default, a budget of a few of those batches (``delay_budget``).

Replicas are threads calling one shared ``predict`` (one copy of the weights: ONNX Runtime
sessions and torch modules in inference mode are safe to call from several threads). A replica
leaves part of the queue to the others when they are free, or soon will be (``_share``). The
event loop only enqueues and awaits futures, so it stays responsive while models run.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .batch_times import BatchTimes
from .config import Batching
from .length_groups import closest_first, padding_tokens, text_length
from .metrics import ServeMetrics
from .served import ServedModel


# The default delay budget, in batches of ``max_batch_size`` as the replicas lately ran them: the
# one running, a full one behind it and the request's own. That keeps the replicas at full batches
# under overload; a longer queue adds wait, not throughput. Two (no full batch between) refused
# Poisson bursts of 32-text requests at half the capacity, once two were in the server. In
# batches, not milliseconds, so that it follows the model and the machine: a fixed 40 ms budget
# refused 90 % of 100 req/s on a busy two-core box whose single-text batches took 100-300 ms.
BUDGET_BATCHES = 3.0
# Below the floor a wait is mostly HTTP and scheduling, not queue: refusing would save little.
BUDGET_FLOOR_S, BUDGET_CEILING_S = 0.05, 10.0
# The place the door holds for the request being handled: (batcher, [still held]).
_HELD: ContextVar[tuple | None] = ContextVar("mmpipe_held_place", default=None)


class Overloaded(Exception):
    """The admission queue is full, or its wait too long: answer 429 and let the client back off."""


@dataclass
class _Request:
    """A request in the queue, or a batch-sized chunk of a bigger one."""

    items: list
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    length: int | None  # tokens of its longest text; None for other requests
    taken: bool = False  # in a replica's batch: that replica counts its items out of `unfinished`

    @property
    def abandoned(self) -> bool:  # timed out or the client went away: skip its work
        return self.future.done()


class DynamicBatcher:
    def __init__(self, model: ServedModel, batching: Batching, metrics: ServeMetrics):
        self.name, self.model, self.cfg, self.metrics = model.name, model, batching, metrics
        self.admitted = 0
        # Admitted items whose batch has not finished: what the wait estimate counts. Not
        # `admitted`, which keeps a finished batch's items until their requests' coroutines resume
        # (on a busy event loop, a batch or more later), and so overstated the wait and refused
        # requests the replicas had time for.
        self.unfinished = 0
        self.held = 0  # places held at the door for requests whose bodies are being read
        self.preparing = 0  # admitted requests still being read/decoded: batch-mates on their way
        self.pending: deque[_Request] = deque()
        self.cond = threading.Condition()
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent sizes, for tests and tuning
        self.batch_times = BatchTimes()
        # Per replica: (items, monotonic start) of the batch it is running; (0, 0.0) when idle.
        self.running = [(0, 0.0)] * batching.replicas
        self.closed = True
        self.threads: list[threading.Thread] = []
        metrics.estimated_wait.labels(self.name).set_function(lambda: self.estimated_wait(1) or 0.0)

    def start(self) -> None:
        """Starts the replicas (the server is starting; it may have been stopped before)."""
        self.closed = False
        self.threads = [threading.Thread(target=self._work, args=(i,), daemon=True,
                                         name=f"mmpipe-{self.name}-{i}") for i in range(self.cfg.replicas)]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        """Lets the replicas finish their batch and stop (the server is shutting down)."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        for t in self.threads:
            t.join()

    @property
    def utilisation(self) -> float:
        """How close admission is to refusing a one-item request: the fuller of the item limit
        and the delay budget. An empty queue refuses nothing."""
        items = (self.admitted + self.held) / self.cfg.max_queue
        budget = self.delay_budget()
        wait = self.estimated_wait(1) if budget is not None and self.admitted + self.held else None
        return items if wait is None else max(items, wait / budget)

    def delay_budget(self) -> float | None:
        """Seconds a new request may be expected to wait: ``max_queue_delay_ms`` when set, else
        ``BUDGET_BATCHES`` full batches as lately timed, within the floor and ceiling. None
        before any batch was timed: nothing is refused below ``max_queue`` then."""
        if self.cfg.max_queue_delay_ms is not None:
            return self.cfg.max_queue_delay_ms / 1000
        with self.cond:
            full = self.batch_times.seconds(self._shape(self.cfg.max_batch_size))
        return None if full is None else min(max(BUDGET_BATCHES * full, BUDGET_FLOOR_S), BUDGET_CEILING_S)

    def estimated_wait(self, items: int) -> float | None:
        """Seconds until a request of ``items`` more would be answered: what the replicas still
        have to run of their batches and the full batches queued ahead of it, shared among the
        replicas, then its own batch. None until a batch has been timed."""
        with self.cond:
            full_batch = self.batch_times.seconds(self._shape(self.cfg.max_batch_size))
            if full_batch is None:
                return None
            now = time.monotonic()
            running = sum(max(self.batch_times.seconds(self._shape(n)) - (now - t0), 0.0)
                          for n, t0 in self.running if n)
            queued = self.unfinished + self.held - sum(n for n, _ in self.running) + items
            full, rest = divmod(max(queued, 1) - 1, self.cfg.max_batch_size)
            own = self.batch_times.seconds(self._shape(rest + 1))
            return (running + full * full_batch) / self.cfg.replicas + own

    def refusal(self, items: int = 1) -> str | None:
        """Why a request of ``items`` would be refused now; None if it would be admitted. The
        server asks with one item before it reads a request's body (see ``model_routes.ModelRoutes``)."""
        with self.cond:
            queued = self.admitted + self.held
            if queued + items > self.cfg.max_queue:
                return f"{queued} items already queued (limit {self.cfg.max_queue})"
            # An empty queue admits whatever the estimate says: refusing would shorten no one's
            # wait, and the estimate only learns from batches that run.
            budget = self.delay_budget()
            if budget is not None and queued:
                # The wait for its first batch: what a bigger request's own batches take is the
                # work it asked for, not a queue, and counting it refused every request of more
                # than a few batches whenever anything else ran.
                wait = self.estimated_wait(min(items, self.cfg.max_batch_size))
                if wait is not None and wait > budget:
                    source = ("max_queue_delay_ms" if self.cfg.max_queue_delay_ms is not None
                              else f"{BUDGET_BATCHES:g} batches' time")
                    return (f"estimated wait {wait * 1000:.0f} ms exceeds the "
                            f"{budget * 1000:.0f} ms delay budget ({source})")
            return None

    @contextlib.contextmanager
    def door_place(self) -> Iterator[None]:
        """Holds one item's place for a request let in at the door, from before its body is read
        until ``submit`` admits or refuses it (or it ends otherwise). Without it, every request
        that arrived while a place was free passed the door: under overload, many more than the
        free places then had their bodies read and parsed only to be refused at admission, the
        costly refusal the door is there to spare the replicas."""
        held = [True]
        with self.cond:
            self.held += 1
        token = _HELD.set((self, held))
        try:
            yield
        finally:
            _HELD.reset(token)
            self._release(held)

    def _release(self, held: list) -> None:
        with self.cond:
            if held[0]:
                held[0] = False
                self.held -= 1

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Records for ``items`` (in order): prepared (media in a thread of this request's own),
        then batched with other requests' items. Raises Overloaded when they cannot be admitted,
        before any work is spent on them."""
        with self.cond:
            place = _HELD.get()
            if place is not None and place[0] is self:
                self._release(place[1])  # the place becomes this admission, or its refusal
            reason = self.refusal(len(items))
            if reason is not None:
                raise Overloaded(reason)
            self.admitted += len(items)
            self.unfinished += len(items)
            self.metrics.queue_depth.labels(self.name).set(self.admitted)
            self.preparing += 1
        chunks: list[_Request] | None = None
        try:
            # Texts only need tokenizing (tens of microseconds): a thread hop would cost more
            # and add its scheduling jitter to every request. Media is decoded off the loop.
            text_only = all(getattr(item, "data", None) is None for item in items)
            records = self.model.prepare(items) if text_only else await asyncio.to_thread(
                self.model.prepare, items)
            loop, size = asyncio.get_running_loop(), self.cfg.max_batch_size
            # A request bigger than a batch is queued as batch-sized chunks, so that several
            # replicas run it at once rather than one replica batch after batch.
            chunks = [_Request(part, loop.create_future(), loop, text_length(part))
                      for part in (records[i:i + size] for i in range(0, len(records), size))]
            with self.cond:
                # In one step, so that a replica never sees it neither preparing nor pending.
                self.preparing -= 1
                self.pending.extend(chunks)
                self.cond.notify(len(chunks))
            parts = await asyncio.gather(*(chunk.future for chunk in chunks))
            return [record for part in parts for record in part]
        finally:
            with self.cond:
                self.admitted -= len(items)
                # What no replica took never ran, and no replica counts it out.
                self.unfinished -= len(items) if chunks is None else sum(
                    len(c.items) for c in chunks if not c.taken)
                self.metrics.queue_depth.labels(self.name).set(self.admitted)
                if chunks is None:  # preparing failed or was cancelled
                    self.preparing -= 1
                    self.cond.notify()

    def _work(self, replica: int) -> None:
        busy = self.metrics.busy.labels(self.name, str(replica))
        while (requests := self._collect(replica)) is not None:
            busy.set(1)
            try:
                outcome = self._run([item for r in requests for item in r.items]), None
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                outcome = None, exc
            finally:
                busy.set(0)
                with self.cond:
                    self.running[replica] = (0, 0.0)
                    self.unfinished -= sum(len(r.items) for r in requests)
            results, error = outcome
            answers: dict[asyncio.AbstractEventLoop, list] = {}
            start = 0
            for r in requests:
                done = None if error else results[start:start + len(r.items)]
                start += len(r.items)
                answers.setdefault(r.loop, []).append((r.future, done, error))
            # One wake-up of each event loop per batch, not one per request: each is a system
            # call (a write to the loop's self-pipe) and a turn of the loop.
            for loop, settled in answers.items():
                loop.call_soon_threadsafe(_settle, settled)

    def _collect(self, replica: int) -> list[_Request] | None:
        """Requests for one batch: the oldest live one, then the waiting ones closest to it in
        length, and others that arrive within ``max_wait_ms``, while they fit in the batch (and
        the in-flight limit allows), and its share (``_share``) leaves room. It waits only for
        requests already admitted and being prepared, and only where no other replica is free
        to take them: a lone request on an idle server runs at once, with no batching delay."""
        cfg = self.cfg
        limit = cfg.max_inflight_per_replica or cfg.max_batch_size
        with self.cond:
            first = self._pop_oldest()
            if first is None:  # closed
                return None
            batch, size = [first], len(first.items)
            deadline = time.monotonic() + cfg.max_wait_ms / 1000.0
            while True:
                # Requests being prepared count as one item each: they are on their way.
                waiting = size + sum(len(r.items) for r in self.pending) + self.preparing
                room = min(cfg.max_batch_size, self._share(replica, waiting))
                mates = self._take_closest(first.length, max(room - size, 0), limit - len(batch))
                batch += mates
                size += sum(len(r.items) for r in mates)
                # Still waiting after a pick: they did not fit (or are left to another replica),
                # and no arrival will change that. A full share: the rest is for the others.
                done = size >= room or len(batch) >= limit or self.pending
                if done or not self._wait_for_arrivals(deadline):
                    break
            self.running[replica] = (size, time.monotonic())
            for r in batch:
                r.taken = True
            if self.pending:  # left to the others: wake one, should it be waiting
                self.cond.notify()
            return batch

    def _share(self, replica: int, items: int) -> int:
        """How many of the ``items`` waiting ``replica`` should take: all of them, unless the
        other replicas, free now or soon, would help finish them sooner. Then its part of an
        even split, in time: each replica that joins ends its batch when the others do (batch
        times as ``a + b·items``, lately timed; a busy replica joins when its batch ends).

        Why: with one replica taking all that waits, a request that came while both ran a
        batch waited for one, then ran in a batch of all that came meanwhile, while the other
        replica, freed a moment later, found nothing to do; under moderate load those requests
        made the tail. Under overload the queue is long and batches stay full."""
        a = self.batch_times.seconds(0)
        if a is None or self.cfg.buckets or len(self.running) == 1:
            return items  # nothing timed yet; or padded shapes, which a split would not shorten
        b = self.batch_times.seconds(1) - a
        if b <= 0:
            return items  # no cost per item: a split would only add batches
        now = time.monotonic()
        frees = sorted(max(self.batch_times.seconds(n) - (now - t0), 0.0) if n else 0.0
                       for j, (n, t0) in enumerate(self.running) if j != replica)
        ends = [0.0]  # when each replica that joins could start: this one now
        for free in frees:
            level = (items * b + sum(ends) + a * len(ends)) / len(ends)
            if free + a >= level:  # it would not start before the batches end
                break
            ends.append(free)
        level = (items * b + sum(ends) + a * len(ends)) / len(ends)
        return max(1, min(items, math.ceil((level - a) / b - 1e-9)))

    def _pop_oldest(self) -> _Request | None:
        """The oldest request not abandoned, waiting for one as long as it takes; None once closed."""
        while not self.closed:
            self._drop_abandoned()
            if self.pending:
                return self.pending.popleft()
            self.cond.wait()
        return None

    def _take_closest(self, length: int | None, room: int, count: int) -> list[_Request]:
        """Up to ``count`` waiting requests of ``room`` items in all, closest to ``length`` first,
        out of the queue. In arrival order (``length`` None), one that does not fit ends the pick:
        those behind it keep their place."""
        self._drop_abandoned()
        waiting = list(self.pending)
        taken: list[_Request] = []
        for i in closest_first(length, [r.length for r in waiting]):
            if len(taken) == count or not room:
                break
            if len(waiting[i].items) > room:
                if length is None:
                    break
                continue
            taken.append(waiting[i])
            room -= len(waiting[i].items)
        if taken:
            chosen = {id(r) for r in taken}
            self.pending = deque(r for r in waiting if id(r) not in chosen)
        return taken

    def _wait_for_arrivals(self, deadline: float) -> bool:
        """Waits until a request is queued or ``deadline``; False when none can come in time (or
        none is being prepared, or the batcher closed)."""
        while not self.closed and not self.pending:
            timeout = deadline - time.monotonic()
            if timeout <= 0 or not self.preparing:
                return False
            self.cond.wait(timeout)
        return not self.closed

    def _drop_abandoned(self) -> None:
        if any(r.abandoned for r in self.pending):
            self.pending = deque(r for r in self.pending if not r.abandoned)

    def _run(self, batch: list) -> list:
        """``predict`` on one batch (at most ``max_batch_size`` items: requests are queued in
        chunks no bigger), padded to its shape bucket."""
        self.batch_sizes.append(len(batch))
        self.metrics.batch_size.labels(self.name).observe(len(batch))
        tokens, padding = padding_tokens(batch)
        if tokens:
            self.metrics.tokens.labels(self.name, "text").inc(tokens)
            self.metrics.tokens.labels(self.name, "padding").inc(padding)
        padded, t0 = self._padded(batch), time.monotonic()
        out = self.model.predict(padded)[:len(batch)]
        with self.cond:
            self.batch_times.observe(len(padded), time.monotonic() - t0)
        return out

    def _shape(self, n: int) -> int:
        """The size a batch of ``n`` items runs at: its shape bucket, if any."""
        return next((b for b in self.cfg.buckets if b >= n), n) if self.cfg.buckets else n

    def _padded(self, chunk: list) -> list:
        target = self._shape(len(chunk))
        if target > len(chunk):
            self.metrics.padded.labels(self.name).inc(target - len(chunk))
        # The last item again: stages return new records and never change the ones they get.
        return chunk + [chunk[-1]] * (target - len(chunk))


def _settle(answers: list[tuple[asyncio.Future, list | None, BaseException | None]]) -> None:
    for future, result, exc in answers:
        if future.done():  # the client went away
            continue
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
