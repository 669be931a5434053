"""A bounded queue of embedding items that hands out length-sorted batches.

One deque, one event. `get_batch` takes a window of the oldest items, sorts it by length and cuts
a batch around the oldest item (so no item starves) within the batch size and the padded-token
budget; items whose client left are dropped before any compute is spent.
"""

from __future__ import annotations

import asyncio
from collections import deque

from greenroom.errors import GreenroomError, OverloadedError
from greenroom.serving.items import EmbeddingItem

WINDOW_BATCHES = 4


class BatchQueue:
    def __init__(self, *, max_batch_size: int, max_batch_tokens: int, max_queue: int) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.requests_waiting = 0
        self._items: deque[EmbeddingItem] = deque()
        self._not_empty = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def is_full(self) -> bool:
        return self.requests_waiting >= self.max_queue

    def put(self, items: list[EmbeddingItem]) -> None:
        """Enqueue one request's items, or refuse the request when the queue is full."""
        if self.is_full():
            raise OverloadedError(
                f"The queue for this model is full ({self.max_queue} requests waiting); "
                "retry shortly."
            )
        self._track(items)
        self._items.extend(items)
        self._not_empty.set()

    def put_front(self, items: list[EmbeddingItem]) -> None:
        """Put items back at the head (a retry after a replica failure); never refused."""
        self._track(items)
        self._items.extendleft(reversed(items))
        self._not_empty.set()

    def _track(self, items: list[EmbeddingItem]) -> None:
        for item in items:
            if item.ticket.waiting == 0:
                self.requests_waiting += 1
            item.ticket.waiting += 1

    def _untrack(self, item: EmbeddingItem) -> None:
        item.ticket.waiting -= 1
        if item.ticket.waiting == 0:
            self.requests_waiting -= 1

    async def get_batch(self) -> list[EmbeddingItem]:
        """Wait for items and take the next batch."""
        while True:
            while not self._items:
                self._not_empty.clear()
                await self._not_empty.wait()
            batch = self.take_batch()
            if batch:
                return batch

    def take_batch(self) -> list[EmbeddingItem]:
        window: list[EmbeddingItem] = []
        while self._items and len(window) < self.max_batch_size * WINDOW_BATCHES:
            item = self._items.popleft()
            if item.is_abandoned():
                self._untrack(item)
            else:
                window.append(item)
        if not window:
            return []
        chosen = self._choose(window)
        batch = [window[i] for i in chosen]
        rest = [item for i, item in enumerate(window) if i not in chosen]
        self._items.extendleft(reversed(rest))
        for item in batch:
            self._untrack(item)
        return batch

    def _choose(self, window: list[EmbeddingItem]) -> set[int]:
        """Indices of a batch that contains the oldest item (index 0) and grows, one neighbour in
        length order at a time, towards whichever side adds the fewest padding tokens."""
        order = sorted(range(len(window)), key=lambda i: window[i].length)
        start = order.index(0)
        end = start + 1  # the batch is order[start:end]
        longest = window[0].length
        while end - start < self.max_batch_size:
            count = end - start
            options = []
            if start > 0 and (count + 1) * longest <= self.max_batch_tokens:
                options.append((longest - window[order[start - 1]].length, -1))
            if end < len(order):
                right = window[order[end]].length
                if (count + 1) * right <= self.max_batch_tokens:
                    options.append((count * (right - longest), 1))
            if not options:
                break
            _, side = min(options)
            if side < 0:
                start -= 1
            else:
                longest = window[order[end]].length
                end += 1
        return set(order[start:end])

    def fail_all(self, error: GreenroomError) -> None:
        while self._items:
            item = self._items.popleft()
            self._untrack(item)
            if not item.future.done():
                item.future.set_exception(error)
