"""The Kafka follower's parts that need no broker: addresses, messages as items, and the offsets a
shard's commit line records (the broker-backed runs are in tests/e2e/test_follow_kafka.py)."""

import base64
import json

import pytest

from mmpipe.errors import ConfigError
from mmpipe.sources.kafka_messages import MessageItems
from mmpipe.sources.kafka_offsets import PartitionOffsets, resume
from mmpipe.sources.kafka_url import parse_kafka_url
from mmpipe.sources.options import SourceOptions


def test_an_address_names_its_brokers_topic_and_group():
    url = parse_kafka_url("kafka://127.0.0.1:9092,kafka-2:9093/uploads?group=tns&consumer=a", "INPUT",
                          ("group", "consumer"))
    assert (url.bootstrap, url.topic, url.params) == ("127.0.0.1:9092,kafka-2:9093", "uploads",
                                                      {"group": "tns", "consumer": "a"})


@pytest.mark.parametrize("url, says", [
    ("kafka://broker/uploads", "brokers must be HOST:PORT"),
    ("kafka://broker:9092/", "name one topic"),
    ("kafka://broker:9092/a/b", "name one topic"),
    ("kafka://broker:9092/uploads?grp=x", "unknown parameter 'grp'; it takes group, consumer"),
])
def test_a_bad_address_is_one_error_naming_the_flag(url, says):
    with pytest.raises(ConfigError, match=says) as info:
        parse_kafka_url(url, "INPUT", ("group", "consumer"))
    assert info.value.field == "INPUT"


def items(value_format="json", **options):
    return MessageItems("uploads", value_format, SourceOptions(**options))


def test_a_json_message_is_an_item_keyed_by_the_message_key(tmp_path, monkeypatch):
    (tmp_path / "cat.jpg").write_bytes(b"jpeg")
    monkeypatch.chdir(tmp_path)
    by_key = items().item(b"u1", json.dumps({"id": "ignored", "image": "cat.jpg", "text": "a cat"}).encode(), 2, 17)
    assert (by_key.id, by_key.text, by_key.error) == ("u1", "a cat", None)
    assert by_key.read()[0] == b"jpeg"  # a relative path is read where the job runs
    by_field = items().item(None, json.dumps({"id": 7, "image_b64": base64.b64encode(b"png").decode()}).encode(), 0, 3)
    assert (by_field.id, by_field.data, by_field.uri) == ("7", b"png", "kafka://uploads/0/3")
    unnamed = items().item(None, b'{"text": "hello"}', 1, 9)
    assert (unnamed.id, unnamed.text) == ("kafka://uploads/1/9", "hello")


def test_a_raw_message_is_the_image_bytes():
    item = items("raw").item(b"k", b"\xff\xd8jpeg", 0, 0)
    assert (item.id, item.data, item.error) == ("k", b"\xff\xd8jpeg", None)
    assert "empty message" in items("raw").item(b"k", b"", 0, 1).error
    assert "too large" in items("raw", max_bytes=3).item(b"k", b"four", 0, 2).error


@pytest.mark.parametrize("value, says", [
    (b"not json", "invalid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"image_b64": "%%%"}', "image_b64 is not valid base64"),
    (b"{}", "message has neither image, image_b64 nor text"),
])
def test_a_message_that_is_no_item_is_an_error_naming_where_it_is(value, says):
    item = items().item(b"k", value, 3, 41)
    assert item.id == "k" and item.uri == "kafka://uploads/3/41"
    assert item.error.startswith(f"kafka: {says}") and item.error.endswith("partition 3 offset 41")


def test_a_shard_records_the_first_offset_not_committed_and_the_done_ones_above_it():
    p = PartitionOffsets()
    assert p.next_offset is None  # nothing read, no commit log: the group's offset decides
    for o in range(10, 16):
        assert p.receive(o)
    # 10 and 13 are still in flight when a shard with 11, 12, 14 commits
    assert p.entry([11, 12, 14]) == {"next": 10, "done": [[11, 12], [14, 14]]}
    p.commit([11, 12, 14])
    assert p.next_offset == 10  # the broker's group offset: what lag tools count from
    assert p.entry([10]) == {"next": 13, "done": [[14, 14]]}
    p.commit([10])
    assert p.entry([13, 15]) == {"next": 16, "done": []}


def test_resuming_starts_at_the_greatest_next_and_skips_what_is_done_above_it():
    lines = [{"topic": "uploads", "partitions": {"0": {"next": 10, "done": [[11, 12], [14, 14]]}}},
             {"topic": "uploads", "partitions": {"0": {"next": 13, "done": [[14, 14]]}, "1": {"next": 5, "done": []}}},
             {"topic": "other", "partitions": {"0": {"next": 99, "done": []}}}]
    states = resume(lines, "uploads")
    assert states[0].start == 13 and states[0].done == {14}
    assert states[1].start == 5 and states[1].done == set()
    p = states[0]
    assert p.receive(13) and not p.receive(14) and p.receive(15)  # 14 is in a shard already
    assert p.entry([13, 15]) == {"next": 16, "done": []}


def test_offsets_a_partition_skips_do_not_hold_it_back():
    # Transaction markers and compaction leave gaps: "next" follows what was read, not +1 steps.
    p = PartitionOffsets()
    p.receive(3)
    p.receive(7)
    assert p.entry([3, 7]) == {"next": 8, "done": []}
