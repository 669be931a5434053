"""Change signals: wake the parts of this process that wait on the store.

Writers call `notify(topic)` after committing (from any thread); waiters call
`await wait(topic, timeout)` and re-read the store when it returns. Waiters never sleep longer
than a second between reads, so changes made by other processes are seen within a second too.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from enum import StrEnum

MAX_WAIT_S = 1.0


class Topic(StrEnum):
    TASKS = "tasks"  # a task was created or canceled: workers claim
    DESIRED = "desired"  # desired replicas changed: the supervisor reconciles
    REPORTED = "reported"  # reported replica state changed: the worker's waits re-check
    LIVE = "live"  # a live-revision pointer changed: routers follow
    ROUTERS = "routers"  # a router report changed: drains re-check


class Signals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Topic, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = (
            defaultdict(set)
        )

    def notify(self, *topics: Topic) -> None:
        """Wake every waiter on these topics; safe from any thread."""
        with self._lock:
            waiters = [w for topic in topics for w in self._waiters[topic]]
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def wait(self, topic: Topic, timeout: float = MAX_WAIT_S) -> bool:
        """Wait for a notification (True) or the timeout, at most a second (False)."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters[topic].add(waiter)
        try:
            await asyncio.wait_for(event.wait(), min(timeout, MAX_WAIT_S))
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                self._waiters[topic].discard(waiter)
