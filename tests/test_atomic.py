"""mmpipe.atomic: a file is replaced whole or not at all, and nothing temporary is left behind."""

import pytest

from mmpipe.atomic import TMP_SUFFIX, atomic_path, write_bytes, write_text


@pytest.mark.parametrize("durable", [False, True])
def test_writes_replace_the_target_whole(tmp_path, durable):
    target = tmp_path / "data.json"
    assert write_text(target, "first ü", durable=durable) == target
    write_bytes(target, b"second", durable=durable)
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "shard.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target, durable=True) as tmp:
        tmp.write_text("half of the new")
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(TMP_SUFFIX)
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["shard.parquet"]


def test_concurrent_writers_get_their_own_temporary_names(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the last rename wins; neither saw the other's bytes
