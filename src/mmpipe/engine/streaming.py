"""How the local engine runs an endless input (a followed folder): batches do not wait to fill.

Offline jobs batch statically: a short batch comes only at the end of the input. A stream's items
trickle, and may stop for hours: a partial batch then goes on after ``linger_s`` without input,
both where the feed cuts the input into chunks and where each stage takes its batches.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from .stats import EngineStats

IDLE = object()  # yielded by ``lingering`` when no record came for ``linger_s``
_END = object()


@dataclass
class Stream:
    # Set when the run ends, so that a source waiting for input returns, also when a failure
    # tears the run down (the feed thread is joined).
    source_stop: threading.Event
    # Filled while the run goes on, for a caller that reports as it goes (a follower's stats.json).
    stats: EngineStats = field(default_factory=EngineStats)
    linger_s: float = 0.05


def lingering(records: Iterable, linger_s: float, stop: threading.Event, depth: int) -> Iterator:
    """``records`` with ``IDLE`` yielded whenever none came for ``linger_s``. A thread pulls them
    into a queue of ``depth``: when it is full the thread waits, so the source still pauses
    while the pipeline is full."""
    pulled: queue.Queue = queue.Queue(maxsize=depth)
    failure: list[BaseException] = []

    def pull() -> None:
        try:
            for record in records:
                if not _offer(pulled, record, stop):
                    return
        except BaseException as exc:  # noqa: BLE001 - raised again in the feed thread
            failure.append(exc)
        _offer(pulled, _END, stop)

    threading.Thread(target=pull, name="mmpipe-source", daemon=True).start()
    while not stop.is_set():
        try:
            record = pulled.get(timeout=linger_s)
        except queue.Empty:
            yield IDLE
            continue
        if record is _END:
            break
        yield record
    if failure:
        raise failure[0]


def _offer(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False
