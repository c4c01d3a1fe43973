"""Length-aware batching: the ordering function, and a batcher grouping queued texts by length
while the oldest request always goes first."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from mmpipe.serve.batcher import DynamicBatcher
from mmpipe.serve.config import Batching
from mmpipe.serve.length_groups import closest_first, padding_tokens, text_length
from mmpipe.serve.metrics import ServeMetrics
from mmpipe.serve.served import ServedModel


@dataclass
class Text:
    tokens: np.ndarray | None


def texts(*lengths: int) -> list[Text]:
    return [Text(np.zeros(n, dtype=np.int64)) for n in lengths]


def test_closest_lengths_first_ties_and_untokenized_in_arrival_order():
    assert closest_first(100, [400, 98, None, 102, 10, 100]) == [5, 1, 3, 4, 0, 2]
    assert closest_first(None, [400, 98, None]) == [0, 1, 2]  # an image first: arrival order


def test_a_request_is_as_long_as_its_longest_text_and_padding_is_counted():
    assert text_length(texts(3, 9, 5)) == 9
    assert text_length([Text(None)]) is None
    assert padding_tokens(texts(10, 500, 490)) == (1000, 490 + 10)
    assert padding_tokens([Text(None)]) == (0, 0)


def test_queued_texts_are_batched_with_their_closest_lengths_and_the_oldest_never_waits():
    ran: list[list[int]] = []

    def predict(batch: list) -> list:
        ran.append([len(r.tokens) for r in batch])
        return batch

    model = ServedModel("texts", prepare=lambda items: texts(*items), predict=predict)
    batcher = DynamicBatcher(model, Batching(max_batch_size=2, max_wait_ms=0), ServeMetrics())

    async def scenario():
        # Queued before the replica starts, so that it chooses among all of them.
        waiting = [asyncio.create_task(batcher.submit([n])) for n in (10, 500, 12, 480, 11, 490, 505)]
        await asyncio.sleep(0)
        batcher.start()
        try:
            return await asyncio.gather(*waiting)
        finally:
            await asyncio.to_thread(batcher.close)

    answers = asyncio.run(scenario())
    assert [len(a[0].tokens) for a in answers] == [10, 500, 12, 480, 11, 490, 505]
    # Each batch starts with the oldest waiting request: 12 goes with 480 (the closest left)
    # rather than waiting for a better match.
    assert ran == [[10, 11], [500, 505], [12, 480], [490]]
    padding = batcher.metrics.registry.get_sample_value("mmpipe_batch_tokens_total",
                                                        {"model": "texts", "kind": "padding"})
    assert padding == 1 + 5 + 468
