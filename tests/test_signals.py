"""In-process signals: `notify` wakes and forwards, `wake` only wakes, `wait_any` any topic."""

from __future__ import annotations

import asyncio

from helpers import async_test

from greenroom.signals import Signals, Topic


@async_test
async def test_notify_wakes_waiters_and_hands_topics_to_forwarders() -> None:
    signals, forwarded = Signals(), []
    signals.forward_to(forwarded.append)
    waiter = asyncio.create_task(signals.wait(Topic.LIVE, timeout=30))
    await asyncio.sleep(0)
    signals.notify(Topic.LIVE, Topic.TASKS)
    assert await waiter is True
    assert forwarded == [(Topic.LIVE, Topic.TASKS)]


@async_test
async def test_wake_does_not_forward() -> None:
    signals, forwarded = Signals(), []
    signals.forward_to(forwarded.append)
    waiter = asyncio.create_task(signals.wait(Topic.REPORTED, timeout=30))
    await asyncio.sleep(0)
    signals.wake(Topic.REPORTED)
    assert await waiter is True
    assert forwarded == []


@async_test
async def test_stop_forwarding() -> None:
    signals, forwarded = Signals(), []
    signals.forward_to(forwarded.append)
    signals.stop_forwarding(forwarded.append)
    signals.notify(Topic.TASKS)
    assert forwarded == []


@async_test
async def test_wait_any_wakes_on_either_topic_and_times_out_within_a_second() -> None:
    signals = Signals()
    waiter = asyncio.create_task(signals.wait_any((Topic.LIVE, Topic.REPORTED), timeout=30))
    await asyncio.sleep(0)
    signals.wake(Topic.REPORTED)
    assert await waiter is True
    assert await signals.wait_any((Topic.LIVE,), timeout=0.01) is False


@async_test
async def test_a_listener_keeps_a_notification_that_came_before_its_wait() -> None:
    """A loop reads the store, then waits: a change committed while it read must not wait for
    the next second (`wait` alone, registered only once the read is over, loses it)."""
    signals = Signals()
    loop = asyncio.get_running_loop()
    with signals.listen(Topic.DESIRED) as listener:
        await asyncio.to_thread(signals.notify, Topic.DESIRED)  # from a writer's thread
        started = loop.time()
        assert await listener.wait(timeout=5) is True
        assert loop.time() - started < 0.5
        assert await listener.wait(timeout=0.05) is False  # each notification ends one wait
    lost = Signals()
    await asyncio.to_thread(lost.notify, Topic.DESIRED)
    assert await lost.wait(Topic.DESIRED, timeout=0.05) is False  # what the listener prevents
