"""The worker loop in one process: handlers, concurrency, lost leases, errors and stop."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from helpers import async_test, wait_until
from task_rows import add_tasks, count_by_status, finish, get_task

from greenroom.metrics import Metrics
from greenroom.signals import Signals, Topic
from greenroom.store.db import Store, utcnow
from greenroom.tasks import leases
from greenroom.tasks.states import TaskStatus
from greenroom.worker.loop import UNFINISHED, TaskHandler, Worker

DEADLINE_S = 30.0
LONG_LEASE_S = 600.0  # outlasts every deadline: only a release can free the task


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    runner = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        await worker.stop()
        await runner


def finishing(store: Store, worker_id: str, calls: list[str]) -> TaskHandler:
    """A handler that records the call and ends the task `done`."""

    async def handle(task_id: str) -> None:
        calls.append(task_id)
        await asyncio.to_thread(finish, store, task_id, worker_id)

    return handle


async def blocking(task_id: str) -> None:
    await asyncio.Event().wait()


async def all_done(store: Store, count: int) -> None:
    await wait_until(
        lambda: count_by_status(store, TaskStatus.DONE) == count,
        deadline_s=DEADLINE_S,
        what=f"{count} tasks done",
    )


@async_test
async def test_each_task_runs_once_and_in_order_per_name(store: Store) -> None:
    names = ["a", "b", "c"] * 4
    ids = add_tasks(store, names)
    calls: list[str] = []
    metrics, signals = Metrics(), Signals()
    handler = finishing(store, "w1", calls)
    worker = Worker(store, handler, signals=signals, metrics=metrics, worker_id="w1")

    async with running(worker):
        await all_done(store, len(ids))
        late = add_tasks(store, ["d"])  # signalled, as the task service does after a commit
        signals.notify(Topic.TASKS)
        await all_done(store, len(ids) + 1)
        # the handler marks a task done before the worker counts it: wait for the count too
        await wait_until(
            lambda: metrics.tasks.labels("deploy", "done")._value.get() == len(ids) + 1,
            deadline_s=DEADLINE_S,
            what="every task counted",
        )

    assert Counter(calls) == Counter([*ids, *late])
    per_name: dict[str, list[str]] = defaultdict(list)
    for task_id in calls:
        per_name[get_task(store, task_id).embedding_model_id].append(task_id)
    assert per_name == {"a": ids[0::3], "b": ids[1::3], "c": ids[2::3], "d": late}
    assert metrics.tasks.labels("deploy", "done")._value.get() == len(ids) + 1
    assert worker.running() == set()


@async_test
async def test_concurrency_is_respected(store: Store) -> None:
    ids = add_tasks(store, [f"name-{n}" for n in range(8)])
    active: set[str] = set()
    peak = 0
    three_running = asyncio.Event()

    async def handle(task_id: str) -> None:
        nonlocal peak
        active.add(task_id)
        peak = max(peak, len(active))
        if len(active) == 3:
            three_running.set()
        await asyncio.wait_for(three_running.wait(), DEADLINE_S)
        await asyncio.to_thread(finish, store, task_id, "w1")
        active.discard(task_id)

    async with running(Worker(store, handle, worker_id="w1", concurrency=3)):
        await all_done(store, len(ids))

    assert peak == 3


@async_test
async def test_lost_lease_cancels_the_handler(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"])
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def handle(task_id: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    worker = Worker(store, handle, worker_id="w1", lease_s=0.6)
    async with running(worker):
        await asyncio.wait_for(started.wait(), DEADLINE_S)
        taken_over = await asyncio.to_thread(take_over, store, "w2", after_s=5)
        assert taken_over == task_id
        await asyncio.wait_for(cancelled.wait(), DEADLINE_S)
        await wait_until(lambda: not worker.running(), deadline_s=DEADLINE_S)

    task = get_task(store, task_id)
    assert (task.status, task.lease_owner, task.attempts) == ("processing", "w2", 2)


def take_over(store: Store, worker_id: str, *, after_s: float = 0.0) -> str | None:
    """Claim as another worker would, `after_s` from now; the id of a task taken over."""
    with store.session_scope() as db_session:
        now = utcnow() + timedelta(seconds=after_s)
        claimed = leases.claim(db_session, worker_id=worker_id, lease_s=60, now=now)
        return claimed.task.id if claimed and claimed.taken_over else None


@async_test
async def test_handler_error_fails_the_task(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"], kind="delete")
    metrics = Metrics()

    async def handle(task_id: str) -> None:
        raise RuntimeError("boom")

    async with running(Worker(store, handle, metrics=metrics, worker_id="w1")):
        await wait_until(lambda: get_task(store, task_id).status == "failed", deadline_s=DEADLINE_S)

    task = get_task(store, task_id)
    assert task.detail == "Internal error while running the task: boom"
    assert task.lease_owner is None
    assert metrics.tasks.labels("delete", "failed")._value.get() == 1


@async_test
async def test_handler_that_leaves_its_task_running_fails_it(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"])

    async def handle(task_id: str) -> None:
        return None

    async with running(Worker(store, handle, worker_id="w1")):
        await wait_until(lambda: get_task(store, task_id).status == "failed", deadline_s=DEADLINE_S)

    assert get_task(store, task_id).detail == UNFINISHED


@async_test
async def test_stop_releases_leases_for_another_worker(store: Store) -> None:
    ids = add_tasks(store, ["a", "b"])
    first = Worker(store, blocking, worker_id="w1", lease_s=LONG_LEASE_S)
    runner = asyncio.create_task(first.run())
    await wait_until(lambda: first.running() == set(ids), deadline_s=DEADLINE_S)

    await first.stop()
    await runner

    for task_id in ids:
        task = get_task(store, task_id)
        assert (task.status, task.lease_owner) == ("processing", None)
    calls: list[str] = []
    metrics = Metrics()
    second = Worker(store, finishing(store, "w2", calls), metrics=metrics, worker_id="w2")
    async with running(second):
        await all_done(store, len(ids))
    assert sorted(calls) == sorted(ids)
    assert [get_task(store, task_id).attempts for task_id in ids] == [2, 2]
    assert metrics.lease_takeovers._value.get() == 2


@async_test
async def test_stop_waits_the_grace_period_for_running_tasks(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"])
    started, proceed = asyncio.Event(), asyncio.Event()

    async def handle(task_id: str) -> None:
        started.set()
        await proceed.wait()
        await asyncio.to_thread(finish, store, task_id, "w1")

    worker = Worker(store, handle, worker_id="w1")
    runner = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), DEADLINE_S)
    stopping = asyncio.create_task(worker.stop(grace_s=DEADLINE_S))
    proceed.set()
    await stopping
    await runner

    assert get_task(store, task_id).status == "done"


@async_test
async def test_cancelling_run_releases_leases(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"])
    worker = Worker(store, blocking, worker_id="w1", lease_s=LONG_LEASE_S)
    runner = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.running() == {task_id}, deadline_s=DEADLINE_S)

    runner.cancel()
    await asyncio.wait([runner])

    assert get_task(store, task_id).lease_owner is None
    claimed = await asyncio.to_thread(take_over, store, "w2")
    assert claimed == task_id
