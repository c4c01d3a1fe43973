"""A follower's Prometheus metrics, scraped over real HTTP from a real follower of a real folder:
the figures stats.json has, the source's lag, the latency histogram and errors by kind."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import mmpipe
from mmpipe.engine import EngineStats
from mmpipe.errors import ConfigError
from mmpipe.records import Item
from mmpipe.jobs.config import with_config_file
from mmpipe.jobs.embed import EmbedConfig
from mmpipe.jobs.follow_metrics import MAX_KINDS, FollowMetrics
from mmpipe.jobs.follow_stats import FollowStats
from mmpipe.sinks import OutputDir
from mmpipe.sources import SourceOptions
from mmpipe.sources.follow import FolderFollower
from tests.conftest import photo

TIMEOUT_S = 60
NAMES = {"mmpipe_follow_lag_messages", "mmpipe_follow_latency_seconds", "mmpipe_follow_items",
         "mmpipe_follow_errors", "mmpipe_follow_shards", "mmpipe_follow_items_per_second",
         "mmpipe_follow_setup_seconds", "mmpipe_follow_stage_busy_share"}


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of the endpoint, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def families(port: int) -> set[str]:
    """The metric families, less the ``_created`` timestamps the text format lists as families."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return {f.name for f in text_string_to_metric_families(answer.read().decode())
                if not f.name.endswith("_created")}


def wait_until(condition, what: str):
    deadline = time.monotonic() + TIMEOUT_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_a_followers_metrics_count_what_it_commits(tiny_model_spec, tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    seen: dict = {}
    failure: list[BaseException] = []

    def watch() -> None:
        """Scrapes while the follower runs in the main thread, then stops it as a service
        manager does (SIGTERM, which only the main thread hears), whatever happened."""
        try:
            port = wait_until(lambda: _manifest(out).get("metrics_port"), "the port in the manifest")
            seen["port"] = port
            seen["names"] = families(port)
            seen["idle"] = scrape(port)
            for i in range(3):
                photo(i).save(folder / f"ok{i}.jpg")
            whole = io.BytesIO()
            photo(9).save(whole, format="JPEG")
            (folder / "bad.jpg").write_bytes(whole.getvalue()[:300])  # cut short: corrupt
            # Seen and settling: all four wait for a commit.
            seen["lag"] = wait_until(lambda: _lag_at_least(port, 4), "the new files in the lag")
            wait_until(lambda: scrape(port)[("mmpipe_follow_latency_seconds_count", ())] == 4,
                       "four committed items in the histogram")
            seen["done"] = scrape(port)
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread below
            failure.append(exc)
        finally:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:  # the follower's handler:
                os.kill(os.getpid(), signal.SIGTERM)  # never this test process's default

    threads_before = set(threading.enumerate())
    watcher = threading.Thread(target=watch)
    watcher.start()
    result = mmpipe.embed(str(folder), str(out), model=tiny_model_spec, follow=True, metrics_port=0,
                          settle_s=1.0, poll_s=0.05, shard_seconds=0.3, batch_size=4,
                          decode_workers=1, decode_processes=False, progress=False)
    watcher.join(TIMEOUT_S)
    if failure:
        raise failure[0]

    assert seen["names"] == NAMES
    idle = seen["idle"]
    assert idle[("mmpipe_follow_items_total", ())] == 0 and idle[("mmpipe_follow_lag_messages", ())] == 0
    assert seen["lag"] >= 4
    done = seen["done"]
    assert done[("mmpipe_follow_items_total", ())] == 4
    assert done[("mmpipe_follow_lag_messages", ())] == 0
    assert done[("mmpipe_follow_shards_total", ())] == json.loads((out / "stats.json").read_text())["shards"]
    # Errors by the kind the summary groups them by, counted as rows of committed shards.
    [(kind, count)] = result.top_errors
    assert (kind, count) == ("decode: corrupt image", 1)
    assert {labels: v for (name, labels), v in done.items() if name == "mmpipe_follow_errors_total"} \
        == {(("kind", kind),): 1}
    assert done[("mmpipe_follow_latency_seconds_bucket", (("le", "+Inf"),))] == 4
    assert done[("mmpipe_follow_latency_seconds_sum", ())] >= 4 * 1.0  # settle_s at least, each
    shares = {dict(labels)["stage"]: v for (name, labels), v in done.items()
              if name == "mmpipe_follow_stage_busy_share"}
    assert set(shares) == {"decode", "embed"} and all(0 <= v <= 1 for v in shares.values())
    assert done[("mmpipe_follow_items_per_second", ())] > 0
    assert done[("mmpipe_follow_setup_seconds", ())] > 0

    assert (result.ok, result.errors) == (3, 1)
    assert result.manifest["metrics_port"] == seen["port"]
    # Stopped with the follower: nothing listens, no thread of its own is left.
    assert not listening(seen["port"])
    assert set(threading.enumerate()) <= threads_before


def _manifest(out: Path) -> dict:
    try:
        return json.loads((out / "_manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _lag_at_least(port: int, n: int) -> float | None:
    lag = scrape(port)[("mmpipe_follow_lag_messages", ())]
    return lag if lag >= n else None


def metrics_of(folder: Path, out: Path) -> FollowMetrics:
    follower = FolderFollower(str(folder), SourceOptions(), settle_s=1, poll_s=1)
    return FollowMetrics(FollowStats(OutputDir(out), EngineStats()), follower)


def test_the_server_stops_when_its_block_ends_by_an_exception(tmp_path):
    metrics = metrics_of(tmp_path, tmp_path / "out")
    threads_before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="the follower failed"):
        with metrics.serve(0) as port:
            assert scrape(port)[("mmpipe_follow_items_total", ())] == 0
            raise RuntimeError("the follower failed")
    assert not listening(port)
    assert set(threading.enumerate()) <= threads_before


def test_errors_count_when_committed_by_kind_and_kinds_stay_bounded(tmp_path):
    metrics = metrics_of(tmp_path, tmp_path / "out")
    rows = [Item(f"r{n}.csv", error=f"manifest row {n}: no image") for n in range(MAX_KINDS + 3)]
    metrics.on_results([Item("fine.jpg"), *rows])
    with metrics.serve(0) as port:
        assert not any(name == "mmpipe_follow_errors_total" for name, _ in scrape(port))
        metrics.on_commit(["fine.jpg", *(r.id for r in rows)], [1.0] * (len(rows) + 1))
        errors = {dict(labels)["kind"]: v for (name, labels), v in scrape(port).items()
                  if name == "mmpipe_follow_errors_total"}
    assert len(errors) == MAX_KINDS + 1 and errors["other"] == 3 and sum(errors.values()) == len(rows)
    assert metrics.waiting == {}


def test_a_port_in_use_is_refused_naming_the_flag(tmp_path):
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"--metrics-port: cannot listen on port {port}"):
            with metrics_of(tmp_path, tmp_path / "out").serve(port):
                pass
        # The config refuses it too, before any model is loaded.
        with pytest.raises(ConfigError, match="--metrics-port: cannot listen"):
            EmbedConfig.build(input=str(tmp_path), out=str(tmp_path / "out"), follow=True,
                              metrics_port=port)


@pytest.mark.parametrize("options, reason", [
    ({"metrics_port": 9100}, "needs --follow"),
    ({"follow": True, "metrics_port": 65536}, "less than or equal to 65535"),
    ({"follow": True, "metrics_port": -1}, "greater than or equal to 0"),
])
def test_bad_metrics_ports_name_the_flag(options, reason, tmp_path):
    with pytest.raises(ConfigError, match=f"--metrics-port: .*{reason}"):
        EmbedConfig.build(input=str(tmp_path), out=str(tmp_path / "out"), **options)


def test_a_config_files_metrics_port_goes_with_the_command_lines_follow(tmp_path):
    config = tmp_path / "follow.yaml"
    config.write_text("metrics_port: 0\n")
    options = {"input": str(tmp_path), "out": str(tmp_path / "out"), "follow": True}
    values = with_config_file(EmbedConfig, str(config), options, {"follow"})
    assert EmbedConfig.build(**values).metrics_port == 0
