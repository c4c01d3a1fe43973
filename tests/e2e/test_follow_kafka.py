"""`mmpipe embed|moderate kafka://… --follow` as a user runs it: real subprocesses in a consumer
group reading a real Kafka-protocol broker on 127.0.0.1 (mmpipe.local_kafka), killed with
SIGKILL at random moments, a broker that goes away; every message's row exactly once."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmpipe.local_kafka import LocalKafka
from tests.e2e.test_cli import run_cli
from tests.e2e.test_follow import follow, jpeg, stop

confluent_kafka = pytest.importorskip("confluent_kafka")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT_S = 120
# A killed consumer's partitions move once the group misses it this long (ms).
SESSION = ["--storage-option", "session.timeout.ms=6000", "--storage-option", "heartbeat.interval.ms=1000"]


@pytest.fixture
def kafka():
    with LocalKafka(partitions=4) as broker:
        yield broker


def produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]], pause_s: float = 0.0,
            partition: int | None = None) -> None:
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in messages:
        extra = {} if partition is None else {"partition": partition}
        producer.produce(topic, key=key, value=value, **extra)
        producer.poll(0)
        if pause_s:
            time.sleep(pause_s)
    assert producer.flush(30) == 0


def texts(keys) -> list[tuple[str, bytes]]:
    return [(k, json.dumps({"text": f"upload {k}"}).encode()) for k in keys]


def rows(out: Path) -> list[dict]:
    """Every committed row under OUT, all consumers' subfolders together, in commit order."""
    found = []
    for log in sorted(out.glob("*/_commits.jsonl")):
        for line in log.read_text().splitlines():
            found.extend(pq.read_table(log.parent / json.loads(line)["shard"]).to_pylist())
    return found


def wait_rows(out: Path, n: int, procs: list, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while len(rows(out)) < n:
        for proc in procs:
            assert proc.poll() is None, f"a follower exited ({proc.returncode}) before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {len(rows(out))} of {n} rows"
        time.sleep(0.2)


def exactly_once(out: Path, keys: list[str]) -> dict[str, dict]:
    got = rows(out)
    ids = [r["id"] for r in got]
    doubled = sorted({i for i in ids if ids.count(i) > 1})
    assert not doubled, f"rows written twice: {doubled}"
    assert sorted(ids) == sorted(keys)
    return {r["id"]: r for r in got}


def embed_args(kafka: LocalKafka, topic: str, out: Path, model: str, *extra: str, consumer: str = "") -> list[str]:
    query = "group=g" + (f"&consumer={consumer}" if consumer else "")
    return ["embed", f"kafka://{kafka.bootstrap}/{topic}?{query}", "--out", str(out), "--model", model,
            "--batch-size", "4", "--shard-seconds", "0.5", "--no-progress", *SESSION, *extra]


def test_sigkill_at_random_moments_then_restart_gives_every_message_once(kafka, tiny_model_spec, tmp_path):
    kafka.create_topic("uploads")
    out = tmp_path / "out"
    keys = [f"u{i:03d}" for i in range(150)]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    writer = threading.Thread(target=produce, args=(kafka.bootstrap, "uploads", texts(keys), 0.05), daemon=True)
    writer.start()
    args = embed_args(kafka, "uploads", out, tiny_model_spec)
    for _ in range(3):
        proc = follow(*args)
        time.sleep(rng.uniform(2.0, 8.0))
        assert proc.poll() is None, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    writer.join(timeout=TIMEOUT_S)
    final = follow(*args)
    # One message more, so that the stop below finds this run following (not still starting).
    keys.append("last")
    produce(kafka.bootstrap, "uploads", texts(["last"]))
    wait_rows(out, len(keys), [final], f"every message (seed {seed})")
    stderr = stop(final)
    exactly_once(out, keys)
    # The restarts found their own folder again: one consumer, one subfolder.
    assert len(list(out.glob("*/_commits.jsonl"))) == 1, f"seed {seed}"
    assert "takes partitions" in stderr


def test_a_bad_message_is_an_error_row_and_its_partition_goes_on(kafka, tiny_model_spec, tmp_path):
    kafka.create_topic("mixed", partitions=1)
    good = base64.b64encode(jpeg(1)).decode()
    messages = [("ok-text", b'{"text": "a caption"}'),
                ("not-json", b"{nope"),
                ("bad-b64", b'{"image_b64": "***"}'),
                ("corrupt", json.dumps({"image_b64": base64.b64encode(b"not an image").decode()}).encode()),
                ("ok-image", json.dumps({"image_b64": good, "text": "a photo"}).encode())]
    produce(kafka.bootstrap, "mixed", messages)
    out = tmp_path / "out"
    proc = follow(*embed_args(kafka, "mixed", out, tiny_model_spec))
    wait_rows(out, len(messages), [proc], "every message")
    stderr = stop(proc)
    got = exactly_once(out, [k for k, _ in messages])
    assert got["ok-text"]["error"] is None and got["ok-image"]["error"] is None
    assert got["ok-image"]["width"] > 0 and got["ok-image"]["text"] == "a photo"
    assert got["not-json"]["error"] == "kafka: invalid JSON (JSONDecodeError): partition 0 offset 1"
    assert got["bad-b64"]["error"] == "kafka: image_b64 is not valid base64: partition 0 offset 2"
    # Decoding fails later, in the pipeline: the row still says where the message was.
    assert got["corrupt"]["error"].startswith("decode") and got["corrupt"]["uri"] == "kafka://mixed/0/3"
    assert "5 items: 2 ok, 3 errors" in stderr


def test_raw_messages_are_image_bytes(kafka, tiny_model_spec, tmp_path):
    kafka.create_topic("photos")
    keys = [f"p{i}" for i in range(6)]
    produce(kafka.bootstrap, "photos", [(k, jpeg(i)) for i, k in enumerate(keys)])
    out = tmp_path / "out"
    proc = follow(*embed_args(kafka, "photos", out, tiny_model_spec, "--kafka-value", "raw"))
    wait_rows(out, len(keys), [proc], "every photo")
    stop(proc)
    got = exactly_once(out, keys)
    assert all(r["error"] is None and r["width"] > 0 and r["image_embedding"] is not None for r in got.values())


def test_two_followers_split_the_partitions_and_one_takes_over_when_the_other_dies(kafka, tiny_model_spec,
                                                                                   tmp_path):
    kafka.create_topic("uploads")
    out = tmp_path / "out"
    a = follow(*embed_args(kafka, "uploads", out, tiny_model_spec, "--shard-size", "5"))
    b = follow(*embed_args(kafka, "uploads", out, tiny_model_spec, "--shard-size", "5", consumer="b"))
    # Messages trickle in until each consumer has committed rows of partitions of its own (how
    # soon the second one joins the group depends on how busy the machine is).
    first: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    while not both_committed(out):
        assert a.poll() is None and b.poll() is None and time.monotonic() < deadline, "no split"
        keys = [f"a{len(first) + i:04d}" for i in range(4)]
        produce(kafka.bootstrap, "uploads", texts(keys))
        first += keys
        time.sleep(0.2)
    wait_rows(out, len(first), [a, b], "the first messages")
    os.kill(a.pid, signal.SIGKILL)
    a.wait(timeout=30)
    second = [f"b{i:03d}" for i in range(80)]
    produce(kafka.bootstrap, "uploads", texts(second), pause_s=0.01)
    wait_rows(out, len(first) + len(second), [b], "the survivor to take over")
    stderr = stop(b)
    exactly_once(out, first + second)
    assert stderr.count("takes partitions") >= 2, stderr  # its own, then the dead one's too


def both_committed(out: Path) -> bool:
    logs = list(out.glob("*/_commits.jsonl"))
    return len(logs) == 2 and all(log.read_text().strip() for log in logs)


def test_a_broker_away_for_30_s_is_waited_for_and_nothing_is_lost_or_repeated(tiny_model_spec, tmp_path):
    out = tmp_path / "out"
    keys = [f"u{i:03d}" for i in range(60)]
    with LocalKafka(partitions=4, proxy=True) as kafka:
        kafka.create_topic("uploads")
        proc = follow(*embed_args(kafka, "uploads", out, tiny_model_spec))
        produce(kafka.bootstrap, "uploads", texts(keys[:20]))
        wait_rows(out, 20, [proc], "the messages before the outage")
        kafka.go_down()
        late = threading.Thread(target=produce, args=(kafka.bootstrap, "uploads", texts(keys[20:])), daemon=True)
        late.start()  # its producer waits for the broker too
        time.sleep(30)
        assert proc.poll() is None, proc.stderr.read()
        kafka.come_up()
        late.join(timeout=TIMEOUT_S)
        wait_rows(out, len(keys), [proc], "the messages sent during the outage")
        stderr = stop(proc)
    exactly_once(out, keys)
    assert "waiting for the brokers" in stderr


@pytest.mark.parametrize("args, says", [
    (["kafka://127.0.0.1:9/t?group=g"], "INPUT: a kafka:// topic has no end: follow it with --follow"),
    (["kafka://127.0.0.1/t", "--follow"], "INPUT: 'kafka://127.0.0.1/t': brokers must be HOST:PORT"),
    (["kafka://127.0.0.1:9/t?groop=g", "--follow"], "unknown parameter 'groop'"),
    (["kafka://127.0.0.1:9/t", "--follow", "--kafka-value", "xml"], "--kafka-value"),
])
def test_bad_kafka_options_are_one_line_exit_2(args, says, tiny_model_spec, tmp_path):
    proc = run_cli("embed", *args, "--out", str(tmp_path / "out"), "--model", tiny_model_spec)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
