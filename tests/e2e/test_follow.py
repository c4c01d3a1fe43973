"""`mmpipe embed|moderate --follow` as a user runs it: a real subprocess following a real folder
that another writer fills, stopped by real signals (SIGTERM, SIGKILL)."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import mmpipe
from tests.conftest import assert_same_rows, by_id, photo
from tests.e2e.test_cli import MMPIPE, run_cli

pytestmark = pytest.mark.e2e

TIMEOUT_S = 90
FAST = ["--settle-s", "0.3", "--poll-s", "0.1", "--batch-size", "4"]


def follow(*args: str) -> subprocess.Popen:
    # A session of its own, as a terminal's foreground job has: Ctrl-C reaches all its processes.
    return subprocess.Popen([*MMPIPE, *args, "--follow"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def committed(out: Path) -> list[dict]:
    log = out / "_commits.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def committed_ids(out: Path) -> list[str]:
    return [i for c in committed(out) for i in c["ids"]]


def follow_stats(out: Path) -> dict:
    path = out / "stats.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert proc.poll() is None, f"the follower exited ({proc.returncode}) before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stop(proc: subprocess.Popen, ctrl_c: bool = False) -> str:
    """SIGTERM, as a service manager stops it, or Ctrl-C (SIGINT to the whole process group, the
    decode worker processes too); returns stderr once it exited 0."""
    if ctrl_c:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, stderr
    return stderr


def write_slowly(path: Path, data: bytes, pieces: int = 3, pause_s: float = 0.1) -> None:
    """A writer appending ``data`` in pieces, pausing between them (less than --settle-s)."""
    step = -(-len(data) // pieces)
    with open(path, "wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i:i + step])
            f.flush()
            time.sleep(pause_s)


def jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    photo(seed, size=(90 + seed % 30, 70)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def jpeg_folder(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"a{i}.jpg").write_bytes(jpeg(i))
    return folder


def test_new_files_are_picked_up_a_trickle_commits_and_ctrl_c_exits_0(tiny_model_spec, tmp_path):
    folder, out = jpeg_folder(tmp_path / "in", 3), tmp_path / "out"
    # 1000-row shards: only --shard-seconds commits this trickle.
    proc = follow("embed", str(folder), "--out", str(out), "--model", tiny_model_spec,
                  "--shard-size", "1000", "--shard-seconds", "1", "--price-per-hour", "2.5", *FAST)
    wait_for(lambda: len(committed_ids(out)) == 3, proc, "the files present at the start")
    # stats.json is rewritten at every commit, just after its commit-log line.
    wait_for(lambda: follow_stats(out).get("items") == 3, proc, "stats.json after the first commits")
    for i in range(3, 5):
        write_slowly(folder / f"b{i}.jpg", jpeg(i))
    wait_for(lambda: follow_stats(out).get("items") == 5, proc, "the files added while running")
    stats = follow_stats(out)
    assert stats["follow"] and stats["shards"] == len(committed(out)) and len(committed_ids(out)) == 5
    assert set(stats["latency_s"]) == {"p50", "p95", "p99"}
    assert 0 < stats["latency_s"]["p50"] <= stats["latency_s"]["p95"] <= stats["latency_s"]["p99"]
    assert {s["name"] for s in stats["stages"]} == {"decode", "embed"}
    assert all(0 <= s["busy_share"] <= 1 for s in stats["stages"])
    assert stats["price_per_hour"] == 2.5 and stats["usd_per_million_items"] > 0

    (folder / "c.jpg").write_bytes(jpeg(9))
    time.sleep(1)  # settled and read, maybe not committed yet: Ctrl-C must not lose it
    stderr = stop(proc, ctrl_c=True)
    assert "embedded 6 items: 6 ok, 0 errors" in stderr and "latency" in stderr and "per million" in stderr
    assert sorted(by_id(out)) == ["a0.jpg", "a1.jpg", "a2.jpg", "b3.jpg", "b4.jpg", "c.jpg"]
    assert [c["consumed"]["files"] for c in committed(out)] == [c["ids"] for c in committed(out)]
    assert json.loads((out / "_manifest.json").read_text())["status"] == "stopped"


def test_restart_skips_committed_files_and_sigterm_commits_what_is_in_flight(tiny_model_spec, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i in range(3):
        (folder / f"a{i}.jpg").write_bytes(jpeg(i))
        (folder / f"a{i}.txt").write_text(f"caption {i}")
    args = ["embed", str(folder), "--out", str(out), "--model", tiny_model_spec, *FAST]
    first = follow(*args, "--shard-seconds", "0.5")
    wait_for(lambda: len(committed_ids(out)) == 3, first, "the first run's files")
    stop(first)
    before = committed(out)
    assert sorted(f for c in before for f in c["consumed"]["files"]) == \
        sorted(f"a{i}.{ext}" for i in range(3) for ext in ("jpg", "txt"))

    for i in range(3):
        (folder / f"b{i}.jpg").write_bytes(jpeg(10 + i))
    # Shards of two rows that no clock commits: once the first is in the log, the third new file
    # (listed in the same poll) is in flight, and only the stop commits it.
    second = follow(*args, "--shard-size", "2", "--shard-seconds", "600")
    wait_for(lambda: len(committed(out)) == len(before) + 1, second, "the second run's first shard")
    stderr = stop(second)
    assert "embedded 3 items: 3 ok" in stderr
    after = committed(out)
    assert after[:len(before)] == before  # nothing committed before was done again
    assert sorted(i for c in after[len(before):] for i in c["ids"]) == ["b0.jpg", "b1.jpg", "b2.jpg"]
    assert [len(c["ids"]) for c in after[len(before):]] == [2, 1]
    assert by_id(out)["a1.jpg"]["text"] == "caption 1"


@pytest.mark.slow
def test_sigkill_at_random_moments_then_restart_gives_every_file_once(tiny_model_spec, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    names = [f"img{i:03d}.jpg" for i in range(60)]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)

    def writer() -> None:  # files copied in slowly, each in pieces, while followers come and go
        for i, name in enumerate(names):
            write_slowly(folder / name, jpeg(i), pause_s=0.05)
            time.sleep(rng.uniform(0, 0.1))

    filling = threading.Thread(target=writer, daemon=True)
    filling.start()
    args = ["embed", str(folder), "--out", str(out), "--model", tiny_model_spec, "--shard-size", "5",
            "--shard-seconds", "0.5", "--settle-s", "0.4", "--poll-s", "0.1", "--batch-size", "4"]
    kills = 0
    while filling.is_alive() or kills < 3:
        proc = follow(*args)
        time.sleep(rng.uniform(1.0, 6.0))
        assert proc.poll() is None, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
    final = follow(*args)
    # One file more, so that the stop below finds this run following (not still starting).
    names.append("last.jpg")
    (folder / "last.jpg").write_bytes(jpeg(99))
    wait_for(lambda: len(committed_ids(out)) >= len(names), final, f"every file (seed {seed})")
    stop(final)

    got = by_id(out)  # fails on an id written twice
    assert sorted(got) == names, f"seed {seed}"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    # Rows as a batch job makes them from the finished files: none was read half-written.
    reference = tmp_path / "reference"
    mmpipe.embed(str(folder), str(reference), model=tiny_model_spec, batch_size=4, progress=False)
    assert_same_rows(got, by_id(reference), atol=1e-5)


@pytest.mark.slow
def test_moderate_follows_a_folder_of_images_and_texts(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    photo(1, size=(200, 150)).save(folder / "plain.png")
    proc = follow("moderate", str(folder), "--out", str(out), "--no-ocr", "--shard-seconds", "1",
                  "--settle-s", "0.3", "--poll-s", "0.1")
    wait_for(lambda: committed_ids(out) == ["plain.png"], proc, "the image")
    (folder / "comment.txt").write_text("you are a stupid idiot")
    wait_for(lambda: len(committed_ids(out)) == 2, proc, "the text added while running")
    stderr = stop(proc)
    assert "moderated 2 items: 2 ok" in stderr
    rows = by_id(out)
    assert rows["plain.png"]["action"] == "allow"
    assert rows["comment.txt"]["media_type"] == "text" and rows["comment.txt"]["action"] == "block"
    assert (out / "report.html").exists()


@pytest.mark.parametrize("flags, named", [
    (["--follow", "--shard-seconds", "0"], "--shard-seconds"),
    (["--follow", "--settle-s", "-1"], "--settle-s"),
    (["--follow", "--poll-s", "0"], "--poll-s"),
    (["--follow", "--limit", "3"], "--limit"),
])
def test_bad_follow_options_are_one_line_naming_the_flag_exit_2(flags, named, image_dir,
                                                                tiny_model_spec, tmp_path):
    proc = run_cli("embed", str(image_dir), "--out", str(tmp_path / "out"), "--model",
                   tiny_model_spec, *flags)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_only_a_folder_can_be_followed(tiny_model_spec, tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("id,image\n")
    proc = run_cli("embed", str(manifest), "--out", str(tmp_path / "out"), "--model", tiny_model_spec,
                   "--follow")
    assert proc.returncode == 2 and "INPUT: --follow watches a folder" in proc.stderr, proc.stderr


def catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler of its own for SIGTERM (Linux's /proc says)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_sigterm_while_the_models_load_exits_0(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    # moderate loads several models: the signal comes once the command can take it, mostly while they load
    proc = follow("moderate", str(folder), "--out", str(tmp_path / "out"), "--no-ocr")
    wait_for(lambda: catches_sigterm(proc.pid), proc, "the command to take SIGTERM")
    stderr = stop(proc)
    assert "stopped (SIGTERM)" in stderr or "moderated 0 items" in stderr
