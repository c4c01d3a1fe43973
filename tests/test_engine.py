"""LocalEngine and Stage with real threads and queues: ordering aside, nothing lost, nothing
doubled, errors isolated to their item, memory bounded by queue capacity, no hangs."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Callable, Sequence

import pytest

from mmpipe.engine import LocalEngine
from mmpipe.engine.streaming import Stream
from mmpipe.records import Record, Scored, failed
from mmpipe.stage import Stage

TIMEOUT_S = 20


def run_guarded(fn: Callable[[], object], timeout: float = TIMEOUT_S):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not finish."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"engine did not finish within {timeout}s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def engine_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("mmpipe-") and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leftover_threads():
    assert not engine_threads()
    yield
    deadline = time.monotonic() + 5
    while engine_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine_threads(), "engine threads outlived the run"


def records(n: int, prefix: str = "r") -> list[Scored]:
    return [Scored(id=f"{prefix}{i}", uri=None, text=None) for i in range(n)]


def tagging(name: str, seen: Counter | None = None, sleep_s: float = 0.0,
            raise_on: str | None = None, lock: threading.Lock | None = None):
    """A stage whose batch function appends its name to each record's path."""
    lock = lock or threading.Lock()

    def setup():
        def fn(batch: Sequence[Record]) -> list[Record]:
            if sleep_s:
                time.sleep(sleep_s)
            if raise_on is not None and any(r.id == raise_on for r in batch):
                raise ValueError(f"cannot handle {raise_on}")
            with lock:
                for r in batch:
                    if seen is not None:
                        seen[r.id] += 1
            for r in batch:
                r.outputs.setdefault("path", []).append(name)
            return list(batch)
        return fn
    return setup


def test_every_record_exactly_once_through_three_stages():
    n = 101  # divisible by none of the batch sizes below
    seen = {name: Counter() for name in ("a", "b", "c")}
    stages = [
        Stage("a", tagging("a", seen["a"]), batch_size=3, concurrency=3),
        Stage("b", tagging("b", seen["b"]), batch_size=5, concurrency=2),
        Stage("c", tagging("c", seen["c"]), batch_size=7, concurrency=4),
    ]
    out: list[Record] = []
    stats = run_guarded(lambda: LocalEngine().run(iter(records(n)), stages, out.extend))

    ids = Counter(r.id for r in out)
    assert set(ids) == {f"r{i}" for i in range(n)} and set(ids.values()) == {1}
    assert all(r.error is None and r.outputs["path"] == ["a", "b", "c"] for r in out)
    for name in seen:
        assert set(seen[name].values()) == {1} and len(seen[name]) == n
    assert stats.items == n
    for s, stage in zip(stats.stages, stages):
        assert s.items == n
        # full batches, plus at most one short batch per worker at the end of the input
        full = -(-n // stage.batch_size)
        assert full <= s.batches <= full + stage.concurrency - 1


def test_empty_input_and_no_stages():
    out: list[Record] = []
    stats = run_guarded(lambda: LocalEngine().run(iter([]), [Stage("a", tagging("a"), 4, 2)],
                                                  out.extend))
    assert out == [] and stats.items == 0 and stats.stages[0].batches == 0
    stats = run_guarded(lambda: LocalEngine().run(iter(records(10)), [], out.extend))
    assert [r.id for r in out] == [f"r{i}" for i in range(10)] and stats.items == 10


def test_a_failing_item_fails_alone_with_the_stage_name():
    n = 30
    after = Counter()
    stages = [
        Stage("first", tagging("first"), batch_size=4, concurrency=2),
        Stage("flaky", tagging("flaky", raise_on="r13"), batch_size=4, concurrency=2),
        Stage("last", tagging("last", after), batch_size=3),
    ]
    out: dict[str, Record] = {}
    run_guarded(lambda: LocalEngine().run(iter(records(n)), stages,
                                          lambda chunk: out.update((r.id, r) for r in chunk)))
    assert len(out) == n
    bad = out.pop("r13")
    assert bad.error == "flaky: ValueError: cannot handle r13"
    assert bad.outputs == {}  # the error twin drops the payload
    assert "r13" not in after  # an error row skips the later stages
    for r in out.values():
        assert r.error is None and r.outputs["path"] == ["first", "flaky", "last"]
    assert len(after) == n - 1


def test_records_with_error_skip_every_stage_but_reach_consume():
    inputs = records(20)
    for i in (0, 7, 19):
        inputs[i] = failed(inputs[i], "read: no such file")
    seen = Counter()
    stages = [Stage("a", tagging("a", seen), batch_size=3, concurrency=2),
              Stage("b", tagging("b", seen), batch_size=2)]
    out: dict[str, Record] = {}
    stats = run_guarded(lambda: LocalEngine().run(iter(inputs), stages,
                                                  lambda chunk: out.update((r.id, r) for r in chunk)))
    assert len(out) == 20 and stats.items == 20
    for i in (0, 7, 19):
        assert out[f"r{i}"].error == "read: no such file"
        assert "path" not in out[f"r{i}"].outputs
    assert sum(seen.values()) == 2 * 17 and not {"r0", "r7", "r19"} & set(seen)
    assert [s.items for s in stats.stages] == [17, 17]  # stage stats count only the work done


def test_a_batch_of_only_errors_is_not_a_call():
    calls = []

    def setup():
        def fn(batch):
            calls.append(len(batch))
            return list(batch)
        return fn

    inputs = [failed(r, "read: gone") for r in records(6)]
    out = []
    stats = run_guarded(lambda: LocalEngine().run(iter(inputs), [Stage("a", setup, 3)], out.extend))
    assert len(out) == 6 and calls == [] and stats.stages[0].batches == 0


def test_backpressure_bounds_records_in_flight():
    n = 600
    stages = [
        Stage("fast", tagging("fast"), batch_size=1, concurrency=2),
        Stage("middle", tagging("middle"), batch_size=4, concurrency=2),
        Stage("slow", tagging("slow", sleep_s=0.004), batch_size=4, concurrency=1),
    ]
    engine = LocalEngine()
    # Where a pulled-but-unconsumed record can be: in a queue (each stage's inbox and the final
    # queue hold chunks of the batch size of the stage before), in a worker's hands (a batch and
    # the rest of a chunk per worker), held by the feeder while it blocks on a full queue, or in
    # consume().
    capacities = [engine._capacity(s) for s in stages] + [engine._capacity(stages[-1])]
    chunks = [stages[0].batch_size] + [s.batch_size for s in stages]
    bound = (sum(c * size for c, size in zip(capacities, chunks)) + stages[0].batch_size
             + sum(2 * s.batch_size * s.concurrency for s in stages) + stages[-1].batch_size)
    assert bound < n / 4  # else the test would show nothing

    counts = {"pulled": 0, "consumed": 0, "max_in_flight": 0}

    def source():
        for r in records(n):
            counts["pulled"] += 1
            counts["max_in_flight"] = max(counts["max_in_flight"],
                                          counts["pulled"] - counts["consumed"])
            yield r

    def consume(chunk):
        counts["consumed"] += len(chunk)

    stats = run_guarded(lambda: engine.run(source(), stages, consume))
    assert counts["pulled"] == counts["consumed"] == stats.items == n
    assert counts["max_in_flight"] <= bound, (counts, bound)
    # the source really did run ahead of the slow stage and was held back by the queues
    assert counts["max_in_flight"] >= capacities[-2] * chunks[-2]


def test_stats_find_the_bottleneck_and_exclude_setup():
    n = 60
    slow_s = 0.005

    def slow_setup():
        time.sleep(0.5)  # model loading: not throughput
        return tagging("load")()

    stages = [
        Stage("load", slow_setup, batch_size=4, concurrency=2),
        Stage("slow", tagging("slow", sleep_s=slow_s), batch_size=1, concurrency=1),
        Stage("sink", tagging("sink"), batch_size=8, concurrency=1),
    ]
    t0 = time.perf_counter()
    stats = run_guarded(lambda: LocalEngine().run(iter(records(n)), stages, lambda chunk: None))
    total = time.perf_counter() - t0

    assert stats.items == n
    by_name = {s.name: s for s in stats.stages}
    assert [by_name[k].items for k in by_name] == [n, n, n]
    assert by_name["slow"].batches == n
    assert by_name["load"].batches >= n // 4 and by_name["sink"].batches >= n // 8
    assert by_name["slow"].busy_s >= n * slow_s * 0.9
    assert by_name["slow"].busy_s <= stats.wall_s * 1.05
    assert stats.bottleneck == "slow"
    assert stats.setup_s >= 0.5
    assert stats.wall_s <= total - 0.45  # setup time is not in wall_s ...
    assert stats.wall_s >= n * slow_s * 0.9  # ... but the work is
    d = stats.to_dict()
    assert d["bottleneck"] == "slow" and d["items"] == n
    assert [s["name"] for s in d["stages"]] == ["load", "slow", "sink"]
    assert d["stages"][1]["busy_share"] > d["stages"][0]["busy_share"]
    assert 0 < d["stages"][1]["busy_share"] <= 1.05


class Boom(RuntimeError):
    pass


def test_exception_in_setup_propagates_and_threads_end():
    def bad_setup():
        raise Boom("weights missing")

    stages = [Stage("ok", tagging("ok"), batch_size=2, concurrency=3),
              Stage("model", bad_setup, batch_size=4, concurrency=2)]
    with pytest.raises(Boom, match="weights missing"):
        run_guarded(lambda: LocalEngine().run(iter(records(1000)), stages, lambda chunk: None))


def test_exception_in_setup_while_other_workers_are_still_loading():
    def slow_setup():
        time.sleep(0.3)
        return tagging("slow")()

    def bad_setup():
        raise Boom("no GPU")

    stages = [Stage("slow", slow_setup, concurrency=2), Stage("model", bad_setup)]
    with pytest.raises(Boom, match="no GPU"):
        run_guarded(lambda: LocalEngine().run(iter(records(10)), stages, lambda chunk: None))


def test_exception_in_consume_propagates_and_threads_end():
    got = []

    def consume(chunk):
        got.extend(r.id for r in chunk)
        if len(got) >= 25:
            raise Boom("disk full")

    def endless():
        i = 0
        while True:  # the engine must stop pulling, not drain the source
            yield Scored(id=f"r{i}", uri=None, text=None)
            i += 1

    stages = [Stage("a", tagging("a"), batch_size=4, concurrency=2),
              Stage("b", tagging("b", sleep_s=0.001), batch_size=3, concurrency=2)]
    with pytest.raises(Boom, match="disk full"):
        run_guarded(lambda: LocalEngine().run(endless(), stages, consume))
    assert 25 <= len(got) < 25 + 3  # nothing consumed after the chunk that raised


def test_exception_in_the_source_propagates():
    def source():
        yield from records(10)
        raise Boom("listing failed")

    stages = [Stage("a", tagging("a"), batch_size=4, concurrency=2)]
    with pytest.raises(Boom, match="listing failed"):
        run_guarded(lambda: LocalEngine().run(source(), stages, lambda chunk: None))


@pytest.mark.parametrize("shape", ["drops_one", "adds_one", "not_a_list"])
def test_wrong_number_of_records_becomes_error_rows(shape):
    def setup():
        def fn(batch):
            if shape == "drops_one":
                return list(batch)[:-1]
            if shape == "adds_one":
                return list(batch) + [batch[0]]
            return None
        return fn

    stages = [Stage("bad", setup, batch_size=4, concurrency=2), Stage("after", tagging("after"), 3)]
    out: dict[str, Record] = {}
    stats = run_guarded(lambda: LocalEngine().run(iter(records(10)), stages,
                                                  lambda chunk: out.update((r.id, r) for r in chunk)))
    assert len(out) == 10 and stats.items == 10
    for r in out.values():
        assert r.error is not None and r.error.startswith("bad: "), r.error
        assert "path" not in r.outputs
    if shape != "not_a_list":
        assert all("records for 1" in r.error for r in out.values())


def test_wrong_count_only_in_batches_is_recovered_item_by_item():
    def setup():
        def fn(batch):
            return list(batch) if len(batch) == 1 else list(batch)[1:]  # loses one in a batch
        return fn

    out: list[Record] = []
    run_guarded(lambda: LocalEngine().run(iter(records(10)), [Stage("s", setup, 4)], out.extend))
    assert sorted(r.id for r in out) == sorted(f"r{i}" for i in range(10))
    assert all(r.error is None for r in out)


def test_failed_records_come_back_from_the_batch_fn():
    def setup():
        def fn(batch):
            return [failed(r, "model: NaN output") if r.id.endswith("3") else r for r in batch]
        return fn

    stages = [Stage("model", setup, batch_size=4), Stage("after", tagging("after"), 2)]
    out: dict[str, Record] = {}
    run_guarded(lambda: LocalEngine().run(iter(records(20)), stages,
                                          lambda chunk: out.update((r.id, r) for r in chunk)))
    assert {k for k, r in out.items() if r.error} == {"r3", "r13"}
    assert out["r3"].error == "model: NaN output" and "path" not in out["r3"].outputs
    assert out["r4"].outputs["path"] == ["after"]


def test_a_stream_trickle_gets_through_without_waiting_for_full_batches():
    """An endless input (a follower): three records then silence. With a Stream they reach
    consume while the input is still open, though every batch size is larger; setting the
    source's stop ends the run, and a failure would set it too."""
    source_stop = threading.Event()
    arrived = threading.Event()
    out: list[Record] = []

    def endless():
        yield from records(3)
        source_stop.wait()

    def consume(chunk: list[Record]) -> None:
        out.extend(chunk)
        if len(out) == 3:
            arrived.set()

    stages = [Stage("a", tagging("a"), batch_size=8, concurrency=2),
              Stage("b", tagging("b"), batch_size=16, concurrency=1)]
    stream = Stream(source_stop=source_stop)
    runner = threading.Thread(target=lambda: LocalEngine().run(endless(), stages, consume, stream), daemon=True)
    runner.start()
    assert arrived.wait(TIMEOUT_S), "a partial batch waited for input that never came"
    assert runner.is_alive() and stream.stats.stages[0].items == 3  # figures readable while running
    source_stop.set()
    runner.join(TIMEOUT_S)
    assert not runner.is_alive()
    assert sorted(r.id for r in out) == ["r0", "r1", "r2"]
    assert all(r.outputs["path"] == ["a", "b"] for r in out)


def test_a_failing_stream_stops_its_source_waiting_for_input():
    """consume fails while the source waits for input that may never come: the run ends (the
    feed thread is joined) because the engine sets the source's stop."""
    source_stop = threading.Event()

    def endless():
        yield from records(2)
        source_stop.wait()

    def consume(chunk: list[Record]) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_guarded(lambda: LocalEngine().run(endless(), [Stage("a", tagging("a"), 4)], consume,
                                              Stream(source_stop=source_stop)))
    assert source_stop.is_set()
