"""Which offsets of a partition are done, as a shard's commit-log line records it.

Items finish out of order (a stage has several workers), so a shard may hold offset 11 of a
partition while offset 10 is still in flight. A shard's line therefore records, per partition it
touched, ``next``: the first offset not yet committed (everything below it that was read is in
some shard), and ``done``: the offsets at or above ``next`` that are committed, as ranges. A
restart, or the consumer a partition moves to, starts at the greatest ``next`` any line records
and skips the ``done`` offsets above it: every message's row exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable


@dataclass
class PartitionOffsets:
    # Where reading starts (a resumed ``next``); None: wherever the broker's group offset says.
    start: int | None = None
    pending: set[int] = field(default_factory=set)  # read, not yet in a committed shard
    done: set[int] = field(default_factory=set)  # committed, at or above the first pending offset
    read_to: int | None = None  # one past the last offset read

    def receive(self, offset: int) -> bool:
        """A message was read at ``offset``: False when an earlier shard already holds it."""
        self.read_to = offset + 1
        if offset in self.done:
            return False
        self.pending.add(offset)
        return True

    def entry(self, committing: Iterable[int]) -> dict:
        """This partition's record in the line of a shard that commits ``committing``."""
        nxt, done = self._after(set(committing))
        return {"next": nxt, "done": _ranges(done)}

    def commit(self, offsets: Iterable[int]) -> None:
        offsets = set(offsets)
        self.pending -= offsets
        _, self.done = self._after(offsets)

    @property
    def next_offset(self) -> int | None:
        """The first offset not yet committed; None before anything was read or resumed."""
        return self._first_uncommitted(self.pending)

    def _after(self, committing: set[int]) -> tuple[int, set[int]]:
        nxt = self._first_uncommitted(self.pending - committing)
        return nxt, {o for o in self.done | committing if o >= nxt}

    def _first_uncommitted(self, pending: set[int]) -> int | None:
        return min(pending) if pending else (self.read_to if self.read_to is not None else self.start)


def resume(entries: Iterable[dict], topic: str) -> dict[int, PartitionOffsets]:
    """Each partition's state from the ``kafka`` entries of commit-log lines (any consumer's, any
    order): start at the greatest ``next``, skip the ``done`` offsets above it."""
    nxt: dict[int, int] = {}
    done: dict[int, list[list[int]]] = {}
    for entry in entries:
        if entry.get("topic") != topic:
            continue
        for p, record in entry.get("partitions", {}).items():
            p = int(p)
            nxt[p] = max(nxt.get(p, record["next"]), record["next"])
            done.setdefault(p, []).extend(record["done"])
    return {p: PartitionOffsets(start=n, done={o for a, b in done.get(p, []) for o in range(max(a, n), b + 1)})
            for p, n in nxt.items()}


def _ranges(offsets: set[int]) -> list[list[int]]:
    """Sorted offsets as inclusive [first, last] runs: a shard's offsets are mostly one run."""
    runs: list[list[int]] = []
    for o in sorted(offsets):
        if runs and o == runs[-1][1] + 1:
            runs[-1][1] = o
        else:
            runs.append([o, o])
    return runs
