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
