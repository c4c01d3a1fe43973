"""A Kafka topic followed by one consumer of a consumer group, exactly once into the output.

Each consumer writes its own subfolder of OUT (its name: ``?consumer=``, or the first free
``HOST-N``, held by a lock file), with its own shards and commit log. The commit log, not the
broker, says where to start: when the group hands this consumer a partition, it reads every
consumer's commit log under OUT (sources.kafka_offsets) and seeks there. The group's offsets on
the broker are committed only after a shard is durable, for the usual lag tools.

When a partition is taken away (another consumer joined, or this one leaves), the rows of its
items not yet in a committed shard are dropped and the items forgotten: the new owner reads
every commit log only after the hand-over, and does them again. (A consumer the group thinks
dead while it still runs, say paused past ``session.timeout.ms``, can commit a shard the new
owner also makes: Kafka's own fence against that is transactions, which a file output has not.)

Two messages with the same key in flight at once are both processed, each a row of its own; their
offsets are told apart by arrival order.
"""

from __future__ import annotations

import fcntl
import json
import logging
import socket
import threading
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from ..errors import ConfigError
from ..records import Item
from .follow import FollowSource
from .kafka_messages import MessageItems
from .kafka_offsets import PartitionOffsets, resume
from .kafka_url import KafkaUrl
from .options import SourceOptions

log = logging.getLogger("mmpipe.kafka")

COMMITS = "_commits.jsonl"  # sinks.output_dir's name for a folder's commit log
LOCK = ".consumer.lock"
BATCH = 64  # messages taken per poll: the rest wait in librdkafka's bounded queue

# Defaults a deployment may override through the job's storage_options (any librdkafka property).
CONSUMER_DEFAULTS = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # A partition no commit log knows yet starts at the group's broker offset, else at the start.
    "auto.offset.reset": "earliest",
    # What librdkafka reads ahead is bounded: memory does not follow the lag.
    "queued.max.messages.kbytes": 16384,
    "queued.min.messages": 1000,
    # A quiet partition's fetch returns after this long (librdkafka waits 500 ms): a message that
    # arrives then waits less for its decision.
    "fetch.wait.max.ms": 100,
    # A dead consumer's partitions move to the others after this long.
    "session.timeout.ms": 10000,
    "heartbeat.interval.ms": 2000,
    "log_level": 4,  # librdkafka's warnings and worse; error_cb says when brokers go away
}


class KafkaFollower(FollowSource):
    def __init__(self, url: KafkaUrl, value_format: str, options: SourceOptions, poll_s: float = 1.0):
        self.url, self.poll_s = url, poll_s
        self.messages = MessageItems(url.topic, value_format, options)
        self.group = url.params.get("group") or "mmpipe"
        self.settings = {**CONSUMER_DEFAULTS, **options.storage_options}
        self.root: Path | None = None  # OUT, where every consumer's commit log is
        self.name: str | None = None
        self._lock_file = None
        self.consumer = None  # made by the reading thread, closed by close()
        self.partitions: dict[int, PartitionOffsets] = {}
        self.in_flight: dict[str, deque[tuple[int, int, float]]] = defaultdict(deque)  # id → (p, offset, arrived)
        self.high: dict[int, int] = {}  # each partition's high watermark, as last fetched
        self.to_commit: dict[int, int] = {}  # broker offsets to commit, from the reading thread
        self.lock = threading.Lock()
        self.rows_lock: threading.Lock | None = None
        self.forget_rows: Callable[[Sequence[str]], None] | None = None
        self.last_error = 0.0
        self.reading_done = threading.Event()  # set while no thread reads (close() waits for it)
        self.reading_done.set()

    def output(self, out: Path) -> Path:
        self.root = out
        self.name, self._lock_file = _claim(out, self.url.params.get("consumer"))
        return out / self.name

    def bind(self, forget: Callable[[Sequence[str]], None], rows_lock: threading.Lock) -> None:
        self.forget_rows, self.rows_lock = forget, rows_lock

    def resume(self, consumed: Iterable[dict]) -> None:
        """Nothing to do here: every assignment reads all the consumers' commit logs afresh."""

    def items(self, stop: threading.Event) -> Iterator[Item]:
        self.reading_done.clear()
        try:
            yield from self._read(stop)
        finally:
            self.reading_done.set()

    def _read(self, stop: threading.Event) -> Iterator[Item]:
        from confluent_kafka import Consumer  # the kafka extra: checked before a job starts

        assert self.root is not None, "output() first"
        self.consumer = Consumer({**self.settings, "bootstrap.servers": self.url.bootstrap,
                                  "group.id": self.group, "client.id": f"mmpipe-{self.name}",
                                  "error_cb": self._on_error, "logger": log})
        self.consumer.subscribe([self.url.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_revoke)
        log.info("consumer %s of group %s follows %s", self.name, self.group, self.url.topic)
        while not stop.is_set():
            self._commit_offsets()
            # consume(n, timeout) waits until n messages or the timeout: asked for a whole batch,
            # a trickle would wait up to the timeout each time. Wait for one, take what is queued.
            messages = self.consumer.consume(1, timeout=min(self.poll_s, 0.5))
            if messages:
                messages += self.consumer.consume(BATCH - 1, timeout=0)
            for message in messages:
                if message.error():
                    self._on_error(message.error())
                    continue
                item = self._item(message)
                if item is not None:
                    yield item
            self._refresh_high()

    def consumed(self, ids: Sequence[str]) -> dict:
        with self.lock:
            offsets = self._offsets_of(ids)
            return {"kafka": {"topic": self.url.topic, "consumer": self.name, "partitions": {
                str(p): self.partitions[p].entry(o) for p, o in offsets.items() if p in self.partitions}}}

    def committed(self, ids: Sequence[str]) -> list[float]:
        with self.lock:
            arrived = []
            by_partition: dict[int, list[int]] = defaultdict(list)
            for i in ids:
                p, offset, when = self.in_flight[i].popleft()
                if not self.in_flight[i]:
                    del self.in_flight[i]
                by_partition[p].append(offset)
                arrived.append(when)
            for p, offsets in by_partition.items():
                if p in self.partitions:
                    state = self.partitions[p]
                    state.commit(offsets)
                    self.to_commit[p] = state.next_offset
            return arrived

    def owns(self, item_id: str) -> bool:
        with self.lock:
            return item_id in self.in_flight

    def lag(self) -> int:
        with self.lock:
            return sum(max(self.high.get(p, 0) - nxt, 0) for p, s in self.partitions.items()
                       if (nxt := s.next_offset) is not None)

    def close(self) -> None:
        """Commit the last offsets and leave the group (its partitions move at once)."""
        # The reading thread ends its last poll first: a consumer is closed by one thread at a time.
        self.reading_done.wait(self.poll_s + 5)
        if self.consumer is not None:
            self._commit_offsets(asynchronous=False)
            self.consumer.close()
        if self._lock_file is not None:
            self._lock_file.close()

    # -- the group's hand-overs (called inside consume(), in the reading thread) --

    def _on_assign(self, consumer, partitions) -> None:
        states = resume(_kafka_entries(self.root), self.url.topic)
        with self.lock:
            for tp in partitions:
                state = states.get(tp.partition, PartitionOffsets())
                self.partitions[tp.partition] = state
                if state.start is not None:
                    tp.offset = state.start
        consumer.assign(partitions)
        log.info("consumer %s takes partitions %s", self.name,
                 ", ".join(f"{tp.partition}@{tp.offset if tp.offset >= 0 else 'group offset'}" for tp in partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        gone = {tp.partition for tp in partitions}
        assert self.rows_lock is not None and self.forget_rows is not None, "bind() first"
        with self.rows_lock, self.lock:
            dropped = [i for i, queue in self.in_flight.items() if any(p in gone for p, _, _ in queue)]
            for i in dropped:
                del self.in_flight[i]
            self.forget_rows(dropped)
            for p in gone:
                self.partitions.pop(p, None)
                self.high.pop(p, None)
                self.to_commit.pop(p, None)
        if partitions:
            log.info("consumer %s gives up partitions %s (%d items in flight redone by their next owner)",
                     self.name, ", ".join(str(p) for p in sorted(gone)), len(dropped))
        consumer.unassign()

    # -- the reading thread's own work --

    def _item(self, message) -> Item | None:
        p, offset = message.partition(), message.offset()
        kind, ms = message.timestamp()
        arrived = ms / 1000 if kind and ms > 0 else time.time()
        item = self.messages.item(message.key(), message.value(), p, offset)
        with self.lock:
            state = self.partitions.get(p)
            if state is None or not state.receive(offset):
                return None  # a partition just taken away, or an offset an earlier shard holds
            self.in_flight[item.id].append((p, offset, arrived))
        return item

    def _offsets_of(self, ids: Sequence[str]) -> dict[int, list[int]]:
        seen: dict[str, int] = defaultdict(int)
        offsets: dict[int, list[int]] = defaultdict(list)
        for i in ids:
            p, offset, _ = self.in_flight[i][seen[i]]
            seen[i] += 1
            offsets[p].append(offset)
        return offsets

    def _commit_offsets(self, asynchronous: bool = True) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        with self.lock:
            pending, self.to_commit = self.to_commit, {}
        if not pending:
            return
        try:
            self.consumer.commit(offsets=[TopicPartition(self.url.topic, p, o) for p, o in pending.items()],
                                 asynchronous=asynchronous)
        except KafkaException as exc:  # advisory only: the commit log is what a restart reads
            log.warning("could not commit offsets to the broker: %s", exc)

    def _refresh_high(self) -> None:
        from confluent_kafka import TopicPartition

        with self.lock:
            partitions = list(self.partitions)
        for p in partitions:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(self.url.topic, p), cached=True)
            if high >= 0:
                with self.lock:
                    self.high[p] = high

    def _on_error(self, error) -> None:
        """Brokers that go away are waited for (librdkafka reconnects); said at most every 10 s."""
        if error.fatal():
            raise ConfigError("INPUT", f"Kafka: {error.str()}")
        now = time.monotonic()
        if now - self.last_error >= 10:
            self.last_error = now
            log.warning("Kafka: %s (waiting for the brokers; nothing is lost)", error.str())


def _claim(root: Path, name: str | None) -> tuple[str, object]:
    """This consumer's subfolder of OUT, locked while it runs: ``name``, or the first ``HOST-N``
    that no running consumer holds (so a restarted consumer finds its own folder again)."""
    candidates = [name] if name else (f"{socket.gethostname()}-{n}" for n in range(1024))
    for candidate in candidates:
        folder = root / candidate
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return candidate, handle
        except BlockingIOError:
            handle.close()
    raise ConfigError("INPUT", f"consumer {name!r} already runs on {root / str(name)}; "
                               "give each process its own ?consumer=NAME")


def _kafka_entries(root: Path) -> Iterator[dict]:
    """The ``kafka`` entries of every consumer's commit log under ``root``, read line by line."""
    for log_path in sorted(root.glob(f"*/{COMMITS}")):
        with open(log_path, "rb") as f:
            for line in f:
                try:
                    entry = json.loads(line).get("consumed") or {}
                except ValueError:
                    break  # a torn last line: nothing after it was committed
                if "kafka" in entry:
                    yield entry["kafka"]
