"""`mmpipe embed --follow --metrics-port` as a user runs it: a real subprocess scraped over HTTP,
stopped by SIGTERM; bad ports refused in one line naming the flag."""

from __future__ import annotations

import json
import socket

import pytest

from tests.e2e.test_cli import run_cli
from tests.e2e.test_follow import FAST, committed_ids, follow, jpeg_folder, stop, wait_for
from tests.test_follow_metrics import scrape

pytestmark = pytest.mark.e2e


@pytest.mark.slow
def test_a_follower_serves_its_metrics_until_sigterm(tiny_model_spec, tmp_path):
    folder, out = jpeg_folder(tmp_path / "in", 3), tmp_path / "out"
    proc = follow("embed", str(folder), "--out", str(out), "--model", tiny_model_spec,
                  "--shard-seconds", "0.5", "--metrics-port", "0", *FAST)
    manifest = out / "_manifest.json"
    wait_for(lambda: "metrics_port" in json.loads(manifest.read_text() if manifest.exists() else "{}"),
             proc, "the metrics port in the manifest")
    port = json.loads(manifest.read_text())["metrics_port"]
    wait_for(lambda: len(committed_ids(out)) == 3, proc, "the files present at the start")
    wait_for(lambda: scrape(port)[("mmpipe_follow_latency_seconds_count", ())] == 3, proc,
             "the histogram's three items")
    samples = scrape(port)
    assert samples[("mmpipe_follow_items_total", ())] == 3
    assert samples[("mmpipe_follow_lag_messages", ())] == 0
    stderr = stop(proc)
    assert f"metrics on http://0.0.0.0:{port}/metrics" in stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


@pytest.mark.slow  # the CLI starting: about a second
def test_metrics_port_without_follow_is_one_line_naming_the_flag_exit_2(image_dir, tiny_model_spec,
                                                                        tmp_path):
    proc = run_cli("embed", str(image_dir), "--out", str(tmp_path / "out"), "--model", tiny_model_spec,
                   "--metrics-port", "9100")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "mmpipe: error: --metrics-port: serves a follower's metrics; it needs --follow"


@pytest.mark.slow
def test_a_port_in_use_is_one_line_naming_the_flag_exit_2(image_dir, tmp_path):
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        # A model that cannot load: the port is refused before any model is.
        proc = run_cli("moderate", str(image_dir), "--out", str(tmp_path / "out"), "--follow",
                       "--metrics-port", str(port), "--clip-model", "path:/nonexistent")
    assert proc.returncode == 2, proc.stderr
    assert f"--metrics-port: cannot listen on port {port}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
