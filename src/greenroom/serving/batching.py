"""A bounded queue of embedding items that hands out length-sorted batches, shared fairly.

Items wait in one deque per principal (the token that sent them). `get_batch` hands a batch's
slots out in turns, one item per principal per turn (round robin over the principals with items
waiting), starting after the principal that had the last turn of the previous batch: a client
with one sentence waits for the batches already out, never for another client's backlog.
Within a principal, its part of a batch holds its oldest item (so no item starves) and grows,
one neighbour in length order at a time, towards the side that adds the fewest padded tokens,
over a window of its oldest items; the whole batch stays within the batch size and the padded-
token budget. Items whose client left are dropped before any compute is spent.

The bounds count requests waiting: `max_queue` for the model, and a principal's share of it
(`principal_share`), so the client that floods a model gets the 429 and the others do not.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

from greenroom.errors import GreenroomError, OverloadedError
from greenroom.serving.items import EmbeddingItem

WINDOW_BATCHES = 4


class BatchQueue:
    def __init__(
        self,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_queue: int,
        principal_share: float = 1.0,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.principal_share = principal_share
        self.requests_waiting = 0
        self._waiting: dict[str, int] = {}  # requests waiting, by principal
        # by principal, in turn order (a dict keeps insertion order; the rotation re-inserts)
        self._queues: dict[str, deque[EmbeddingItem]] = {}
        self._size = 0
        self._not_empty = asyncio.Event()

    def __len__(self) -> int:
        return self._size

    def is_full(self) -> bool:
        return self.requests_waiting >= self.max_queue

    def principal_limit(self) -> int:
        """How many requests one principal may have waiting."""
        return max(1, math.floor(self.principal_share * self.max_queue))

    def waiting_for(self, principal: str) -> int:
        return self._waiting.get(principal, 0)

    def put(self, items: list[EmbeddingItem]) -> None:
        """Enqueue one request's items, or refuse the request when the queue is full or its
        principal holds its whole share of it."""
        if self.is_full():
            raise OverloadedError(
                f"The queue for this model is full ({self.max_queue} requests waiting); "
                "retry shortly."
            )
        principal = items[0].principal if items else ""
        if (waiting := self.waiting_for(principal)) >= self.principal_limit():
            raise OverloadedError(
                f"This token already has {waiting} requests waiting for this model, its share "
                "of the queue; retry when some have been answered."
            )
        self._track(items)
        for item in items:
            self._queue_of(item.principal).append(item)
        self._grew(len(items))

    def put_front(self, items: list[EmbeddingItem]) -> None:
        """Put items back at the head of their principals' queues (a retry after a replica
        failure), in their order; never refused."""
        self._track(items)
        for item in reversed(items):
            self._queue_of(item.principal).appendleft(item)
        self._grew(len(items))

    def _queue_of(self, principal: str) -> deque[EmbeddingItem]:
        if principal not in self._queues:
            self._queues[principal] = deque()
        return self._queues[principal]

    def _grew(self, count: int) -> None:
        self._size += count
        if self._size:
            self._not_empty.set()

    def _track(self, items: list[EmbeddingItem]) -> None:
        for item in items:
            if item.ticket.waiting == 0:
                self.requests_waiting += 1
                self._waiting[item.principal] = self.waiting_for(item.principal) + 1
            item.ticket.waiting += 1

    def _untrack(self, item: EmbeddingItem) -> None:
        item.ticket.waiting -= 1
        if item.ticket.waiting == 0:
            self.requests_waiting -= 1
            left = self._waiting[item.principal] - 1
            if left:
                self._waiting[item.principal] = left
            else:
                del self._waiting[item.principal]

    async def get_batch(self) -> list[EmbeddingItem]:
        """Wait for items and take the next batch."""
        while True:
            while not self._size:
                self._not_empty.clear()
                await self._not_empty.wait()
            batch = self.take_batch()
            if batch:
                return batch

    def take_batch(self) -> list[EmbeddingItem]:
        parts = [part for principal in list(self._queues) if (part := self._window(principal))]
        batch: list[EmbeddingItem] = []
        longest = 0
        last_turn = None
        turns = list(parts)
        while turns and len(batch) < self.max_batch_size:
            for part in list(turns):
                if len(batch) >= self.max_batch_size:
                    break
                item = part.take(len(batch), longest, self.max_batch_tokens)
                if item is None:  # nothing of it fits any more: the budget only tightens
                    turns.remove(part)
                    continue
                batch.append(item)
                longest = max(longest, item.length)
                last_turn = part.principal
        for part in parts:  # what was not taken goes back, in its order
            self._queues[part.principal].extendleft(reversed(part.rest()))
        self._size -= len(batch)
        if last_turn is not None:
            self._rotate_after(last_turn)
        for principal in [p for p, queue in self._queues.items() if not queue]:
            del self._queues[principal]
        for item in batch:
            self._untrack(item)
        return batch

    def _window(self, principal: str) -> _Part | None:
        """The oldest items of a principal that are still wanted, taken out of its queue."""
        queue = self._queues[principal]
        window: list[EmbeddingItem] = []
        while queue and len(window) < self.max_batch_size * WINDOW_BATCHES:
            item = queue.popleft()
            self._size -= 1
            if item.is_abandoned():
                self._untrack(item)
            else:
                window.append(item)
        self._size += len(window)  # counted again while they wait
        return _Part(principal, window) if window else None

    def _rotate_after(self, principal: str) -> None:
        """The principals up to and including `principal` take their next turns last."""
        order = list(self._queues)
        cut = order.index(principal) + 1
        self._queues = {p: self._queues[p] for p in order[cut:] + order[:cut]}

    def fail_all(self, error: GreenroomError) -> None:
        for queue in self._queues.values():
            while queue:
                item = queue.popleft()
                self._untrack(item)
                if not item.future.done():
                    item.future.set_exception(error)
        self._queues.clear()
        self._size = 0


class _Part:
    """One principal's share of the batch being formed: its window sorted by length, and the
    span `order[start:end]` it has put in the batch so far (always holding its oldest item)."""

    def __init__(self, principal: str, window: list[EmbeddingItem]) -> None:
        self.principal = principal
        self.window = window
        self.order = sorted(range(len(window)), key=lambda i: window[i].length)
        self.start = self.order.index(0)
        self.end = self.start

    def take(self, count: int, longest: int, max_tokens: int) -> EmbeddingItem | None:
        """Add the next item to a batch of `count` items padded to `longest`: first the oldest,
        then the neighbour that adds the fewest padded tokens; None when none fits."""
        if self.end == self.start:
            oldest = self.window[0]
            if count and (count + 1) * max(longest, oldest.length) > max_tokens:
                return None  # an item over the budget still goes, alone
            self.end += 1
            return oldest
        options = []
        if self.start > 0 and (count + 1) * longest <= max_tokens:
            shorter = self.window[self.order[self.start - 1]].length
            options.append((longest - shorter, -1))
        if self.end < len(self.order):
            right = self.window[self.order[self.end]].length
            padded = max(longest, right)
            if (count + 1) * padded <= max_tokens:
                options.append((count * (padded - longest) + padded - right, 1))
        if not options:
            return None
        _, side = min(options)
        if side < 0:
            self.start -= 1
            return self.window[self.order[self.start]]
        self.end += 1
        return self.window[self.order[self.end - 1]]

    def rest(self) -> list[EmbeddingItem]:
        taken = set(self.order[self.start : self.end])
        return [item for i, item in enumerate(self.window) if i not in taken]
