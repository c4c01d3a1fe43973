"""Unbounded inputs: a source that keeps yielding items until told to stop.

``FollowSource`` is what the continuous runner (jobs.follow) needs from any such input: a folder
or object-store prefix here, a Kafka topic later. It resumes from what the commit log says was
consumed, yields items lazily (the engine's bounded queues then pause it while the pipeline is
full), says what a shard consumed (the JSON its commit-log line records) and hears when that shard
is durable.
"""

from __future__ import annotations

import hashlib
import posixpath
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ..errors import ConfigError
from ..records import Item
from .files import items_in_dir, printable
from .options import ReadFile, SourceOptions, filesystem


class FollowSource(ABC):
    """An input without an end. ``items`` runs in the engine's feed thread; ``consumed`` and
    ``committed`` come from the runner's commit path, in other threads, meanwhile: state they
    share with ``items`` is guarded."""

    @abstractmethod
    def resume(self, consumed: Iterable[dict]) -> None:
        """What earlier runs committed: each committed shard's ``consumed`` entry, oldest first."""

    @abstractmethod
    def items(self, stop: threading.Event) -> Iterator[Item]:
        """New items, lazily, until ``stop`` is set (then return promptly)."""

    @abstractmethod
    def consumed(self, ids: Sequence[str]) -> dict:
        """The commit-log entry (JSON) for a shard holding the items ``ids``."""

    @abstractmethod
    def committed(self, ids: Sequence[str]) -> list[float]:
        """The shard holding ``ids`` is durable: forget them; returns when each arrived (epoch
        seconds), for the end-to-end latency."""

    @abstractmethod
    def lag(self) -> int:
        """Items known to wait for a commit: in flight, or seen but not yet read."""

    def output(self, out: Path) -> Path:
        """The folder this follower's shards and commit log go to (a Kafka consumer: its own
        subfolder of ``out``)."""
        return out

    def bind(self, forget: Callable[[Sequence[str]], None], rows_lock: threading.Lock) -> None:
        """``forget(ids)`` takes rows not yet committed out of the open shard; it is called holding
        ``rows_lock``, the lock under which rows are added and shards committed."""

    def close(self) -> None:
        """The run is over and its last shard committed."""

    def owns(self, item_id: str) -> bool:
        """Whether this follower may still commit ``item_id`` (a Kafka follower stops owning the
        items of partitions taken from it; their rows are then dropped, the new owner redoes them)."""
        return True

    @staticmethod
    def consumed_of_ids(ids: Sequence[str]) -> dict:
        """The entry an old commit-log line without ``consumed`` stands for."""
        return {"ids": list(ids)}


@dataclass(frozen=True)
class _InFlight:
    arrived: float  # the file's modification time
    files: tuple[str, ...]  # the item's file and its caption's, relative to the root


class FolderFollower(FollowSource):
    """New files of a folder or fsspec prefix, each once: a file is read only after its size has
    stayed the same (and it was not modified) for ``settle_s``, so a file still being written is
    never read half-way. Polled every ``poll_s``.

    What it remembers of committed files is a 64-bit digest of each name (about 70 bytes a file,
    not the name); a collision would skip a file, with odds of about n²/3.7e19 for n files."""

    def __init__(self, input: str, options: SourceOptions, settle_s: float, poll_s: float):
        self.fs, path = filesystem(input, options.storage_options)
        if not self._is_dir(path):
            raise ConfigError("INPUT", f"--follow watches a folder or prefix; {input!r} is not one")
        self.root = path.rstrip("/")
        self.options, self.settle_s, self.poll_s = options, settle_s, poll_s
        self.known: set[int] = set()  # digests of files committed, in flight, or not items at all
        self.in_flight: dict[str, _InFlight] = {}  # by item id
        self.changing: dict[str, tuple[int, float]] = {}  # file → (size, when it was last seen to change)
        self.lock = threading.Lock()  # items() runs in the engine's feed thread

    def resume(self, consumed: Iterable[dict]) -> None:
        for entry in consumed:
            self.known.update(_digest(name) for name in entry.get("files", entry.get("ids", ())))

    def items(self, stop: threading.Event) -> Iterator[Item]:
        while not stop.is_set():
            yield from self._settled_items()
            stop.wait(self.poll_s)

    def consumed(self, ids: Sequence[str]) -> dict:
        with self.lock:
            return {"files": [f for i in ids for f in self.in_flight[i].files]}

    def committed(self, ids: Sequence[str]) -> list[float]:
        with self.lock:
            return [self.in_flight.pop(i).arrived for i in ids]

    def lag(self) -> int:
        with self.lock:
            return len(self.in_flight) + len(self.changing)

    def _settled_items(self) -> Iterator[Item]:
        self.fs.invalidate_cache()  # object stores' listings are cached; a poll must see new keys
        now = time.time()
        by_dir: dict[str, list[str]] = {}
        settled: dict[str, float] = {}
        waiting: set[str] = set()
        for path, info in sorted(self.fs.find(self.root, detail=True).items()):
            name = posixpath.basename(path)
            by_dir.setdefault(posixpath.dirname(path), []).append(name)
            rel = self._relative(path)
            if name.startswith(".") or _digest(rel) in self.known:
                continue
            waiting.add(rel)
            mtime = _mtime(info)
            if self._has_settled(rel, int(info.get("size") or 0), mtime, now):
                settled[path] = mtime if mtime is not None else now
                waiting.discard(rel)
        # Only files still being written stay here (one deleted meanwhile is forgotten).
        self.changing = {k: v for k, v in self.changing.items() if k in waiting}
        for dirpath, names in by_dir.items():
            ready = [n for n in names if posixpath.join(dirpath, n) in settled]
            if not ready:
                continue
            for item in items_in_dir(self.fs, dirpath, ready, self.root, self.options, siblings=names):
                files = self._files_of(item)
                with self.lock:
                    self.in_flight[item.id] = _InFlight(settled[item.read.path], files)
                self.known.update(_digest(f) for f in files)
                yield item
            # A settled file that became no item (a caption, a file of another kind) is not
            # looked at again in this run.
            self.known.update(_digest(self._relative(posixpath.join(dirpath, n))) for n in ready)

    def _has_settled(self, rel: str, size: int, mtime: float | None, now: float) -> bool:
        """Whether ``rel`` kept ``size`` for settle_s: seen unchanged that long, or (on a first
        sight) last modified that long ago."""
        seen = self.changing.get(rel)
        if seen is None or seen[0] != size:
            quiet_since = mtime if seen is None and mtime is not None else now
            self.changing[rel] = (size, min(quiet_since, now))
            seen = self.changing[rel]
        return now - seen[1] >= self.settle_s and (mtime is None or now - mtime >= self.settle_s)

    def _files_of(self, item: Item) -> tuple[str, ...]:
        read: ReadFile = item.read
        return (item.id,) + ((self._relative(read.caption),) if read.caption else ())

    def _relative(self, path: str) -> str:
        return printable(posixpath.relpath(path, self.root))

    def _is_dir(self, path: str) -> bool:
        try:
            return self.fs.isdir(path)
        except OSError:
            return False


def _digest(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def _mtime(info: dict) -> float | None:
    """A listing entry's modification time (local files: ``mtime``; object stores: ``LastModified``)."""
    value = info.get("mtime", info.get("LastModified"))
    if value is None:
        return None
    return value.timestamp() if hasattr(value, "timestamp") else float(value)
