"""Latency-aware admission: the batcher's batch-time estimate, the delay budget (three batches'
time by default, or ``max_queue_delay_ms``), and a batcher whose model takes a known time per
batch, refusing what would wait past the budget."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from mmpipe.serve.batch_times import BatchTimes
from mmpipe.serve.batcher import BUDGET_BATCHES, BUDGET_FLOOR_S, DynamicBatcher, Overloaded
from mmpipe.serve.config import Batching
from mmpipe.serve.metrics import ServeMetrics
from mmpipe.serve.served import ServedModel

FIXED_S, PER_ITEM_S = 0.02, 0.01  # the slow model: a batch of n takes 20 ms + 10 ms·n


def slow_model() -> ServedModel:
    def predict(batch: list) -> list:
        time.sleep(FIXED_S + PER_ITEM_S * len(batch))
        return list(batch)

    return ServedModel("slow", prepare=list, predict=predict)


@contextlib.asynccontextmanager
async def running(cfg: Batching, model: ServedModel | None = None, timed: bool = True):
    """A started batcher of ``model`` (default: the slow one), closed afterwards; ``timed``: its
    batch times first learnt on batches of several sizes, so that the estimate has both costs."""
    batcher = DynamicBatcher(model or slow_model(), cfg, ServeMetrics())
    batcher.start()
    try:
        if timed:
            for n in (1, 4, 2, 4):
                assert await batcher.submit(list(range(n))) == list(range(n))
        yield batcher
    finally:
        await asyncio.to_thread(batcher.close)


def test_batch_times_fit_a_fixed_and_a_per_item_cost():
    times = BatchTimes()
    assert times.seconds(4) is None
    for n in [1, 8, 3, 6, 2, 8, 5] * 5:
        times.observe(n, FIXED_S + PER_ITEM_S * n)
    assert times.seconds(16) == pytest.approx(FIXED_S + PER_ITEM_S * 16)
    same = BatchTimes()  # one size only: no slope to fit, so all of it is taken as fixed
    for _ in range(5):
        same.observe(4, 0.08)
    assert same.seconds(32) == pytest.approx(0.08)


def test_requests_that_would_wait_past_the_budget_are_refused_while_items_fit():
    budget_s = 0.2
    cfg = Batching(max_batch_size=4, max_wait_ms=0, max_queue=1000, max_queue_delay_ms=budget_s * 1000)

    async def scenario():
        async with running(cfg) as batcher:
            async def timed(i: int) -> float | Overloaded:
                t0 = time.monotonic()
                try:
                    await batcher.submit([i])
                except Overloaded as exc:
                    return exc
                return time.monotonic() - t0

            # 200 items at once: the queue has room for all, but they are 50 batches (~3 s).
            outcomes = await asyncio.gather(*(timed(i) for i in range(200)))
            recovered = await batcher.submit(["again"])
            return outcomes, recovered, batcher.admitted

    outcomes, recovered, left = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    waits = [o for o in outcomes if not isinstance(o, Overloaded)]
    assert waits and refused and len(refused) + len(waits) == 200
    assert all("estimated wait" in str(exc) for exc in refused)
    # About the budget's worth is admitted (~12 items); a generous bound, far below the burst's 3 s.
    assert max(waits) < 5 * budget_s
    assert recovered == ["again"] and left == 0


def test_max_queue_is_a_hard_cap_whatever_the_budget():
    cfg = Batching(max_batch_size=4, max_wait_ms=0, max_queue=12, max_queue_delay_ms=600_000)

    async def scenario():
        async with running(cfg) as batcher:
            return await asyncio.gather(*(batcher.submit([i]) for i in range(16)), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert len(refused) == 4 and all("limit 12" in str(exc) for exc in refused)


def test_the_default_budget_is_three_full_batches_as_timed_within_a_floor():
    batcher = DynamicBatcher(slow_model(), Batching(max_batch_size=8), ServeMetrics())
    assert batcher.delay_budget() is None  # nothing timed yet: items alone bound admission
    for n in [1, 8, 3, 6, 2, 8, 5] * 5:
        batcher.batch_times.observe(n, FIXED_S + PER_ITEM_S * n)
    assert batcher.delay_budget() == pytest.approx(BUDGET_BATCHES * (FIXED_S + PER_ITEM_S * 8))
    fast = DynamicBatcher(slow_model(), Batching(max_batch_size=8), ServeMetrics())
    fast.batch_times.observe(8, 0.001)
    assert fast.delay_budget() == BUDGET_FLOOR_S
    fixed = DynamicBatcher(slow_model(), Batching(max_batch_size=8, max_queue_delay_ms=40), ServeMetrics())
    fixed.batch_times.observe(8, 1.0)
    assert fixed.delay_budget() == pytest.approx(0.04)  # an explicit budget overrides the default


def test_the_default_config_refuses_by_estimated_wait():
    cfg = Batching(max_batch_size=4, max_wait_ms=0, max_queue=1000)  # no max_queue_delay_ms

    async def scenario():
        async with running(cfg) as batcher:
            # 200 items at once: room for all in the queue, but 50 batches (~3 s) of work.
            return await asyncio.gather(*(batcher.submit([i]) for i in range(200)), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert refused and len(refused) < 200
    assert all("delay budget (3 batches' time)" in str(exc) for exc in refused)


def test_before_any_batch_is_timed_only_the_hard_cap_refuses():
    cfg = Batching(max_batch_size=4, max_queue=64)  # the default budget, nothing timed yet

    async def scenario():
        batcher = DynamicBatcher(slow_model(), cfg, ServeMetrics())  # not started: nothing runs
        waiting = [asyncio.create_task(batcher.submit([i])) for i in range(64)]
        await asyncio.sleep(0)
        admitted, refusal = batcher.admitted, batcher.refusal()
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        return admitted, refusal

    admitted, refusal = asyncio.run(scenario())
    assert admitted == 64 and refusal == "64 items already queued (limit 64)"


def test_the_door_holds_a_place_until_the_request_is_admitted():
    batcher = DynamicBatcher(slow_model(), Batching(max_batch_size=4, max_queue=2), ServeMetrics())

    async def request(i: int, body_read: asyncio.Event) -> list:
        with batcher.door_place():  # let in at the door; its body is still being read
            await body_read.wait()
            return await batcher.submit([i])

    async def scenario():
        batcher.start()
        try:
            body_read = asyncio.Event()
            requests = [asyncio.create_task(request(i, body_read)) for i in range(2)]
            await asyncio.sleep(0)
            while_reading = batcher.refusal()
            body_read.set()
            return while_reading, await asyncio.gather(*requests), batcher.held
        finally:
            await asyncio.to_thread(batcher.close)

    while_reading, answers, held = asyncio.run(scenario())
    assert while_reading == "2 items already queued (limit 2)"
    assert answers == [[0], [1]] and held == 0  # each place became its own admission



def test_a_finished_batch_leaves_the_estimate_before_its_requests_resume():
    # On a busy event loop, requests resume (and leave `admitted`) a while after their batch
    # finished; meanwhile the replicas have no work left, and the estimate must say so.
    cfg = Batching(max_batch_size=4, max_wait_ms=0, max_queue=64)

    async def scenario():
        async with running(cfg) as batcher:
            idle = batcher.estimated_wait(1)
            waiting = [asyncio.create_task(batcher.submit([i])) for i in range(8)]
            await asyncio.sleep(0)
            queued = batcher.estimated_wait(1)
            time.sleep(1.0)  # the loop blocked: two batches (~0.12 s) finish, nobody resumes
            stale = batcher.admitted, batcher.estimated_wait(1)
            await asyncio.gather(*waiting)
            return idle, queued, stale, (batcher.admitted, batcher.unfinished)

    idle, queued, (admitted, after_batches), drained = asyncio.run(scenario())
    assert queued > 2 * idle  # eight items ahead: two batches
    assert admitted == 8 and after_batches < 1.5 * idle  # its own batch alone (as newly timed)
    assert drained == (0, 0)


def test_a_request_bigger_than_a_batch_runs_on_several_replicas_at_once():
    ran = []  # (thread, start, end) of each batch

    def predict(batch: list) -> list:
        t0 = time.monotonic()
        time.sleep(0.1)
        ran.append((threading.current_thread().name, t0, time.monotonic()))
        return list(batch)

    cfg = Batching(max_batch_size=4, max_wait_ms=0, replicas=2)

    async def scenario():
        async with running(cfg, ServedModel("slow", prepare=list, predict=predict), timed=False) as batcher:
            return await batcher.submit(list(range(8)))

    assert asyncio.run(scenario()) == list(range(8))  # in order, whichever replica ran each half
    (first, start1, end1), (second, start2, end2) = ran
    assert first != second and start1 < end2 and start2 < end1  # two replicas, overlapping


def test_a_request_of_several_batches_is_not_refused_for_its_own_size():
    # Its own batches are the work it asked for: counted against the budget, every request of
    # more than a few batches would be refused whenever anything else ran.
    cfg = Batching(max_batch_size=4, max_wait_ms=0, max_queue=1000)

    async def scenario():
        async with running(cfg) as batcher:
            other = asyncio.create_task(batcher.submit(list(range(4))))
            await asyncio.sleep(0.01)
            big = await batcher.submit(list(range(12)))
            return big, await other

    big, other = asyncio.run(scenario())
    assert big == list(range(12)) and other == list(range(4))


def test_a_queue_is_shared_with_a_replica_that_frees_at_the_same_time():
    # Both replicas run a batch; eight requests queue behind them. The first replica to finish
    # used to take all eight (one batch of 8, 100 ms) while the other, free a moment later,
    # found none; now each takes about half, and the last of them is answered ~40 ms sooner.
    cfg = Batching(max_batch_size=16, max_wait_ms=0, replicas=2)

    async def scenario():
        async with running(cfg) as batcher:
            busy = [asyncio.create_task(batcher.submit([f"busy{i}"])) for i in range(2)]
            await asyncio.sleep(0.01)  # each replica took one (an idle replica shares them too)
            queued = [asyncio.create_task(batcher.submit([i])) for i in range(8)]
            await asyncio.gather(*busy, *queued)
            return list(batcher.batch_sizes)[4:]  # after the four that timed the model

    sizes = asyncio.run(scenario())
    # Halves, in time: the replica whose batch ends a few ms later takes a little less.
    assert sizes[:2] == [1, 1] and len(sizes) == 4 and sum(sizes[2:]) == 8 and max(sizes[2:]) <= 6


def test_a_lone_replica_and_an_untimed_model_take_all_that_waits():
    async def scenario(cfg: Batching, timed: bool):
        async with running(cfg, timed=timed) as batcher:
            busy = asyncio.create_task(batcher.submit(["busy"]))
            await asyncio.sleep(0.01)
            await asyncio.gather(busy, *(batcher.submit([i]) for i in range(8)))
            return list(batcher.batch_sizes)[4 if timed else 0:]

    assert asyncio.run(scenario(Batching(max_batch_size=16, max_wait_ms=0), True)) == [1, 8]
    # No batch timed yet: nothing to split by.
    two = Batching(max_batch_size=16, max_wait_ms=0, replicas=2)
    assert asyncio.run(scenario(two, False))[-1] == 8


class _Media:
    """An item prepared in a thread of its own, as images are."""

    data = b"media"


def test_a_request_waits_for_one_being_prepared_only_where_no_replica_is_free():
    def prepare(items: list) -> list:
        if any(isinstance(item, _Media) for item in items):
            time.sleep(0.15)  # a slow decode
        return list(items)

    model = ServedModel("slow", prepare=prepare, predict=slow_model().predict)

    async def scenario(replicas: int):
        cfg = Batching(max_batch_size=16, max_wait_ms=1000, replicas=replicas)
        async with running(cfg, model) as batcher:
            media = asyncio.create_task(batcher.submit([_Media()]))
            await asyncio.sleep(0.01)  # being prepared
            t0 = time.monotonic()
            await batcher.submit(["text"])
            waited = time.monotonic() - t0
            await media
            return waited, list(batcher.batch_sizes)[4:]

    # One replica: the text waits for the media to be prepared, and they share a batch.
    waited, sizes = asyncio.run(scenario(1))
    assert waited > 0.12 and sizes == [2]
    # Two: the other replica is free to take the media when it is ready; the text runs at once.
    waited, sizes = asyncio.run(scenario(2))
    assert waited < 0.1 and sizes == [1, 1]
