"""Claiming tasks under a lease, renewing, releasing and failing them (SQLite and PostgreSQL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from helpers import wait_until_sync
from sqlalchemy import text
from task_rows import add_tasks, finish, get_task

from greenroom.store.db import Store, utcnow
from greenroom.tasks import leases
from greenroom.tasks.leases import Claim
from greenroom.tasks.models import Task
from greenroom.tasks.states import TaskStatus

LEASE_S = 10.0


def claim(store: Store, worker_id: str = "w1", now: datetime | None = None) -> Claim | None:
    with store.session_scope() as db_session:
        return leases.claim(db_session, worker_id=worker_id, lease_s=LEASE_S, now=now)


def claimed_id(store: Store, worker_id: str = "w1", now: datetime | None = None) -> str | None:
    claimed = claim(store, worker_id, now)
    return claimed.task.id if claimed else None


def after_lease() -> datetime:
    return utcnow() + timedelta(seconds=LEASE_S + 1)


def renew(store: Store, task_id: str, worker_id: str) -> bool:
    with store.session_scope() as db_session:
        return leases.renew_lease(db_session, task_id=task_id, worker_id=worker_id, lease_s=LEASE_S)


def test_claim_takes_the_oldest_pending_task(store: Store) -> None:
    first, _ = add_tasks(store, ["a", "b"])
    before = utcnow()

    claimed = claim(store)

    assert claimed is not None and not claimed.taken_over
    task = get_task(store, first)
    assert (task.status, task.lease_owner, task.attempts) == ("processing", "w1", 1)
    assert task.lease_expires_at is not None
    assert task.lease_expires_at >= before + timedelta(seconds=LEASE_S)
    assert claimed.task.id == first and claimed.task.status == "processing"


def test_claim_returns_none_without_pending_tasks(store: Store) -> None:
    assert claim(store) is None


def test_tasks_of_one_served_name_run_one_at_a_time_in_order(store: Store) -> None:
    ids = add_tasks(store, ["a", "a", "a"])
    for task_id in ids:
        assert claimed_id(store) == task_id
        assert claimed_id(store, "w2") is None  # the name is busy
        assert finish(store, task_id, "w1")
    assert claim(store) is None


def test_tasks_of_different_served_names_are_claimed_in_parallel(store: Store) -> None:
    ids = add_tasks(store, ["a", "b", "a", "c"])
    claimed = [claimed_id(store, f"w{n}") for n in range(4)]
    assert claimed == [ids[0], ids[1], ids[3], None]


@pytest.mark.parametrize(
    "status", [TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELED, TaskStatus.REFUSED]
)
def test_final_tasks_are_never_claimed_nor_block_their_name(
    store: Store, status: TaskStatus
) -> None:
    add_tasks(store, ["a"], status=status)
    (pending,) = add_tasks(store, ["a"])
    assert claimed_id(store) == pending
    assert finish(store, pending, "w1")
    assert claim(store, "w2", now=after_lease()) is None


def test_expired_lease_is_taken_over(store: Store) -> None:
    task_id, waiting = add_tasks(store, ["a", "a"])
    claim(store)

    assert claim(store, "w2") is None  # lease still running
    claimed = claim(store, "w2", now=after_lease())

    assert claimed is not None and claimed.taken_over and claimed.task.id == task_id
    task = get_task(store, task_id)
    assert (task.status, task.lease_owner, task.attempts) == ("processing", "w2", 2)
    # the next task of the name still waits for the one taken over
    assert claim(store, "w3", now=after_lease()) is None
    assert get_task(store, waiting).status == "pending"


def test_take_over_comes_before_older_pending_tasks(store: Store) -> None:
    start = utcnow()
    (running,) = add_tasks(store, ["a"], start=start)
    assert claimed_id(store) == running
    (pending,) = add_tasks(store, ["b"], start=start - timedelta(minutes=1))

    assert claimed_id(store, "w2", now=after_lease()) == running
    assert claimed_id(store, "w2", now=after_lease()) == pending


def test_renew_lease_holds_for_the_owner_only(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"])
    claim(store)
    expires = get_task(store, task_id).lease_expires_at
    assert expires is not None

    assert renew(store, task_id, "w1")
    renewed = get_task(store, task_id).lease_expires_at
    assert renewed is not None and renewed >= expires
    assert not renew(store, task_id, "w2")

    claim(store, "w2", now=after_lease() + timedelta(seconds=LEASE_S))
    assert not renew(store, task_id, "w1")
    assert renew(store, task_id, "w2")


def test_renew_lease_fails_once_the_task_ended(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"])
    claim(store)
    assert finish(store, task_id, "w1")
    assert not renew(store, task_id, "w1")


def test_released_task_is_taken_over_at_once(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"])
    claim(store)

    with store.session_scope() as db_session:
        leases.release(db_session, task_id=task_id, worker_id="w1")

    released = get_task(store, task_id)
    assert (released.status, released.lease_owner) == ("processing", None)
    assert not renew(store, task_id, "w1")
    claimed = claim(store, "w2")
    assert claimed is not None and claimed.taken_over and claimed.task.id == task_id
    assert get_task(store, task_id).attempts == 2


def test_release_by_another_worker_changes_nothing(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"])
    claim(store)
    with store.session_scope() as db_session:
        leases.release(db_session, task_id=task_id, worker_id="w2")
    assert get_task(store, task_id).lease_owner == "w1"
    assert claim(store, "w2") is None


def test_get_held_returns_the_task_for_its_holder_only(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"])
    with store.session_scope() as db_session:
        assert leases.get_held(db_session, task_id=task_id, worker_id="w1") is None  # pending
    claim(store)
    with store.session_scope() as db_session:
        held = leases.get_held(db_session, task_id=task_id, worker_id="w1")
        assert held is not None and held.id == task_id
        assert leases.get_held(db_session, task_id=task_id, worker_id="w2") is None


def test_mark_failed_fails_a_held_task(store: Store) -> None:
    (task_id,) = add_tasks(store, ["a"])
    claim(store)
    with store.session_scope() as db_session:
        assert not leases.mark_failed(db_session, task_id=task_id, worker_id="w2", detail="x")
        assert leases.mark_failed(db_session, task_id=task_id, worker_id="w1", detail="Boom.")
    task = get_task(store, task_id)
    assert (task.status, task.detail, task.lease_owner) == ("failed", "Boom.", None)
    with store.session_scope() as db_session:
        assert not leases.mark_failed(db_session, task_id=task_id, worker_id="w1", detail="x")


def test_claims_on_postgresql_wait_for_each_other(store: Store) -> None:
    """The race the advisory lock prevents: an older task of a name whose insert commits late,
    while a claim of the name's newer task is not yet committed."""
    if not store.is_postgres:
        pytest.skip("SQLite runs one write statement at a time anyway")
    start = utcnow()
    # Exits in reverse: the sessions roll back before the pool waits for the second claim.
    with ThreadPoolExecutor(1) as pool, store.sessions() as late, store.sessions() as first:
        late.begin()
        late.add(
            Task(
                id="deploy-late",
                kind="deploy",
                embedding_model_id="a",
                status="pending",
                request={},
                task_metadata={},
                created_at=start,
                updated_at=start,
            )
        )
        late.flush()
        (newer,) = add_tasks(store, ["a"], start=start + timedelta(seconds=1))
        first.begin()
        claimed = leases.claim(first, worker_id="w1", lease_s=LEASE_S)
        assert claimed is not None and claimed.task.id == newer
        late.commit()

        second = pool.submit(claimed_id, store, "w2")
        wait_until_sync(
            lambda: second.done() or waiting_for_advisory_lock(store),
            what="the second claim waits or ends",
        )
        first.commit()
        assert second.result(timeout=30) is None  # name `a` is busy: the late task waits


def waiting_for_advisory_lock(store: Store) -> bool:
    with store.session_scope() as db_session:
        waiting = db_session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
            )
        )
    return bool(waiting)
