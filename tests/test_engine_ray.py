"""The Ray engine on a real local Ray cluster: the same stages, output, errors and resume as the
local engine."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import mmpipe  # noqa: E402
from mmpipe.engine import make_engine  # noqa: E402
from mmpipe.engine.ray import RayEngine  # noqa: E402
from mmpipe.records import Item, failed  # noqa: E402
from mmpipe.stage import Resources, Stage  # noqa: E402
from tests.conftest import assert_same_rows, by_id, kill_at_commit_depths, photo  # noqa: E402
from tests.e2e.test_cli import run_cli  # noqa: E402
from tests.test_moderate import media  # noqa: E402,F401 - the moderation test media, reused

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for this module; jobs (and CLI subprocesses) connect to it."""
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray-images")
    for i in range(60):
        photo(i, size=(64 + i, 48 + i % 20)).save(folder / f"img{i:02d}.{'jpg' if i % 2 else 'png'}")
        if i % 3 == 0:
            (folder / f"img{i:02d}.txt").write_text(f"caption {i}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    return folder


def test_embed_on_ray_equals_the_local_engine(cluster, images, tiny_model_spec, tmp_path):
    local = mmpipe.embed(str(images), str(tmp_path / "local"), model=tiny_model_spec, batch_size=8,
                         shard_size=25, progress=False)
    on_ray = mmpipe.embed(str(images), str(tmp_path / "ray"), model=tiny_model_spec, batch_size=8,
                          shard_size=25, progress=False, engine="ray")
    assert (on_ray.ok, on_ray.errors) == (local.ok, local.errors) == (60, 2)
    rows = by_id(tmp_path / "ray")
    assert_same_rows(rows, by_id(tmp_path / "local"), atol=1e-5)
    assert rows["broken.jpg"]["error"].startswith("decode:")
    assert len(mmpipe.OutputDir(tmp_path / "ray").shards()) == 3  # same layout: 62 rows by 25
    stats = json.loads((tmp_path / "ray" / "stats.json").read_text())
    stages = {s["name"]: s for s in stats["stages"]}
    assert stats["items"] == 62 and stats["bottleneck"] in stages
    assert stages["decode"]["items"] == 62 and stages["embed"]["items"] == 60  # errors skip the model
    assert stages["embed"]["batches"] < 62  # the model stage got batches, not single items
    manifest = json.loads((tmp_path / "ray" / "_manifest.json").read_text())
    assert manifest["counts"] == {"rows": 62, "ok": 60, "errors": 2}


def test_moderate_on_ray_scores_like_the_local_engine(cluster, media, tmp_path):
    mmpipe.moderate(str(media), str(tmp_path / "local"), progress=False)
    mmpipe.moderate(str(media), str(tmp_path / "ray"), progress=False, engine="ray")
    local = {r["id"]: r for r in mmpipe.read_output(tmp_path / "local").to_pylist()}
    on_ray = {r["id"]: r for r in mmpipe.read_output(tmp_path / "ray").to_pylist()}
    assert on_ray.keys() == local.keys()
    for key, row in local.items():
        assert (on_ray[key]["action"], on_ray[key]["error"]) == (row["action"], row["error"]), key
        for col in row:
            if col.startswith("score_") and row[col] is not None:
                assert on_ray[key][col] == pytest.approx(row[col], abs=1e-4), (key, col)
    assert (tmp_path / "ray" / "report.html").exists()


def _count_setups(folder: Path):
    """A model-like stage whose setup leaves a file behind, so the test can count replicas."""
    def setup():
        (folder / f"setup-{os.getpid()}-{time.monotonic_ns()}").touch()

        def double(batch):
            out = []
            for r in batch:
                if r.text == "POISON":
                    raise ValueError("cannot handle poison")
                out.append(Item(id=r.id, text=r.text * 2))
            return out
        return double
    return setup


def test_model_stages_are_actors_set_up_once_and_errors_stay_rows(cluster, tmp_path):
    items = [Item(id=str(i), text="poison" if i == 7 else f"t{i}") for i in range(300)]
    items[3] = failed(items[3], "read: gone")
    stages = [Stage("upper", lambda: lambda batch: [Item(id=r.id, text=r.text.upper()) for r in batch],
                    stateless=True),
              Stage("model", _count_setups(tmp_path), batch_size=16, resources=Resources(num_cpus=1))]
    got = {}
    stats = RayEngine(chunk=32).run(iter(items), stages, lambda chunk: got.update((r.id, r) for r in chunk))
    assert len(got) == 300 and stats.items == 300
    assert got["5"].text == "T5T5" and got["3"].error == "read: gone"
    assert got["7"].error == "model: ValueError: cannot handle poison"  # one bad item fails alone
    assert len(list(tmp_path.glob("setup-*"))) == 1  # one actor, its model set up once
    model = stats.stages[1]
    assert model.items == 299 and 300 // 16 <= model.batches <= 40  # items it was given


def test_a_failing_listing_fails_the_run_instead_of_ending_it_early(cluster):
    def listing():
        yield Item(id="a", text="x")
        raise OSError("bucket listing interrupted")

    stages = [Stage("noop", lambda: lambda batch: list(batch), stateless=True)]
    with pytest.raises(OSError, match="bucket listing interrupted"):
        RayEngine().run(listing(), stages, lambda chunk: None)


def test_driver_sigkill_then_resume_gives_every_id_once(cluster, images, tiny_model_spec, tmp_path):
    reference = tmp_path / "reference"
    mmpipe.embed(str(images), str(reference), model=tiny_model_spec, batch_size=4, shard_size=5,
                 progress=False)
    out = tmp_path / "out"
    args = ["embed", str(images), "--out", str(out), "--model", tiny_model_spec, "--batch-size", "4",
            "--shard-size", "5", "--engine", "ray", "--ray-address", cluster]
    kills = kill_at_commit_depths([sys.executable, "-m", "mmpipe.cli", *args], out, (1, 4), timeout=120)
    assert kills >= 1, "the job finished before it could be killed"
    final = run_cli(*args, timeout=300)
    assert final.returncode == 0, final.stderr
    assert_same_rows(by_id(out), by_id(reference), atol=1e-5)


def test_bad_engine_options_are_one_line_exit_2(images, tiny_model_spec, tmp_path):
    bad_engine = run_cli("embed", str(images), "--out", str(tmp_path / "a"), "--engine", "spark")
    assert bad_engine.returncode == 2 and "--engine" in bad_engine.stderr
    assert len(bad_engine.stderr.strip().splitlines()) == 1
    stray = run_cli("embed", str(images), "--out", str(tmp_path / "b"), "--ray-address", "auto")
    assert stray.returncode == 2 and "--ray-address" in stray.stderr and "--engine ray" in stray.stderr
    with pytest.raises(mmpipe.ConfigError, match="--ray-address"):
        make_engine("local", "ray://example:10001")


def test_pipeline_sharded_model_on_ray_actors_equals_the_whole_model(cluster, images, tiny_model_spec,
                                                                      tmp_path):
    whole = mmpipe.embed(str(images), str(tmp_path / "whole"), model=tiny_model_spec, batch_size=8,
                         progress=False)
    piped = mmpipe.embed(str(images), str(tmp_path / "piped"), model=tiny_model_spec, batch_size=8,
                         progress=False, engine="ray", pipeline_stages=2)
    assert (piped.ok, piped.errors) == (whole.ok, whole.errors)
    assert_same_rows(by_id(tmp_path / "piped"), by_id(tmp_path / "whole"), atol=1e-5)
    stats = json.loads((tmp_path / "piped" / "stats.json").read_text())
    assert [s["name"] for s in stats["stages"]][-3:] == ["embed-text", "embed-vision-0", "embed-vision-1"]
