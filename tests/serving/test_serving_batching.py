"""BatchQueue: batch size and token budget, length sorting, fairness, bounds."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from helpers import async_test

from greenroom.errors import OverloadedError, ServiceUnavailableError
from greenroom.serving.batching import BatchQueue
from greenroom.serving.items import EmbeddingItem, RequestTicket


def make_items(lengths: list[int], ticket: RequestTicket | None = None) -> list[EmbeddingItem]:
    loop = asyncio.get_running_loop()
    shared = ticket or RequestTicket()
    return [
        EmbeddingItem(np.arange(n, dtype=np.int64), loop.create_future(), shared) for n in lengths
    ]


def queue(batch: int = 4, tokens: int = 1000, max_queue: int = 10) -> BatchQueue:
    return BatchQueue(max_batch_size=batch, max_batch_tokens=tokens, max_queue=max_queue)


@async_test
async def test_a_batch_holds_at_most_max_batch_size_items() -> None:
    q = queue(batch=4)
    q.put(make_items([3] * 10))
    assert len(q.take_batch()) == 4
    assert len(q) == 6


@async_test
async def test_padded_tokens_stay_within_the_budget() -> None:
    q = queue(batch=32, tokens=20)
    q.put(make_items([5] * 10))
    batch = q.take_batch()
    assert len(batch) * max(item.length for item in batch) <= 20
    assert len(batch) == 4


@async_test
async def test_an_item_over_the_budget_still_goes_alone() -> None:
    q = queue(batch=8, tokens=10)
    q.put(make_items([50, 2]))
    assert [item.length for item in q.take_batch()] == [50]


@async_test
async def test_batches_group_similar_lengths_and_always_include_the_oldest() -> None:
    q = queue(batch=2)
    for length in [10, 2, 11, 3]:
        q.put(make_items([length]))
    first = sorted(item.length for item in q.take_batch())
    second = sorted(item.length for item in q.take_batch())
    assert first == [10, 11]  # the oldest (10) with its nearest length
    assert second == [2, 3]


@async_test
async def test_items_whose_client_left_are_dropped_before_compute() -> None:
    q = queue()
    items = make_items([3, 3, 3])
    q.put(items)
    items[1].future.cancel()
    batch = q.take_batch()
    assert items[1] not in batch
    assert len(batch) == 2


@async_test
async def test_the_bound_counts_requests_not_items() -> None:
    q = queue(batch=4, max_queue=2)
    q.put(make_items([1] * 5))
    q.put(make_items([1] * 5))
    with pytest.raises(OverloadedError, match="full"):
        q.put(make_items([1]))
    while q.take_batch():
        pass
    assert q.requests_waiting == 0
    q.put(make_items([1]))


@async_test
async def test_retries_go_to_the_front_and_are_never_refused() -> None:
    q = queue(batch=1, max_queue=1)
    q.put(make_items([4]))
    retry = make_items([7])
    q.put_front(retry)  # the queue is full, yet the retry is taken
    assert q.take_batch() == retry
    assert q.requests_waiting == 1


@async_test
async def test_get_batch_waits_for_items() -> None:
    q = queue()
    waiter = asyncio.create_task(q.get_batch())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    q.put(make_items([2]))
    assert len(await asyncio.wait_for(waiter, 5)) == 1


@async_test
async def test_fail_all_fails_every_waiting_future() -> None:
    q = queue()
    items = make_items([1, 2])
    q.put(items)
    q.fail_all(ServiceUnavailableError("gone"))
    assert all(isinstance(i.future.exception(), ServiceUnavailableError) for i in items)
    assert q.requests_waiting == 0
