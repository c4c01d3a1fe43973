"""`mmpipe moderate --follow --emit kafka://…` as a user runs it: a follower subprocess killed
(-9) just after a commit, restarted, stopped by SIGTERM; and --emit's refusals."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.e2e.test_cli import run_cli
from tests.e2e.test_follow import committed, committed_ids, follow, stop, wait_for
from tests.test_kafka_emit import moderation_inputs, read_topic, topic_url

pytestmark = pytest.mark.e2e

FAST = ["--no-ocr", "--shard-size", "1", "--shard-seconds", "0.5", "--settle-s", "0.2",
        "--poll-s", "0.1", "--batch-size", "4"]


def emitted_shard(out) -> str | None:
    path = out / "_emitted.json"
    return json.loads(path.read_text())["shard"] if path.exists() else None


@pytest.mark.slow
def test_kill_9_after_a_commit_then_a_restart_emits_every_decision(broker, tmp_path):
    folder, out, url = moderation_inputs(tmp_path / "in"), tmp_path / "out", topic_url(broker)
    args = ["moderate", str(folder), "--out", str(out), "--emit", url, *FAST]
    first = follow(*args)
    # Killed as soon as the commit log has the first shard: its decisions may not be delivered yet.
    wait_for(lambda: len(committed_ids(out)) >= 1, first, "the first commit")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)

    (folder / "later.txt").write_text("have a lovely day")
    second = follow(*args)
    wait_for(lambda: "later.txt" in committed_ids(out) and emitted_shard(out) == committed(out)[-1]["shard"],
             second, "the restart's commits and deliveries")
    stop(second)
    ids = committed_ids(out)
    assert sorted(ids) == ["comment.txt", "empty.jpg", "later.txt", "plain.png"]
    got = read_topic(url, len(ids))
    assert set(k for k, _ in got) == set(ids)  # duplicates allowed, none missing
    decisions = dict(got)
    assert decisions["comment.txt"]["action"] == "block" and decisions["empty.jpg"]["error"]


@pytest.mark.parametrize("args, says", [
    (["moderate", "--emit", "kafka://localhost:9092/decisions"], "add --follow"),
    (["moderate", "--follow", "--emit", "kafka://localhost/decisions"], "HOST:PORT"),
    (["moderate", "--follow", "--emit", "kafka://localhost:9092/"], "topic"),
    (["moderate", "--follow", "--emit", "http://localhost:9092/decisions"], "kafka://"),
    (["moderate", "--follow", "--emit", "kafka://localhost:9092/d?group=g"], "unknown parameter"),
    (["embed", "--follow", "--emit", "kafka://localhost:9092/decisions"], "No such option"),
])
def test_emit_is_refused_in_one_line_naming_it_exit_2(args, says, tmp_path):
    (tmp_path / "in").mkdir()
    command, *flags = args
    proc = run_cli(command, str(tmp_path / "in"), "--out", str(tmp_path / "out"), *flags)
    assert proc.returncode == 2, proc.stderr
    assert "--emit" in proc.stderr and says in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
