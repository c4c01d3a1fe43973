"""Shared-memory slabs between worker processes and the engine (``Stage.shared``): real spawned
processes and the real ``/dev/shm``. Rows come back as the child wrote them, one slab per batch;
a slab is reused once nothing views it; nothing is left behind; a worker that dies costs only
the item that killed it; with too little shared memory the arrays are pickled instead."""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pytest

from mmpipe.engine import LocalEngine
from mmpipe.engine.child_process import ChildProcess, shipped_setup
from mmpipe.engine.slabs import SHM_DIR, SlabPool
from mmpipe.models.device_feed import DeviceFeed, consecutive_rows
from mmpipe.records import Decoded, Record, Scored
from mmpipe.stage import ArrayField, Stage
from mmpipe.stages.common import per_item

FIELD = ArrayField("pixels", (3, 8, 8))
pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")


def _pixels_of(record: Record) -> Decoded:
    if record.id == "crash":
        os._exit(3)  # a decoder segfaulting, seen from outside
    return Decoded(id=record.id, uri=None, text=None, pixels=expected(record.id))


def expected(item_id: str) -> np.ndarray:
    return np.full(FIELD.shape, int(item_id[1:]) % 251, np.uint8)


def decode_stage(batch_size: int = 4, workers: int = 2) -> Stage:
    return Stage("decode", partial(per_item, "decode", _pixels_of), batch_size=batch_size,
                 concurrency=workers, stateless=True, in_processes=True, shared=FIELD)


def slab_files() -> set[str]:
    return {n for n in os.listdir(SHM_DIR) if n.startswith("mmpipe-")}


def items(ids: list[str]) -> list[Scored]:
    return [Scored(id=i, uri=None, text=None) for i in ids]


def test_rows_come_back_through_one_slab_per_batch_and_leave_nothing_behind():
    before = slab_files()
    seen, in_use = {}, []

    def consume(chunk: list[Record]) -> None:
        in_use.append(len(slab_files() - before))
        rows = [r.pixels for r in chunk]
        assert consecutive_rows(rows) is not None  # the batch lies in one slab, in order
        for r in chunk:
            assert not r.pixels.flags.owndata  # a view of shared memory, not a pickled copy
            seen[r.id] = r.pixels.copy()

    ids = [f"r{i}" for i in range(203)]
    stats = LocalEngine().run(items(ids), [decode_stage()], consume)
    assert stats.items == 203 and set(seen) == set(ids)
    assert all(np.array_equal(seen[i], expected(i)) for i in ids)
    # slabs are reused: what is in flight, not one per batch of the 51
    assert 0 < max(in_use) <= 12
    assert slab_files() == before


def test_a_slab_goes_back_to_the_pool_when_its_last_view_goes():
    pool = SlabPool(FIELD, rows=4)
    try:
        slab = pool.acquire()
        rows = pool.rows_of(slab, 3)
        row = rows[1]
        del rows
        assert pool.free == []  # a row still viewed keeps the slab
        del row
        assert pool.free == [slab] and pool.acquire() is slab
        assert len(pool.slabs) == 1
    finally:
        pool.close()
    assert slab.name not in slab_files()


def test_a_worker_dying_mid_batch_costs_only_its_item_and_leaks_no_slab():
    before = slab_files()
    out: dict[str, Record] = {}
    ids = [f"r{i}" for i in range(10)] + ["crash"] + [f"s{i}" for i in range(10)]
    LocalEngine().run(items(ids), [decode_stage()], lambda chunk: out.update((r.id, r) for r in chunk))
    assert set(out) == set(ids)
    assert [i for i, r in out.items() if r.error] == ["crash"]
    assert "worker process died" in out["crash"].error
    assert all(np.array_equal(out[i].pixels, expected(i)) for i in ids if i != "crash")
    out.clear()  # the last views of the slabs
    assert slab_files() == before


def test_without_room_in_shared_memory_the_arrays_are_pickled():
    stat = os.statvfs(SHM_DIR)
    too_many_rows = stat.f_bavail * stat.f_frsize // (3 * 8 * 8) + 1  # a slab larger than /dev/shm
    pool = SlabPool(FIELD, rows=too_many_rows)
    child = ChildProcess("decode", shipped_setup(decode_stage()), pool)
    try:
        child.submit(items(["r1", "r2", "r3"]))
        out = child.receive()
    finally:
        child.close()
        pool.close()
    assert pool.slabs == []  # no slab was made: each array came back pickled, on its own
    assert all(r.pixels.flags.owndata for r in out) and consecutive_rows([r.pixels for r in out]) is None
    assert all(np.array_equal(r.pixels, expected(r.id)) for r in out)


def test_the_model_reads_a_slab_as_it_lies():
    import torch

    feed = DeviceFeed(torch.device("cpu"))
    pool = SlabPool(FIELD, rows=4)
    try:
        rows = pool.rows_of(pool.acquire(), 4)
        rows[:] = np.arange(4, dtype=np.uint8)[:, None, None, None]
        batch = feed.stack([rows[i] for i in range(1, 4)])
        assert np.shares_memory(batch, rows) and np.array_equal(batch, rows[1:])
        # rows out of order, or with a gap, are stacked into a new array
        gap = feed.stack([rows[0], rows[2]])
        assert not np.shares_memory(gap, rows) and np.array_equal(gap, rows[[0, 2]])
        del rows, batch, gap
    finally:
        pool.close()
