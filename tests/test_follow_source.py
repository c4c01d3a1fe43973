"""FolderFollower on real folders: new files once they settle, each once; a file being written
(by another process) is never read half-way; resume skips what the commit log consumed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mmpipe.errors import ConfigError
from mmpipe.records import Item
from mmpipe.sources import SourceOptions
from mmpipe.sources.follow import FolderFollower, FollowSource
from tests.conftest import photo

TIMEOUT_S = 20


class Following:
    """A follower's ``items`` drained by a thread, as the engine's feed thread does."""

    def __init__(self, follower: FolderFollower, read: bool = False):
        self.follower, self.read = follower, read
        self.items: list[Item] = []
        self.data: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)

    def _drain(self) -> None:
        for item in self.follower.items(self.stop):
            if self.read:  # at once: the worst case for a file still being written
                self.data[item.id] = item.read()[0]
            self.items.append(item)

    def __enter__(self) -> "Following":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), "items() did not return after stop"

    def wait_for(self, n: int) -> list[str]:
        deadline = time.monotonic() + TIMEOUT_S
        while len(self.items) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return [i.id for i in self.items]


def follower(folder: Path, settle_s: float = 0.3, kinds=frozenset({"image"})) -> FolderFollower:
    return FolderFollower(str(folder), SourceOptions(kinds=kinds), settle_s=settle_s, poll_s=0.05)


@pytest.mark.slow
def test_files_present_and_new_ones_are_yielded_once_each(tmp_path):
    photo(0).save(tmp_path / "a.jpg")
    (tmp_path / "notes.md").write_text("not an image")
    with Following(follower(tmp_path)) as f:
        assert f.wait_for(1) == ["a.jpg"]
        (tmp_path / "sub").mkdir()
        photo(1).save(tmp_path / "sub" / "b.png")
        (tmp_path / "sub" / "b.txt").write_text("a caption")
        assert f.wait_for(2) == ["a.jpg", "sub/b.png"]
        time.sleep(0.5)  # more polls: nothing is yielded again
    assert [i.id for i in f.items] == ["a.jpg", "sub/b.png"]
    src = f.follower
    # What a shard holding them consumed: the files, captions included.
    assert src.consumed(["sub/b.png", "a.jpg"]) == {"files": ["sub/b.png", "sub/b.txt", "a.jpg"]}
    arrived = src.committed(["a.jpg"])
    assert arrived == [pytest.approx(os.path.getmtime(tmp_path / "a.jpg"))]
    assert list(src.in_flight) == ["sub/b.png"]  # nothing is kept of a committed item


@pytest.mark.slow
def test_a_file_being_written_slowly_by_another_process_is_read_whole(tmp_path):
    data = b"".join(os.urandom(4096) for _ in range(6))
    (tmp_path / "payload").write_bytes(data)
    # A writer appends the file in six pieces 0.25 s apart; settle_s is longer than each pause.
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "with open(sys.argv[2], 'wb') as f:\n"
        "    for i in range(0, len(data), 4096):\n"
        "        f.write(data[i:i + 4096]); f.flush(); time.sleep(0.25)\n"),
        str(tmp_path / "payload"), str(tmp_path / "slow.jpg")])
    with Following(follower(tmp_path, settle_s=0.8), read=True) as f:
        assert f.wait_for(1) == ["slow.jpg"]
    assert writer.wait(TIMEOUT_S) == 0
    assert f.data["slow.jpg"] == data


def test_resume_skips_what_the_commit_log_consumed(tmp_path):
    for name in ("a", "b", "c"):
        photo(ord(name)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "a.txt").write_text("caption of a")
    src = follower(tmp_path)
    # A follower's line names files; an older listing's line only ids.
    src.resume([{"files": ["a.jpg", "a.txt"]}, FollowSource.consumed_of_ids(["b.jpg"])])
    with Following(src) as f:
        assert f.wait_for(1) == ["c.jpg"]
        time.sleep(0.3)
    assert [i.id for i in f.items] == ["c.jpg"]


def test_only_a_folder_or_prefix_can_be_followed(tmp_path):
    (tmp_path / "list.csv").write_text("id,image\n")
    with pytest.raises(ConfigError, match="INPUT: --follow watches a folder"):
        follower(tmp_path / "list.csv")


@pytest.mark.slow
def test_a_follower_in_another_thread_stops_when_its_stop_is_set(tiny_model_spec, tmp_path):
    # Signals reach only the main thread: an application running the API in a thread of its own
    # stops the follower with ``stop``, as SIGTERM does.
    import mmpipe

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    photo(1).save(folder / "a.jpg")
    stop, results = threading.Event(), []
    worker = threading.Thread(target=lambda: results.append(mmpipe.embed(
        str(folder), str(out), model=tiny_model_spec, follow=True, settle_s=0.1, poll_s=0.05,
        shard_seconds=0.2, progress=False, stop=stop)))
    worker.start()
    deadline = time.monotonic() + TIMEOUT_S
    log = out / "_commits.jsonl"
    while not (log.exists() and log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    worker.join(TIMEOUT_S)
    assert not worker.is_alive() and results[0].ok == 1
    assert results[0].manifest["status"] == "stopped"
