"""Latency-aware admission (``max_queue_delay_ms``): the batcher's batch-time estimate, and a
batcher whose model takes a known time per batch, refusing what would wait past the budget."""

from __future__ import annotations

import asyncio
import time

import pytest

from mmpipe.serve.batch_times import BatchTimes
from mmpipe.serve.batcher import DynamicBatcher, Overloaded
from mmpipe.serve.config import Batching
from mmpipe.serve.metrics import ServeMetrics
from mmpipe.serve.served import ServedModel

FIXED_S, PER_ITEM_S = 0.02, 0.01  # the slow model: a batch of n takes 20 ms + 10 ms·n


def slow_model() -> ServedModel:
    def predict(batch: list) -> list:
        time.sleep(FIXED_S + PER_ITEM_S * len(batch))
        return list(batch)

    return ServedModel("slow", prepare=list, predict=predict)


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
        batcher = DynamicBatcher(slow_model(), cfg, ServeMetrics())
        batcher.start()
        try:
            for n in (1, 4, 2, 4):  # batches of several sizes timed: the estimate has both costs
                assert await batcher.submit(list(range(n))) == list(range(n))

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
        finally:
            await asyncio.to_thread(batcher.close)

    outcomes, recovered, left = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    waits = [o for o in outcomes if not isinstance(o, Overloaded)]
    assert waits and refused and len(refused) + len(waits) == 200
    assert all("estimated wait" in str(exc) for exc in refused)
    # About the budget's worth is admitted (~12 items); a generous bound, far below the burst's 3 s.
    assert max(waits) < 5 * budget_s
    assert recovered == ["again"] and left == 0


def test_without_a_budget_only_items_bound_admission():
    cfg = Batching(max_batch_size=4, max_wait_ms=0, max_queue=12)

    async def scenario():
        batcher = DynamicBatcher(slow_model(), cfg, ServeMetrics())
        batcher.start()
        try:
            await batcher.submit([0])
            return await asyncio.gather(*(batcher.submit([i]) for i in range(16)), return_exceptions=True)
        finally:
            await asyncio.to_thread(batcher.close)

    outcomes = asyncio.run(scenario())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert len(refused) == 4 and all("limit 12" in str(exc) for exc in refused)
