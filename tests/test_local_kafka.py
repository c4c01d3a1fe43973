"""LocalKafka against real confluent-kafka clients: a consumer group reads everything and commits,
the proxy carries every connection and plays an outage that loses nothing, and the command serves
a broker until SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition  # noqa: E402

from mmpipe.local_kafka import LocalKafka  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 20
# librdkafka backs off reconnects up to 10 s by default; short, so recovery is seen quickly.
QUICK_RECONNECT = {"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 300}
# The mock broker holds a group's joins for the session timeout less 1 s after a member leaves,
# even when none is left (a real broker empties the group at once): 45 s by default.
QUICK_REJOIN = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}


def consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                     "enable.auto.commit": False, **QUICK_RECONNECT, **QUICK_REJOIN})


def consume(c: Consumer, n: int) -> list[Message]:
    """The next ``n`` messages ``c`` polls (failing the test after TIMEOUT_S)."""
    got: list[Message] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(got) < n:
        assert time.monotonic() < deadline, f"{len(got)} of {n} messages within {TIMEOUT_S} s"
        message = c.poll(0.2)
        if message is not None and not message.error():
            got.append(message)
    return got


def produce(p: Producer, topic: str, values: list[dict]) -> list[Message]:
    """Produce ``values`` as JSON keyed by their "key"; returns the delivery reports."""
    reports: list[Message] = []
    for value in values:
        p.produce(topic, key=value["key"], value=json.dumps(value),
                  on_delivery=lambda err, message: reports.append(message))
    assert p.flush(TIMEOUT_S) == 0
    return reports


def proxy_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kafka-proxy")]


@pytest.mark.slow
def test_a_consumer_group_reads_every_message_and_its_commits_are_seen_by_the_next_member():
    with LocalKafka() as kafka:
        kafka.create_topic("uploads")
        values = [{"key": f"user-{i % 7}", "n": i} for i in range(40)]
        reports = produce(Producer({"bootstrap.servers": kafka.bootstrap}), "uploads", values)
        assert all(r.error() is None for r in reports)
        # The same key always lands on the same partition, and the 40 spread over all 4.
        partition_of = {}
        for r in reports:
            assert partition_of.setdefault(r.key(), r.partition()) == r.partition()
        assert {r.partition() for r in reports} == {0, 1, 2, 3}

        first = consumer(kafka.bootstrap, "g")
        first.subscribe(["uploads"])
        messages = consume(first, 40)
        assert sorted(json.loads(m.value())["n"] for m in messages) == list(range(40))
        first.commit(asynchronous=False)
        first.close()

        ends = {p: max(r.offset() for r in reports if r.partition() == p) + 1 for p in range(4)}
        second = consumer(kafka.bootstrap, "g")
        committed = second.committed([TopicPartition("uploads", p) for p in range(4)], timeout=TIMEOUT_S)
        assert {tp.partition: tp.offset for tp in committed} == ends
        # ...and, joining the group, it starts there: nothing to re-read but what comes next.
        second.subscribe(["uploads"])
        produce(Producer({"bootstrap.servers": kafka.bootstrap}), "uploads", [{"key": "user-0", "n": 40}])
        assert [json.loads(m.value())["n"] for m in consume(second, 1)] == [40]
        second.close()


@pytest.mark.slow  # destroying a client that has only just connected can take librdkafka 1 s
def test_topics_get_the_partitions_asked_for():
    with LocalKafka(partitions=2) as kafka:
        kafka.create_topic("two")
        kafka.create_topic("five", partitions=5)
        with pytest.raises(ValueError, match="already exists"):
            kafka.create_topic("two")
        topics = Producer({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=TIMEOUT_S).topics
        assert len(topics["two"].partitions) == 2
        assert len(topics["five"].partitions) == 5


def test_an_outage_needs_the_proxy():
    with LocalKafka() as kafka, pytest.raises(RuntimeError, match="proxy=True"):
        kafka.go_down()


def test_clients_are_told_to_connect_to_the_proxy_not_the_broker():
    with LocalKafka(proxy=True) as kafka:
        port = int(kafka.bootstrap.rpartition(":")[2])
        brokers = Producer({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=TIMEOUT_S).brokers
        assert [(b.host, b.port) for b in brokers.values()] == [("127.0.0.1", port)]
    assert proxy_threads() == []


@pytest.mark.slow
def test_an_outage_fails_clients_then_they_recover_and_nothing_is_lost():
    with LocalKafka(proxy=True) as kafka:
        kafka.create_topic("uploads")
        producer = Producer({"bootstrap.servers": kafka.bootstrap, "message.timeout.ms": 60_000,
                             **QUICK_RECONNECT})
        produce(producer, "uploads", [{"key": "a", "n": 0}])
        c = consumer(kafka.bootstrap, "g")
        c.subscribe(["uploads"])
        assert [json.loads(m.value())["n"] for m in consume(c, 1)] == [0]
        c.commit(asynchronous=False)

        kafka.go_down()
        with pytest.raises(KafkaException):
            producer.list_topics(timeout=1)
        impatient = Producer({"bootstrap.servers": kafka.bootstrap, "message.timeout.ms": 1000})
        reports = produce(impatient, "uploads", [{"key": "b", "n": -1}])
        assert reports[0].error().code() == KafkaError._MSG_TIMED_OUT
        # A patient producer's message waits out the outage in its queue...
        delivered: list[Message] = []
        producer.produce("uploads", key="a", value=json.dumps({"n": 1}),
                         on_delivery=lambda err, message: delivered.append(message))
        assert producer.flush(0.5) == 1

        kafka.come_up()
        assert producer.flush(TIMEOUT_S) == 0
        assert delivered[0].error() is None
        # ...and the consumer that lived through it reads it and nothing earlier: it resumes where
        # it was, or from its commit where the outage outlasted its session and it had to rejoin.
        assert [json.loads(m.value())["n"] for m in consume(c, 1)] == [1]
        assert producer.list_topics(timeout=TIMEOUT_S).brokers
        c.close()
    assert proxy_threads() == []


@pytest.mark.slow
def test_the_command_serves_a_broker_until_sigterm():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "-m", "mmpipe.local_kafka", "--topic", "t", "--partitions", "3"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        line = server.stdout.readline().strip()
        assert line.startswith("kafka://127.0.0.1:"), line
        bootstrap = line.removeprefix("kafka://")
        producer = Producer({"bootstrap.servers": bootstrap})
        assert len(producer.list_topics("t", timeout=TIMEOUT_S).topics["t"].partitions) == 3
        produce(producer, "t", [{"key": "k", "n": 7}])
        c = consumer(bootstrap, "cli")
        c.subscribe(["t"])
        assert [json.loads(m.value())["n"] for m in consume(c, 1)] == [7]
        c.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(TIMEOUT_S) == 0
    finally:
        server.kill()
        server.communicate()
