"""The `mmpipe` command as a user runs it: a real subprocess, real files, real signals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mmpipe
from tests.conftest import assert_same_rows, by_id, kill_at_commit_depths, photo

pytestmark = pytest.mark.e2e

MMPIPE = [sys.executable, "-m", "mmpipe.cli"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # Wide enough that help text is not cut to fit a terminal.
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*MMPIPE, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """Enough images that a run takes a few seconds, some with captions, some broken."""
    folder = tmp_path_factory.mktemp("many")
    for i in range(240):
        photo(i, size=(80 + i % 40, 60 + i % 30)).save(folder / f"img{i:03d}.{'jpg' if i % 2 else 'png'}")
        if i % 3 == 0:
            (folder / f"img{i:03d}.txt").write_text(f"caption {i}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    return folder


def test_embed_ok_and_error_rows_exit_0(many_images, tiny_model_spec, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("embed", str(many_images), "--out", str(out), "--model", tiny_model_spec,
                   "--shard-size", "100", "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr
    assert "240 ok, 2 errors" in proc.stderr
    assert str(out) in proc.stderr
    rows = by_id(out)
    assert len(rows) == 242
    assert rows["empty.png"]["error"].startswith("decode: empty file")
    assert "corrupt" in rows["broken.jpg"]["error"] or "unrecognised" in rows["broken.jpg"]["error"]
    assert rows["broken.jpg"]["image_embedding"] is None
    assert len(mmpipe.OutputDir(out).shards()) == 3
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"] == {"rows": 242, "ok": 240, "errors": 2}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["items"] == 242 and stats["bottleneck"] in {s["name"] for s in stats["stages"]}


def test_sigkill_at_any_moment_then_resume_gives_every_id_once(many_images, tiny_model_spec, tmp_path):
    reference = tmp_path / "reference"
    assert mmpipe.embed(str(many_images), str(reference), model=tiny_model_spec, shard_size=7,
                        batch_size=4, progress=False).errors == 2
    want = by_id(reference)

    out = tmp_path / "out"
    args = [*MMPIPE, "embed", str(many_images), "--out", str(out), "--model", tiny_model_spec,
            "--shard-size", "7", "--batch-size", "4"]
    slabs_before = shm_slabs()
    # Kill at growing depths into the run: before the first commit, then mid-run several times.
    kills = kill_at_commit_depths(args, out, (0, 2, 6, 12, 20))
    assert kills >= 3, "the job finished before it could be killed; make it longer"

    final = run_cli(*args[len(MMPIPE):])
    assert final.returncode == 0, final.stderr
    assert_same_rows(by_id(out), want, atol=1e-5)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    # The killed runs' decode slabs: gone (their resource tracker, or the next run, removed them)
    assert shm_slabs() == slabs_before


def shm_slabs() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("mmpipe-")} if os.path.isdir("/dev/shm") else set()


def test_rerun_of_a_finished_job_does_nothing(image_dir, tiny_model_spec, tmp_path):
    out = tmp_path / "out"
    first = run_cli("embed", str(image_dir), "--out", str(out), "--model", tiny_model_spec)
    assert first.returncode == 0, first.stderr
    stats = (out / "stats.json").read_text()
    again = run_cli("embed", str(image_dir), "--out", str(out), "--model", tiny_model_spec)
    assert again.returncode == 0, again.stderr
    assert "0 items" in again.stderr and "8 already done" in again.stderr
    assert (out / "stats.json").read_text() == stats
    assert len(by_id(out)) == 8


@pytest.mark.parametrize("args, names", [
    (["--batch-size", "0"], "--batch-size"),
    (["--decode-workers", "-1"], "--decode-workers"),
    (["--batch-size", "many"], "--batch-size"),
    (["--precision", "fp8"], "--precision"),
    (["--device", "tpu"], "--device"),
    (["--model", "nonsense"], "--model"),
    (["--model", "path:/nowhere/at/all"], "/nowhere/at/all"),
    (["--storage-option", "novalue"], "--storage-option"),
    (["--no-such-flag"], "--no-such-flag"),
    (["--decode-device", "cuda"], "--decode-device"),  # the model is on the CPU
    (["--decode-device", "tpu"], "--decode-device"),
    (["--devices", "gpu0,gpu1"], "--devices"),
    (["--devices", "cuda:0", "--engine", "ray"], "--devices"),
    (["--devices", "cuda:0"], "--devices"),  # no CUDA here (or no such GPU)
    (["--model", "zeros:ViT-B-32", "--precision", "bf16"], "--model"),
])
def test_bad_options_are_one_line_naming_the_option_exit_2(image_dir, tiny_model_spec, tmp_path,
                                                           args, names):
    base = ["embed", str(image_dir), "--out", str(tmp_path / "out"), "--model", tiny_model_spec]
    proc = run_cli(*base, *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mmpipe: error:") and names in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_input_and_mismatched_output_are_one_line(image_dir, tiny_model_spec, tmp_path):
    missing = run_cli("embed", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o"),
                      "--model", tiny_model_spec)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "INPUT" in missing.stderr

    out = tmp_path / "out"
    assert run_cli("embed", str(image_dir), "--out", str(out), "--model", tiny_model_spec).returncode == 0
    other = run_cli("embed", str(image_dir), "--out", str(out), "--model", tiny_model_spec,
                    "--precision", "bf16")
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert "precision" in other.stderr and "--overwrite" in other.stderr
    elsewhere = run_cli("embed", str(image_dir / "sub"), "--out", str(out), "--model", tiny_model_spec)
    assert elsewhere.returncode == 2 and "input=" in elsewhere.stderr


def test_help_explains_the_command():
    proc = run_cli("embed", "--help")
    assert proc.returncode == 0
    for flag in ("--out", "--model", "--batch-size", "--decode-workers", "--device", "--precision",
                 "--limit", "--overwrite", "--shard-size", "--allow-private-urls"):
        assert flag in proc.stdout, flag
    no_args = run_cli()
    assert no_args.returncode == 2 and "embed" in no_args.stdout


def test_price_per_hour_gives_the_cost_per_million_items(image_dir, tiny_model_spec, tmp_path):
    out = tmp_path / "out"
    run = run_cli("embed", str(image_dir), "--out", str(out), "--model", tiny_model_spec,
                  "--price-per-hour", "3.6")
    assert run.returncode == 0, run.stderr
    stats = json.loads((out / "stats.json").read_text())
    # $3.60 an hour is $0.001 a second, for the whole run (model setup included)
    seconds = stats["setup_s"] + stats["wall_s"]
    assert stats["price_per_hour"] == 3.6
    assert stats["usd_per_million_items"] == pytest.approx(1e3 * seconds / stats["items"], rel=0.01)
    assert "cost: $" in run.stderr and "per million items at $3.6/h" in run.stderr
    bad = run_cli("embed", str(image_dir), "--out", str(out), "--model", tiny_model_spec, "--price-per-hour", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("mmpipe: error: --price-per-hour")
