"""Change signals: wake the parts of this process that wait on the store.

Writers call `notify(topic)` after committing (from any thread); waiters call
`await wait(topic, timeout)` and re-read the store when it returns. Waiters never sleep longer
than a second between reads, so a change whose signal was lost is still seen within a second.
A loop that reads the store and then waits holds a `listen(topic)` across both: a notification
that comes while it reads is kept and ends its next wait at once (with `wait` alone, it would
come before the wait began and be lost, costing up to that second).

On PostgreSQL, `greenroom.notify.PostgresBridge` carries signals between processes: it forwards
every `notify` as `NOTIFY greenroom, '<topic>'` and turns the notifications of other processes
into local wake-ups (`wake`, which forwards nothing, so nothing echoes back).
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum

MAX_WAIT_S = 1.0


class Topic(StrEnum):
    TASKS = "tasks"  # a task was created or canceled: workers claim
    DESIRED = "desired"  # desired replicas changed: the supervisor reconciles
    REPORTED = "reported"  # reported replica state changed: the worker's waits re-check
    LIVE = "live"  # a live-revision pointer changed: routers follow
    ROUTERS = "routers"  # a router report changed: drains re-check


Forwarder = Callable[[tuple[Topic, ...]], None]
"""Carries a notification beyond this process; called from the notifying thread, must not block."""


class Signals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Topic, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = (
            defaultdict(set)
        )
        self._forwarders: list[Forwarder] = []

    def notify(self, *topics: Topic) -> None:
        """Wake every waiter on these topics, here and (with a forwarder) in other processes;
        safe from any thread. Call it after the commit whose change the waiters should see."""
        self.wake(*topics)
        for forward in list(self._forwarders):
            forward(topics)

    def wake(self, *topics: Topic) -> None:
        """Wake this process's waiters on these topics only; safe from any thread."""
        with self._lock:
            waiters = [w for topic in topics for w in self._waiters[topic]]
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    def forward_to(self, forwarder: Forwarder) -> None:
        """Also hand every `notify` to `forwarder` (the PostgreSQL bridge)."""
        self._forwarders.append(forwarder)

    def stop_forwarding(self, forwarder: Forwarder) -> None:
        if forwarder in self._forwarders:
            self._forwarders.remove(forwarder)

    async def wait(self, topic: Topic, timeout: float = MAX_WAIT_S) -> bool:
        """Wait for a notification (True) or the timeout, at most a second (False)."""
        return await self.wait_any((topic,), timeout)

    async def wait_any(self, topics: Iterable[Topic], timeout: float = MAX_WAIT_S) -> bool:
        """Wait for a notification on any of the topics (True) or the timeout, at most a second."""
        with self.listen(*topics) as listener:
            return await listener.wait(timeout)

    @contextmanager
    def listen(self, *topics: Topic) -> Iterator[Listener]:
        """A listener on the topics for the block: every notification from now on is kept for
        its next `wait`."""
        listener = Listener(asyncio.Event())
        waiter = (asyncio.get_running_loop(), listener.event)
        with self._lock:
            for topic in topics:
                self._waiters[topic].add(waiter)
        try:
            yield listener
        finally:
            with self._lock:
                for topic in topics:
                    self._waiters[topic].discard(waiter)


class Listener:
    """Notifications kept between waits (`Signals.listen`)."""

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event

    async def wait(self, timeout: float = MAX_WAIT_S) -> bool:
        """Until a notification since the last wait (True, at once if one came meanwhile) or
        the timeout, at most a second (False)."""
        try:
            await asyncio.wait_for(self.event.wait(), min(timeout, MAX_WAIT_S))
            return True
        except TimeoutError:
            return False
        finally:
            self.event.clear()
