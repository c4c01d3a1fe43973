"""The commit log, the output folder and the Parquet shard sink; resume through a real job."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmpipe
from mmpipe.errors import OutputDirError
from mmpipe.records import Scored, failed
from mmpipe.sinks import CommitLog, OutputDir, ParquetShardSink
from mmpipe.sinks.commit_log import Commit
from tests.conftest import assert_same_rows, by_id, photo

SIG = {"job": "test", "model": "m1", "precision": "fp32"}


def simple_table(records) -> pa.Table:
    return pa.table({"id": [r.id for r in records], "error": [r.error for r in records]})


def recs(ids, errors=()):
    out = [Scored(id=i, uri=None, text=None) for i in ids]
    return [failed(r, "decode: bad") if r.id in errors else r for r in out]


def shard_ids(path: Path) -> list[str]:
    return pq.read_table(path)["id"].to_pylist()


# --- CommitLog ------------------------------------------------------------------------------


def test_commit_log_round_trip(tmp_path):
    log = CommitLog(tmp_path / "_commits.jsonl")
    assert log.read() == []
    commits = [Commit("part-00000.parquet", ["a", "b"], 0),
               Commit("part-00001.parquet", ["ünï/cøde.jpg", 'q"uote\nnl'], 1),
               Commit("part-00002.parquet", ["c.jpg"], 0, consumed={"files": ["c.jpg", "c.txt"]})]
    for c in commits:
        log.append(c)
    assert log.read() == commits
    # A listing's lines carry no "consumed" (older logs neither): they read as None.
    assert [json.loads(line).get("consumed") for line in log.path.read_text().splitlines()] == \
        [None, None, {"files": ["c.jpg", "c.txt"]}]
    assert log.read()[0].consumed is None


@pytest.mark.parametrize("torn", [b'{"shard": "part-00002.parquet", "ids": ["e", "f', b"{",
                                  b"\x00\x00\x00", b'{"shard": "part-00002.parquet"}\n'])
def test_torn_last_line_is_ignored_and_repaired(tmp_path, torn):
    log = CommitLog(tmp_path / "_commits.jsonl")
    log.append(Commit("part-00000.parquet", ["a", "b"], 0))
    log.append(Commit("part-00001.parquet", ["c", "d"], 0))
    good = log.path.read_bytes()
    log.path.write_bytes(good + torn)
    assert [c.shard for c in log.read()] == ["part-00000.parquet", "part-00001.parquet"]

    for name in ("part-00000.parquet", "part-00001.parquet"):
        (tmp_path / name).write_bytes(b"stand-in")
    commits = OutputDir(tmp_path).open(SIG, overwrite=False)
    assert [c.ids for c in commits] == [["a", "b"], ["c", "d"]]
    assert log.path.read_bytes() == good  # the torn tail is gone from the file itself
    log.append(Commit("part-00002.parquet", ["e"], 0))  # and appending after it is clean
    assert [c.ids for c in log.read()] == [["a", "b"], ["c", "d"], ["e"]]


# --- OutputDir ------------------------------------------------------------------------------


def committed_dir(tmp_path: Path, n_shards: int = 2) -> OutputDir:
    out = OutputDir(tmp_path / "out")
    out.open(SIG, overwrite=False)
    out.write_json("_manifest.json", {"signature": SIG, "status": "running"})
    sink = ParquetShardSink(out, simple_table, shard_size=2)
    sink.add(recs([f"id{i}" for i in range(2 * n_shards)]))
    sink.flush()
    return out


def test_orphan_shards_and_tmp_files_are_removed_on_open(tmp_path):
    out = committed_dir(tmp_path)
    pq.write_table(simple_table(recs(["x", "y"])), out.path / "part-00002.parquet")  # not logged
    pq.write_table(simple_table(recs(["z"])), out.path / "part-00007.parquet")
    leftovers = [".part-00003.parquet.tmp", "._manifest.json.tmp", "_commits.jsonl.tmp",
                 ".stats.json.tmp"]
    for name in leftovers:
        (out.path / name).write_bytes(b"half written")
    (out.path / "notes.txt").write_text("the user's own file")
    # readers see only committed shards, even before the folder is cleaned up
    assert sorted(mmpipe.read_output(out.path)["id"].to_pylist()) == ["id0", "id1", "id2", "id3"]

    commits = OutputDir(out.path).open(SIG, overwrite=False)
    names = sorted(p.name for p in out.path.iterdir())
    assert names == ["_commits.jsonl", "_manifest.json", "notes.txt",
                     "part-00000.parquet", "part-00001.parquet"]
    assert OutputDir(out.path).next_shard_index(commits) == 2


def test_missing_committed_shard_is_an_error(tmp_path):
    out = committed_dir(tmp_path)
    (out.path / "part-00001.parquet").unlink()
    with pytest.raises(OutputDirError, match=r"part-00001\.parquet.*missing.*--overwrite"):
        OutputDir(out.path).open(SIG, overwrite=False)
    assert OutputDir(out.path).open(SIG, overwrite=True) == []  # --overwrite starts again


@pytest.mark.parametrize("key", ["model", "precision", "job"])
def test_other_signature_is_refused(tmp_path, key):
    out = committed_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in out.path.iterdir()}
    pq.write_table(simple_table(recs(["x"])), out.path / "part-00009.parquet")  # an orphan
    before["part-00009.parquet"] = (out.path / "part-00009.parquet").read_bytes()
    with pytest.raises(OutputDirError) as info:
        OutputDir(out.path).open({**SIG, key: "other"}, overwrite=False)
    message = str(info.value)
    assert f"{key}={SIG[key]!r}" in message and "'other'" in message and "--overwrite" in message
    # refused before anything was touched, orphan included
    assert {p.name: p.read_bytes() for p in out.path.iterdir()} == before


def test_overwrite_clears_only_what_a_job_wrote(tmp_path):
    out = committed_dir(tmp_path)
    out.write_json("stats.json", {"items": 4})
    (out.path / ".part-00002.parquet.tmp").write_bytes(b"x")
    (out.path / "notes.txt").write_text("keep me")
    assert OutputDir(out.path).open({**SIG, "model": "other"}, overwrite=True) == []
    assert sorted(p.name for p in out.path.iterdir()) == ["_commits.jsonl", "notes.txt"]
    assert out.log.read() == []


def test_read_table_without_commits(tmp_path):
    out = OutputDir(tmp_path / "out")
    out.open(SIG, overwrite=False)
    with pytest.raises(OutputDirError, match="no committed shards"):
        out.read_table()


# --- ParquetShardSink -----------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 7])
@pytest.mark.parametrize("n, size, rows", [(10, 3, [3, 3, 3, 1]), (9, 3, [3, 3, 3]), (2, 5, [2]),
                                           (4, 1, [1, 1, 1, 1]), (0, 3, [])])
def test_shard_size_splits_rows(tmp_path, n, size, rows, chunk):
    out = OutputDir(tmp_path / "out")
    out.open(SIG, overwrite=False)
    ids = [f"id{i:02d}" for i in range(n)]
    sink = ParquetShardSink(out, simple_table, shard_size=size, first_index=3)
    records = recs(ids, errors={"id01", "id04"})
    for i in range(0, n, chunk):  # chunks that end shards, span them and fall short of them
        sink.add(records[i: i + chunk])
    sink.flush()
    sink.flush()  # a second flush with nothing buffered writes nothing
    commits = out.log.read()
    assert [len(c.ids) for c in commits] == rows
    assert [c.shard for c in commits] == [f"part-{3 + i:05d}.parquet" for i in range(len(rows))]
    assert [i for c in commits for i in c.ids] == ids
    for c in commits:
        assert shard_ids(out.path / c.shard) == c.ids
        assert c.errors == sum(i in {"id01", "id04"} for i in c.ids)
    assert sink.rows == n and sink.errors == sum(i in {"id01", "id04"} for i in ids)
    assert not [p for p in out.path.iterdir() if p.name.endswith(".tmp")]


# --- resume through the embed job -----------------------------------------------------------


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """20 images (some captioned) and one broken file."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(20):
        photo(100 + i, size=(64 + i, 48 + 2 * i)).save(folder / f"p{i:02d}.{'jpg' if i % 2 else 'png'}")
        if i % 3 == 0:
            (folder / f"p{i:02d}.txt").write_text(f"caption number {i}" + " long" * i)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return folder


def run(photos, out, model, **kw):
    kw = {"batch_size": 4, "shard_size": 3, "progress": False, **kw}
    return mmpipe.embed(str(photos), str(out), model=model, **kw)


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.name != "_manifest.json"}


@pytest.fixture(scope="module")
def reference(photos, tiny_model_spec, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("reference") / "out"
    result = run(photos, out, tiny_model_spec, batch_size=5, shard_size=100)
    assert (result.ok, result.errors) == (20, 1)
    return by_id(out)


def test_shards_and_numbering_continue_after_commits(photos, tiny_model_spec, reference, tmp_path):
    out = tmp_path / "out"
    first = run(photos, out, tiny_model_spec, limit=7)
    assert first.ok + first.errors == 7 and first.skipped == 0
    log = CommitLog(out / "_commits.jsonl")
    assert [len(c.ids) for c in log.read()] == [3, 3, 1]

    second = run(photos, out, tiny_model_spec)
    assert second.skipped == 7 and second.ok + second.errors == 21 - 7
    commits = log.read()
    assert [c.shard for c in commits] == [f"part-{i:05d}.parquet" for i in range(len(commits))]
    assert [len(c.ids) for c in commits] == [3, 3, 1, 3, 3, 3, 3, 2]
    for c in commits:
        assert shard_ids(out / c.shard) == c.ids
    assert sorted(OutputDir(out).shards()) == sorted(out / c.shard for c in commits)
    assert_same_rows(by_id(out), reference)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["shards"] == 8
    assert manifest["counts"] == {"rows": 21, "ok": 20, "errors": 1}


def test_rerun_of_a_finished_job_writes_nothing(photos, tiny_model_spec, tmp_path):
    out = tmp_path / "out"
    first = run(photos, out, tiny_model_spec)
    assert (first.ok, first.errors, first.skipped) == (20, 1, 0)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["items"] == 21
    before = snapshot(out)
    # shards and stats.json are not even touched (the log may be rewritten, with the same bytes)
    untouched = [p for p in out.iterdir() if p.suffix == ".parquet" or p.name == "stats.json"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in untouched}

    again = run(photos, out, tiny_model_spec)
    assert (again.ok, again.errors, again.skipped) == (0, 0, 21)
    assert again.stats.items == 0
    assert snapshot(out) == before  # no shard, no log line, stats.json of the real run kept
    assert {p.name: p.stat().st_mtime_ns for p in untouched} == mtimes
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"rows": 21, "ok": 20, "errors": 1}


@pytest.mark.parametrize("change, key", [("precision", "precision"), ("model", "model")])
def test_resume_with_another_signature_is_refused(photos, tiny_model_spec, tmp_path, change, key):
    out = tmp_path / "out"
    run(photos, out, tiny_model_spec, limit=4)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # random:ViT-B-32 builds its weights only in a model worker, which a refusal never starts
    other = {"precision": {"precision": "bf16"}, "model": {"model": "random:ViT-B-32"}}[change]
    with pytest.raises(mmpipe.OutputDirError) as info:
        mmpipe.embed(str(photos), str(out), **{"model": tiny_model_spec, **other}, progress=False)
    message = str(info.value)
    assert f"{key}=" in message and "--overwrite" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_starts_again(photos, tiny_model_spec, tmp_path):
    out = tmp_path / "out"
    run(photos, out, tiny_model_spec, shard_size=2)
    assert len(CommitLog(out / "_commits.jsonl").read()) == 11
    result = run(photos, out, tiny_model_spec, precision="bf16", shard_size=50, overwrite=True)
    assert (result.ok, result.errors, result.skipped) == (20, 1, 0)
    assert [p.name for p in OutputDir(out).shards()] == ["part-00000.parquet"]
    assert [c.shard for c in CommitLog(out / "_commits.jsonl").read()] == ["part-00000.parquet"]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["precision"] == "bf16" and manifest["signature"]["precision"] == "bf16"
    assert json.loads((out / "stats.json").read_text())["items"] == 21
    assert len(by_id(out)) == 21


def test_crash_mid_job_then_resume_gives_every_id_once(photos, tiny_model_spec, reference,
                                                      tmp_path):
    out = tmp_path / "out"
    assert run(photos, out, tiny_model_spec).ok == 20  # 7 shards of 3
    log = out / "_commits.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) == 7
    # The crash: two commits made it to the log, the third was being appended (torn), the later
    # shards were renamed into place but never logged, one was still being written.
    keep = 2
    log.write_bytes(b"".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])
    (out / ".part-00007.parquet.tmp").write_bytes(b"PAR1 half a shard")
    manifest = json.loads((out / "_manifest.json").read_text())
    (out / "_manifest.json").write_text(json.dumps({**manifest, "status": "running"}))
    done_before = [i for line in lines[:keep] for i in json.loads(line)["ids"]]
    orphans = [json.loads(line)["shard"] for line in lines[keep:]]
    assert all((out / name).exists() for name in orphans)

    result = run(photos, out, tiny_model_spec, batch_size=3)  # batches differ from the first run
    assert result.skipped == len(done_before) == 6
    assert result.ok + result.errors == 21 - 6
    assert json.loads((out / "stats.json").read_text())["items"] == 21 - 6

    commits = CommitLog(log).read()
    assert [c.shard for c in commits] == [f"part-{i:05d}.parquet" for i in range(len(commits))]
    assert [i for c in commits[:keep] for i in c.ids] == done_before
    assert sorted(p.name for p in OutputDir(out).shards()) == [c.shard for c in commits]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert_same_rows(by_id(out), reference)
    assert json.loads((out / "_manifest.json").read_text())["counts"] == {
        "rows": 21, "ok": 20, "errors": 1}


def test_crash_before_any_commit(photos, tiny_model_spec, reference, tmp_path):
    out = tmp_path / "out"
    run(photos, out, tiny_model_spec, limit=6)
    for p in out.iterdir():  # shards renamed into place, but the log never got a line
        if p.name == "_commits.jsonl":
            p.write_bytes(b'{"shard": "part-0')
    result = run(photos, out, tiny_model_spec)
    assert result.skipped == 0 and result.ok + result.errors == 21
    assert_same_rows(by_id(out), reference)



def test_rows_taken_back_from_the_open_shard_are_not_committed(tmp_path):
    # A followed partition that moves to another consumer: its uncommitted rows leave the shard.
    out = OutputDir(tmp_path)
    out.open(SIG, overwrite=False)
    ids = [f"i{n}" for n in range(600)]
    sink = ParquetShardSink(out, simple_table, shard_size=1000)
    sink.add(recs(ids, errors={f"i{n}" for n in range(0, 600, 3)}))
    sink.drop(ids[::2] + ["not-there"])
    assert sink.ids == ids[1::2]
    sink.flush()
    table = out.read_table()
    assert table["id"].to_pylist() == ids[1::2]
    assert sink.errors == sum(1 for n in range(1, 600, 2) if n % 3 == 0) == table["error"].drop_null().length()
