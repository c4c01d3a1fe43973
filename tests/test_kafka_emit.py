"""DecisionEmitter against a real Kafka-protocol broker (librdkafka's mock cluster): committed
shards of moderation rows become one JSON decision per row keyed by id; the mark in
_emitted.json says what a restart emits again; an undeliverable shard holds the mark."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("confluent_kafka")
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402

import mmpipe  # noqa: E402
from mmpipe.jobs.moderate import moderation_schema  # noqa: E402
from mmpipe.sinks import OutputDir  # noqa: E402
from mmpipe.sinks.commit_log import Commit  # noqa: E402
from mmpipe.sinks.kafka_emit import DecisionEmitter  # noqa: E402
from mmpipe.sinks.output_dir import EMITTED  # noqa: E402
from mmpipe.sources.kafka_url import parse_kafka_url  # noqa: E402
from tests.conftest import photo  # noqa: E402

TIMEOUT_S = 60
QUIET_S = 0.5  # no message for this long after the expected ones: no duplicate follows


def topic_url(broker: str) -> str:
    return f"kafka://{broker}/decisions-{uuid.uuid4().hex[:8]}"


def read_topic(url: str, at_least: int) -> list[tuple[str, dict]]:
    """(key, decision) of every message on the topic, once ``at_least`` have arrived and no more
    come for a moment; partitions assigned, not subscribed, so no group join to wait for."""
    where = parse_kafka_url(url, "url")
    consumer = Consumer({"bootstrap.servers": where.bootstrap, "group.id": "test",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(where.topic, timeout=10).topics[where.topic].partitions
        consumer.assign([TopicPartition(where.topic, p, OFFSET_BEGINNING) for p in partitions])
        got: list[tuple[str, dict]] = []
        deadline = time.monotonic() + TIMEOUT_S
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and (len(got) < at_least or time.monotonic() - quiet_since < QUIET_S):
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append((msg.key().decode(), json.loads(msg.value())))
                quiet_since = time.monotonic()
        return got
    finally:
        consumer.close()


ROW = {"uri": None, "media_type": "text", "text": "t", "ocr_text": None, "judge": None,
       "thumbnail": None, "width": None, "height": None, "duration_s": None, "frames": None,
       "text_truncated": False, "bank_match": None}


def committed_folder(tmp_path: Path, shards: list[list[dict]]) -> tuple[OutputDir, list[Commit]]:
    """An output folder with ``shards`` of moderation rows written and committed."""
    out = OutputDir(tmp_path / "out")
    out.path.mkdir()
    for i, rows in enumerate(shards):
        name = f"part-{i:05d}.parquet"
        table = pa.Table.from_pylist([{**ROW, **r} for r in rows],
                                     schema=moderation_schema(["harassment", "sexual"]))
        pq.write_table(table, out.path / name)
        out.log.append(Commit(name, [r["id"] for r in rows], sum(r.get("error") is not None for r in rows)))
    return out, out.log.read()


def decision(id: str, action: str | None = "allow", **fields) -> dict:
    return {"id": id, "action": action, "flagged": action == "block" if action else None,
            "reasons": [], "segments": [], "error": None, **fields}


SHARDS = [
    [decision("a.txt", "block", score_harassment=0.97, reasons=["harassment 0.97"],
              segments=[{"start": 3.0, "end": 5.0, "category": "harassment", "score": 0.5}]),
     decision("b.txt", score_harassment=0.1, score_sexual=0.2)],
    [decision("c.jpg", None, error="decode: empty file")],
    [decision(f"d{i}.txt") for i in range(50)],
]


def emit(url: str, out: OutputDir, commits: list[Commit], **options) -> None:
    with DecisionEmitter(parse_kafka_url(url, "url"), **options).start(out, commits):
        pass


@pytest.mark.slow
def test_each_committed_row_is_one_decision_keyed_by_id_and_the_mark_follows(broker, tmp_path):
    url = topic_url(broker)
    out, commits = committed_folder(tmp_path, SHARDS)
    # Room for 4 messages in the producer: the 53 wait for deliveries (backpressure), none dropped.
    emit(url, out, commits, settings={"queue.buffering.max.messages": 4})
    got = read_topic(url, 53)
    assert len(got) == 53 and all(key == d["id"] for key, d in got)
    by_id = dict(got)
    assert by_id["a.txt"] == {"id": "a.txt", "action": "block", "flagged": True,
                              "categories": {"harassment": 0.97}, "reasons": ["harassment 0.97"],
                              "segments": [{"start": 3.0, "end": 5.0, "category": "harassment",
                                            "score": 0.5}], "error": None}
    assert by_id["b.txt"]["categories"] == {"harassment": 0.1, "sexual": 0.2}
    assert by_id["c.jpg"] == {"id": "c.jpg", "action": None, "flagged": None, "categories": {},
                              "reasons": [], "segments": [], "error": "decode: empty file"}
    assert json.loads((out.path / EMITTED).read_text()) == {"topic": parse_kafka_url(url, "u").topic,
                                                             "shard": "part-00002.parquet"}


@pytest.mark.slow
def test_a_restart_emits_the_shards_after_the_mark_and_another_topic_gets_all(broker, tmp_path):
    url = topic_url(broker)
    out, commits = committed_folder(tmp_path, SHARDS)
    topic = parse_kafka_url(url, "u").topic
    out.write_json(EMITTED, {"topic": topic, "shard": "part-00000.parquet"})
    emit(url, out, commits)
    assert sorted(k for k, _ in read_topic(url, 51)) == sorted(["c.jpg"] + [f"d{i}.txt" for i in range(50)])
    other = topic_url(broker)  # its mark is not this topic's: everything goes there
    emit(other, out, commits)
    assert len(read_topic(other, 53)) == 53
    assert out.read_json(EMITTED)["topic"] == parse_kafka_url(other, "u").topic


@pytest.mark.slow
def test_undelivered_decisions_hold_the_mark_and_are_logged(tmp_path, caplog):
    out, commits = committed_folder(tmp_path, SHARDS[:2])
    # Nothing listens there: every message times out (instead of waiting for ever, the default).
    emit("kafka://127.0.0.1:9/nowhere", out, commits, settings={"message.timeout.ms": 200}, flush_s=5)
    assert not (out.path / EMITTED).exists()
    assert "part-00000.parquet (id 'a.txt') was not delivered" in caplog.text
    assert "2 committed shard(s) from part-00000.parquet on not fully delivered" in caplog.text


def test_a_stop_waits_for_the_broker_only_so_long(tmp_path, caplog):
    out, commits = committed_folder(tmp_path, SHARDS)
    started = time.monotonic()
    emit("kafka://127.0.0.1:9/nowhere", out, commits, flush_s=0.3)
    assert time.monotonic() - started < 3
    assert "3 committed shard(s) from part-00000.parquet on not fully delivered" in caplog.text
    assert not (out.path / EMITTED).exists()


def sigterm_when(condition, what: str) -> threading.Thread:
    """SIGTERM to this process (a follower running in the main thread stops, as a service manager
    stops it) once ``condition`` holds, or after TIMEOUT_S so that a failing test ends."""
    def watch() -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        watching.timed_out = not condition()
        os.kill(os.getpid(), signal.SIGTERM)

    watching = threading.Thread(target=watch, name=f"sigterm when {what}", daemon=True)
    watching.start()
    return watching


def committed_ids(out: Path) -> list[str]:
    return [i for c in OutputDir(out).log.read() for i in c.ids]


def emitted_up_to(out: Path, shard: int) -> bool:
    return (OutputDir(out).read_json(EMITTED) or {}).get("shard") == f"part-{shard:05d}.parquet"


def moderation_inputs(folder: Path) -> Path:
    """A photo to allow, a text to block and an empty file (an error row)."""
    folder.mkdir()
    photo(1, size=(200, 150)).save(folder / "plain.png")
    (folder / "comment.txt").write_text("you are a stupid idiot")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


@pytest.mark.slow
def test_a_moderate_follower_emits_its_decisions_and_a_restart_those_after_the_mark(broker, tmp_path):
    folder, out, url = moderation_inputs(tmp_path / "in"), tmp_path / "out", topic_url(broker)
    options = dict(follow=True, emit=url, ocr=False, shard_size=1, shard_seconds=0.5,
                   settle_s=0.2, poll_s=0.1, batch_size=4, progress=False)

    watch = sigterm_when(lambda: len(committed_ids(out)) == 3, "three commits")
    mmpipe.moderate(str(folder), str(out), **options)
    assert not watch.timed_out
    assert emitted_up_to(out, 2)  # the stop waited for the last shard's delivery
    got = dict(read_topic(url, 3))
    rows = mmpipe.read_output(out).to_pylist()
    assert sorted(got) == sorted(r["id"] for r in rows)
    for row in rows:
        assert {k: got[row["id"]][k] for k in ("action", "flagged", "reasons", "error")} == \
            {k: row[k] for k in ("action", "flagged", "reasons", "error")}
    assert got["comment.txt"]["action"] == "block" and got["comment.txt"]["categories"]["harassment"] > 0.9
    assert got["plain.png"]["action"] == "allow" and got["empty.jpg"]["error"] == "decode: empty file"

    # A crash after the first shard's deliveries were marked, before the others' were.
    OutputDir(out).write_json(EMITTED, {"topic": parse_kafka_url(url, "u").topic,
                                        "shard": "part-00000.parquet"})
    first = committed_ids(out)[0]
    (folder / "later.txt").write_text("have a lovely day")
    watch = sigterm_when(lambda: len(committed_ids(out)) == 4 and emitted_up_to(out, 3), "the restart")
    mmpipe.moderate(str(folder), str(out), **options)
    assert not watch.timed_out
    keys = [k for k, _ in read_topic(url, 3 + 2 + 1)]
    assert {k: keys.count(k) for k in keys} == {**{i: 2 for i in committed_ids(out)[:3]}, first: 1,
                                                "later.txt": 1}
