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


# ----- fairness between principals ---------------------------------------------------------------


def principal_items(principal: str, lengths: list[int]) -> list[EmbeddingItem]:
    return make_items(lengths, RequestTicket(principal))


def principals_of(batch: list[EmbeddingItem]) -> list[str]:
    return sorted(item.principal for item in batch)


@async_test
async def test_one_item_of_a_light_principal_goes_in_the_next_batch() -> None:
    q = queue(batch=4, max_queue=100)
    q.put(principal_items("heavy", [3] * 40))
    q.put(principal_items("light", [3]))
    assert principals_of(q.take_batch()) == ["heavy", "heavy", "heavy", "light"]
    assert principals_of(q.take_batch()) == ["heavy"] * 4


@async_test
async def test_busy_principals_share_each_batch_equally_over_time() -> None:
    q = queue(batch=4, max_queue=100)
    for principal in ("a", "b", "c"):
        q.put(principal_items(principal, [2] * 30))
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(6):  # 24 slots: 8 each, the odd slot rotating between batches
        for item in q.take_batch():
            counts[item.principal] += 1
    assert counts == {"a": 8, "b": 8, "c": 8}


@async_test
async def test_each_principal_keeps_its_oldest_item_and_length_grouping() -> None:
    q = queue(batch=4, max_queue=100)
    heavy = principal_items("heavy", [10, 2, 11, 3, 12])
    q.put(heavy)
    light = principal_items("light", [7, 1])
    q.put(light)
    batch = q.take_batch()
    assert heavy[0] in batch and light[0] in batch
    assert sorted(i.length for i in batch if i.principal == "heavy") == [10, 11]
    assert sorted(i.length for i in batch if i.principal == "light") == [1, 7]


@async_test
async def test_the_token_budget_holds_for_a_shared_batch() -> None:
    q = queue(batch=8, tokens=40, max_queue=100)
    q.put(principal_items("short", [2] * 10))
    q.put(principal_items("long", [10] * 10))
    batch = q.take_batch()
    assert len(batch) * max(item.length for item in batch) <= 40
    assert {item.principal for item in batch} == {"short", "long"}
    next_batch = q.take_batch()  # the next batch starts with the other principal
    assert len(next_batch) * max(item.length for item in next_batch) <= 40


@async_test
async def test_a_principal_is_refused_past_its_share_while_others_get_in() -> None:
    q = BatchQueue(max_batch_size=4, max_batch_tokens=1000, max_queue=4, principal_share=0.5)
    q.put(principal_items("heavy", [1] * 100))
    q.put(principal_items("heavy", [1] * 100))
    with pytest.raises(OverloadedError, match="share"):
        q.put(principal_items("heavy", [1]))
    q.put(principal_items("light", [1]))
    assert (q.waiting_for("heavy"), q.waiting_for("light"), q.requests_waiting) == (2, 1, 3)
    while q.take_batch():
        pass
    assert q.requests_waiting == 0 and q.waiting_for("heavy") == 0
    q.put(principal_items("heavy", [1]))


@async_test
async def test_retries_go_back_to_the_front_of_their_principals() -> None:
    q = queue(batch=2, max_queue=100)
    q.put(principal_items("a", [1, 1, 1]))
    q.put(principal_items("b", [1, 1, 1]))
    first = q.take_batch()
    q.put_front(first)
    assert q.take_batch() == first
