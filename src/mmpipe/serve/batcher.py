"""Dynamic batching: requests wait at most ``max_wait_ms`` to share a forward pass of up to
``max_batch_size`` items; admission is bounded, so overload is refused, never queued forever.

Workers are threads (one per replica) that own their models; the event loop only enqueues and
awaits futures, so it stays responsive while models run.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, Callable, Sequence


class Overloaded(Exception):
    """The admission queue is full: answer 429 and let the client back off."""


class DynamicBatcher:
    def __init__(self, make_runner: Callable[[], Callable[[list], list]], max_batch_size: int = 16,
                 max_wait_ms: float = 5.0, max_queue: int = 256, replicas: int = 1):
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.queue: queue.Queue = queue.Queue()
        self.admitted = 0
        self.lock = threading.Lock()
        self.batch_sizes: list[int] = []  # recent batch sizes, for tests and metrics
        self.ready = threading.Event()
        self._loaded = threading.Barrier(replicas + 1)
        self.threads = [threading.Thread(target=self._work, args=(make_runner,), daemon=True,
                                         name=f"mmpipe-serve-{i}") for i in range(replicas)]
        for t in self.threads:
            t.start()
        self._loaded.wait()
        self.ready.set()

    @property
    def depth(self) -> int:
        return self.admitted

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Results for ``items`` (in order); raises Overloaded when they cannot be admitted."""
        with self.lock:
            if self.admitted + len(items) > self.max_queue:
                raise Overloaded(f"{self.admitted} items already queued (limit {self.max_queue})")
            self.admitted += len(items)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self.queue.put((item, future, loop))
        try:
            return list(await asyncio.gather(*futures))
        finally:
            with self.lock:
                self.admitted -= len(items)

    def _work(self, make_runner) -> None:
        run = make_runner()  # loads this replica's models
        self._loaded.wait()
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(self.queue.get(timeout=remaining))
                except queue.Empty:
                    break
            self.batch_sizes = (self.batch_sizes + [len(batch)])[-1000:]
            try:
                results = run([item for item, _, _ in batch])
                outcomes = [(f, loop, r, None) for (_, f, loop), r in zip(batch, results)]
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                outcomes = [(f, loop, None, exc) for _, f, loop in batch]
            for future, loop, result, exc in outcomes:
                loop.call_soon_threadsafe(_settle, future, result, exc)


def _settle(future: asyncio.Future, result, exc) -> None:
    if future.done():  # the client went away
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
