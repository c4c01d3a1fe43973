"""Stages run in worker processes (``Stage.in_processes``, ``mmpipe embed --decode-processes``):
real spawned processes, the same results as threads, a crashing worker costs one error row."""

from __future__ import annotations

import json
import os
from functools import partial

import pytest

import mmpipe
from mmpipe.engine import LocalEngine
from mmpipe.records import Record, Scored
from mmpipe.stage import Stage
from mmpipe.stages.common import per_item
from tests.conftest import assert_same_rows, by_id


def _tag_with_pid(record: Record) -> Record:
    if record.id == "crash":
        os._exit(3)  # what a segfaulting decoder looks like from outside
    record.outputs["pid"] = os.getpid()
    return record


def run(ids: list[str], stage: Stage) -> dict[str, Record]:
    out: dict[str, Record] = {}
    items = [Scored(id=i, uri=None, text=None) for i in ids]
    LocalEngine().run(items, [stage], lambda chunk: out.update((r.id, r) for r in chunk))
    return out


def test_a_stage_runs_in_its_own_worker_processes():
    stage = Stage("decode", partial(per_item, "decode", _tag_with_pid), batch_size=3, concurrency=2,
                  stateless=True, in_processes=True)
    out = run([f"r{i}" for i in range(30)], stage)
    assert len(out) == 30 and all(r.error is None for r in out.values())
    pids = {r.outputs["pid"] for r in out.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_a_crashing_worker_costs_only_its_item():
    stage = Stage("decode", partial(per_item, "decode", _tag_with_pid), batch_size=4, concurrency=2,
                  stateless=True, in_processes=True)
    ids = [f"r{i}" for i in range(10)] + ["crash"] + [f"s{i}" for i in range(10)]
    out = run(ids, stage)
    assert set(out) == set(ids)
    assert "worker process died" in out["crash"].error
    assert [i for i, r in out.items() if r.error] == ["crash"]


def test_a_setup_that_cannot_be_shipped_is_refused_by_name():
    stage = Stage("decode", lambda: per_item("decode", _tag_with_pid), stateless=True, in_processes=True)
    with pytest.raises(ValueError, match="stage 'decode' runs in processes, so its setup must pickle"):
        run(["a"], stage)


def test_embed_with_decode_processes_equals_threads(image_dir, tiny_model_spec, tmp_path):
    (image_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    threads = mmpipe.embed(str(image_dir), str(tmp_path / "threads"), model=tiny_model_spec,
                           batch_size=3, progress=False)
    procs = mmpipe.embed(str(image_dir), str(tmp_path / "procs"), model=tiny_model_spec,
                         batch_size=3, progress=False, decode_processes=True)
    assert (procs.ok, procs.errors) == (threads.ok, threads.errors) == (8, 1)
    assert_same_rows(by_id(procs.out), by_id(threads.out))


def test_cli_flag(image_dir, tiny_model_spec, tmp_path):
    from mmpipe.cli import main

    main(["embed", str(image_dir), "--out", str(tmp_path / "out"), "--model", tiny_model_spec,
          "--decode-processes", "--decode-workers", "2", "--no-progress"])
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["items"] == 8
