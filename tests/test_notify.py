"""Signals across processes on PostgreSQL (`PostgresBridge`), two bridges standing for two
processes."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from helpers import async_test, wait_until

from greenroom.notify import CHANNEL, PostgresBridge, libpq_url
from greenroom.signals import Signals, Topic


class CountingSignals(Signals):
    """Counts local wake-ups per topic."""

    def __init__(self) -> None:
        super().__init__()
        self.woken: Counter[Topic] = Counter()

    def wake(self, *topics: Topic) -> None:
        self.woken.update(topics)
        super().wake(*topics)


@asynccontextmanager
async def bridged(url: str) -> AsyncIterator[tuple[CountingSignals, PostgresBridge]]:
    signals = CountingSignals()
    bridge = PostgresBridge(url, signals)
    await bridge.start()
    try:
        yield signals, bridge
    finally:
        await bridge.stop()


def test_libpq_url() -> None:
    url = "postgresql+psycopg://u:p@h:5432/db?sslmode=disable"
    assert libpq_url(url) == "postgresql://u:p@h:5432/db?sslmode=disable"


@async_test
async def test_a_notify_in_one_process_wakes_another(pg_database_url: str) -> None:
    async with bridged(pg_database_url) as (a, _), bridged(pg_database_url) as (b, bridge_b):
        assert bridge_b.listening
        waiter = asyncio.create_task(b.wait(Topic.DESIRED, timeout=30))
        await asyncio.sleep(0)
        b.woken.clear()
        a.notify(Topic.DESIRED)
        await wait_until(waiter.done, deadline_s=30, what="the other bridge's wake-up")
        assert waiter.result() is True
        assert b.woken[Topic.DESIRED] >= 1


@async_test
async def test_own_notifications_do_not_wake_twice(pg_database_url: str) -> None:
    async with bridged(pg_database_url) as (a, _):
        a.woken.clear()
        a.notify(Topic.TASKS)
        # another session's NOTIFY, sent after ours: delivered after it, in commit order
        await wait_until(lambda: a.woken[Topic.TASKS] == 1, what="the local wake-up")
        async with await psycopg.AsyncConnection.connect(
            libpq_url(pg_database_url), autocommit=True
        ) as other:
            await asyncio.sleep(0.2)  # let our sender's NOTIFY go out first
            await other.execute("SELECT pg_notify(%s, %s)", (CHANNEL, Topic.LIVE.value))
        await wait_until(lambda: a.woken[Topic.LIVE] >= 1, deadline_s=30, what="LIVE")
        assert a.woken[Topic.TASKS] == 1  # its own notification came back and was skipped


@async_test
async def test_the_listener_reconnects_after_its_connection_drops(pg_database_url: str) -> None:
    async with bridged(pg_database_url) as (a, bridge):
        conninfo = libpq_url(pg_database_url)
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND query ILIKE %s",
                (f"LISTEN {CHANNEL}%",),
            )
            await wait_until(lambda: not bridge.listening, deadline_s=30, what="the drop")
            await wait_until(lambda: bridge.listening, deadline_s=30, what="the reconnect")
            a.woken.clear()
            await admin.execute("SELECT pg_notify(%s, %s)", (CHANNEL, Topic.ROUTERS.value))
            await wait_until(lambda: a.woken[Topic.ROUTERS] >= 1, deadline_s=30, what="ROUTERS")
