"""``--emit kafka://HOST:PORT/TOPIC``: one JSON decision per row of each committed shard, keyed by
the item's id, at least once.

A shard is emitted only once its commit-log line is durable, read back from its Parquet file: the
same path serves a fresh commit and a restart's re-emission. ``_emitted.json`` names the last
shard whose every message the broker acknowledged, all shards before it too; a run starts by
emitting every committed shard after it, in commit-log order, so a crash (kill -9) between a
commit and its deliveries costs duplicates on the topic, never a missing decision.

Producing never holds up the follower: ``on_commit`` only queues the shard's name; a thread of
this emitter reads it, produces and serves delivery reports.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
from confluent_kafka import KafkaError, Message, Producer

from ..sources.kafka_url import KafkaUrl
from .commit_log import Commit
from .output_dir import EMITTED, OutputDir

log = logging.getLogger(__name__)

PRODUCER = {
    # Retries never duplicate or reorder messages within a partition.
    "enable.idempotence": True,
    # 0: retry for ever. An outage delays decisions, it never drops them; only a permanent error
    # (a message too large, no permission) fails a delivery.
    "message.timeout.ms": 0,
    "linger.ms": 20,
}
SCORE = "score_"
COLUMNS = ["id", "action", "flagged", "reasons", "segments", "error"]
POLL_S = 0.05


@dataclass
class _Shard:
    name: str
    outstanding: int = 0  # produced, not yet acknowledged
    produced: bool = False  # every row handed to the producer
    failed: bool = False

    @property
    def done(self) -> bool:
        return self.produced and self.outstanding == 0 and not self.failed


class _Abandoned(Exception):
    """The stop's wait for the broker is over; what is left is emitted by the next run."""


class DecisionEmitter:
    """``start`` before the follower's first commit, ``on_commit`` after each, ``close`` when it
    stops (it waits up to ``flush_s`` for the broker). ``settings``: librdkafka settings over
    ``PRODUCER`` (security, timeouts)."""

    def __init__(self, url: KafkaUrl, settings: dict | None = None, flush_s: float = 30.0):
        self.url, self.flush_s = url, flush_s
        # librdkafka's own lines (a broker unreachable…) through this module's logger.
        self.settings = {**PRODUCER, "logger": log, **(settings or {}),
                         "bootstrap.servers": url.bootstrap}
        self.where = f"kafka://{url.bootstrap}/{url.topic}"
        # Shard names (None: stop). Unbounded, so a commit never waits: the shards are on disk.
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.order: list[_Shard] = []  # produced or producing, in commit-log order, after the mark
        self.deadline: float | None = None
        self.thread = threading.Thread(target=self._run, name="mmpipe-emit", daemon=True)

    def start(self, out: OutputDir, commits: list[Commit]) -> "DecisionEmitter":
        """Queue the committed shards after the mark (``commits``: the log as ``out.open`` read
        it), then start producing."""
        self.out, self.producer = out, Producer(self.settings)
        names = [c.shard for c in commits]
        mark = self._read_mark()
        for name in names[names.index(mark) + 1 if mark in names else 0:]:
            self.queue.put(name)
        self.thread.start()
        return self

    def on_commit(self, commit: Commit) -> None:
        self.queue.put(commit.shard)

    def close(self) -> None:
        self.deadline = time.monotonic() + self.flush_s
        self.queue.put(None)
        self.thread.join()

    def __enter__(self) -> "DecisionEmitter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        try:
            while (name := self._next()) is not None:
                self._emit(name)
        except _Abandoned:
            pass
        self.producer.flush(max(0.0, self.deadline - time.monotonic()))
        behind = [s.name for s in self.order if not s.done] + self._queued()
        if behind:
            log.warning("--emit: %d committed shard(s) from %s on not fully delivered to %s; the "
                        "next run with --emit emits them again", len(behind), behind[0], self.where)
        self.producer = None  # released, undelivered messages with it: the mark still names them

    def _queued(self) -> list[str]:
        names = []
        while not self.queue.empty():
            names.append(self.queue.get_nowait())
        return [n for n in names if n is not None]

    def _next(self) -> str | None:
        """The next shard to emit, serving delivery reports while none is waiting."""
        while True:
            try:
                return self.queue.get_nowait()
            except queue.Empty:
                self.producer.poll(POLL_S)

    def _emit(self, name: str) -> None:
        shard = _Shard(name)
        self.order.append(shard)
        delivered = partial(self._delivered, shard)
        try:
            for key, value in decisions(self.out.path / name):
                shard.outstanding += 1
                self._produce(key, value, delivered)
        except _Abandoned:
            raise
        except Exception as exc:  # noqa: BLE001 - a shard not emitted is emitted by the next run
            shard.failed = True
            log.error("--emit: %s not emitted to %s (%s); the next run emits it again", name,
                      self.where, exc)
        shard.produced = True
        self._advance()

    def _produce(self, key: bytes, value: bytes, delivered) -> None:
        while True:
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise _Abandoned  # the stop has waited long enough
            try:
                self.producer.produce(self.url.topic, value, key, on_delivery=delivered)
                self.producer.poll(0)
                return
            except BufferError:  # the producer's queue is full: wait for the broker, never drop
                self.producer.poll(POLL_S)

    def _delivered(self, shard: _Shard, err: KafkaError | None, msg: Message) -> None:
        shard.outstanding -= 1
        if err is not None:
            if not shard.failed:
                log.error("--emit: a decision of %s (id %r) was not delivered to %s: %s; the next "
                          "run emits the shard again", shard.name, msg.key().decode(), self.where,
                          err)
            shard.failed = True
        self._advance()

    def _advance(self) -> None:
        """Move the mark over the shards, from the oldest, that are wholly delivered; a failed one
        holds it for good (this run's later shards are emitted, and emitted again next run)."""
        done = 0
        while done < len(self.order) and self.order[done].done:
            done += 1
        if done:
            self._write_mark(self.order[done - 1].name)
            del self.order[:done]

    def _read_mark(self) -> str | None:
        mark = self.out.read_json(EMITTED) or {}
        # Another topic has had none of this folder's decisions.
        return mark.get("shard") if mark.get("topic") == self.url.topic else None

    def _write_mark(self, shard: str) -> None:
        self.out.write_json(EMITTED, {"topic": self.url.topic, "shard": shard}, durable=True)


def decisions(path) -> Iterator[tuple[bytes, bytes]]:
    """(key, message) of each row of the moderation shard at ``path``: the id, and the decision
    as JSON. ``categories`` holds each category's score where one was computed (a category that
    does not apply to the item's media, or an error row, has none)."""
    shard = pq.ParquetFile(path)
    scores = [n for n in shard.schema_arrow.names if n.startswith(SCORE)]
    for batch in shard.iter_batches(batch_size=1024, columns=COLUMNS + scores):
        for row in batch.to_pylist():
            decision = {
                "id": row["id"], "action": row["action"], "flagged": row["flagged"],
                "categories": {n[len(SCORE):]: _f32(row[n]) for n in scores if row[n] is not None},
                "reasons": row["reasons"] or [],
                "segments": [{**s, "score": _f32(s["score"])} for s in row["segments"] or []],
                "error": row["error"],
            }
            yield row["id"].encode(), json.dumps(decision, ensure_ascii=False,
                                                 separators=(",", ":")).encode()


def _f32(value: float | None) -> float | None:
    """A float32 score in its shortest form (0.97, not 0.9700000286102295)."""
    return None if value is None else float(str(np.float32(value)))
