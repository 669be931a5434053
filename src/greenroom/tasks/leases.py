"""Task leases: claim a task, renew and release its lease, end it (fenced by the lease).

The tasks domain owns its lease columns: the worker calls these functions, and nothing else
writes `lease_owner`, `lease_expires_at` or `attempts`.

A worker holds a task while the task is `processing`, `lease_owner` is the worker's id and
`lease_expires_at` lies ahead; it renews the lease every third of its length. A task whose lease
expired (its worker died or hung) is taken over by the next claim and resumes from its last
recorded step.

Plain functions, keyword-only, `db_session` first. They flush but never commit: the caller's
`store.session_scope()` does. Commit right after `claim`: on PostgreSQL the claim holds a lock that
serialises every claim until its transaction ends.

Lease times come from the clock of the process that calls (`utcnow()`), so the machines of one
installation must keep their clocks in step (NTP).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Select,
    and_,
    case,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased

from greenroom.store.db import utcnow
from greenroom.tasks.models import Task
from greenroom.tasks.states import TaskStatus, transition

# The key of the PostgreSQL advisory lock that serialises claims ("grnrmclm" in ASCII).
CLAIM_LOCK_KEY = 0x67726E726D636C6D


@dataclass(frozen=True)
class Claim:
    """A task this worker now holds. `taken_over`: it was `processing` under an expired lease
    (another worker died or released it) and must resume rather than start afresh."""

    task: Task
    taken_over: bool


def claim(
    db_session: Session, *, worker_id: str, lease_s: float, now: datetime | None = None
) -> Claim | None:
    """Take one task under a lease for `worker_id`, or None when there is nothing to take.

    Candidates, best first: a `processing` task whose lease expired (a take-over), then the
    oldest `pending` task of a served name with no `processing` task and no older `pending` one
    (one task per served name at a time, first in first out; names run in parallel).
    Either way `attempts` grows by one.

    SQLite: the statement below is one `UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING`, and a
    single statement is atomic under SQLite's database write lock: no other claim can interleave.

    PostgreSQL: the candidate is locked `FOR UPDATE SKIP LOCKED`, so rows that other transactions
    are writing (a renewal, a handler, a cancel) are passed over instead of waited for. That alone
    is not enough at READ COMMITTED: the "no other task of this name is processing" test reads a
    snapshot, and a task's `created_at` is stamped before its insert commits, so two concurrent
    claims can each see the other's claimed task as still pending and (for a late-committed older
    task) both pass the test for the same name. A transaction-level advisory lock, taken first,
    makes claims run one after another, each seeing every claim committed before it; it ends with
    the claim's (short) transaction, so the tasks themselves still run in parallel. It cannot
    deadlock: a claim never waits for a row lock (SKIP LOCKED), and nothing else takes this lock.
    """
    now = now or utcnow()
    is_postgres = db_session.get_bind().dialect.name == "postgresql"
    if is_postgres:
        db_session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
    statement = (
        update(Task)
        .where(Task.id == _candidate(now, worker_id, lock=is_postgres).scalar_subquery())
        .values(
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_s),
            attempts=Task.attempts + 1,
            updated_at=Task.updated_at,  # lease bookkeeping is not a change of the task
        )
        .returning(Task)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    task = db_session.scalars(statement).one_or_none()
    if task is None:
        return None
    taken_over = task.status == TaskStatus.PROCESSING
    if not taken_over:
        result = transition(task, TaskStatus.PROCESSING)
        if not result.accepted:  # the candidate query only picks pending or processing tasks
            raise RuntimeError(result.reason)
        db_session.flush()
    return Claim(task, taken_over)


def renew_lease(
    db_session: Session,
    *,
    task_id: str,
    worker_id: str,
    lease_s: float,
    now: datetime | None = None,
) -> bool:
    """Extend the lease by `lease_s` from now; False when it is no longer this worker's (taken
    over, released or the task ended)."""
    now = now or utcnow()
    statement = (
        update(Task)
        .where(_held(task_id, worker_id))
        .values(lease_expires_at=now + timedelta(seconds=lease_s), updated_at=Task.updated_at)
        .execution_options(synchronize_session=False)
    )
    result = cast(CursorResult[Any], db_session.execute(statement))
    return result.rowcount == 1


def release(
    db_session: Session, *, task_id: str, worker_id: str, now: datetime | None = None
) -> None:
    """Give up an unfinished task (the worker is shutting down): its lease expires now, so the
    next claim anywhere takes it over; it stays `processing`. A no-op if it is not ours."""
    statement = (
        update(Task)
        .where(_held(task_id, worker_id))
        .values(lease_owner=None, lease_expires_at=now or utcnow(), updated_at=Task.updated_at)
        .execution_options(synchronize_session=False)
    )
    db_session.execute(statement)


def get_held(db_session: Session, *, task_id: str, worker_id: str) -> Task | None:
    """The task, locked until the transaction ends, if `worker_id` still holds it; else None.

    A handler writes a task's outcome through this so that a worker that lost its lease cannot
    overwrite the work of the one that took over.
    """
    # A no-op UPDATE rather than SELECT … FOR UPDATE: SQLite has no row locks, and its driver runs
    # a SELECT outside the transaction; an UPDATE takes the write lock (PostgreSQL: the row lock).
    statement = (
        update(Task)
        .where(_held(task_id, worker_id))
        .values(lease_owner=Task.lease_owner, updated_at=Task.updated_at)
        .returning(Task)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return db_session.scalars(statement).one_or_none()


def mark_failed(db_session: Session, *, task_id: str, worker_id: str, detail: str) -> bool:
    """Fail a task this worker holds (its handler raised); False when it is no longer ours or
    no longer `processing`."""
    return end(
        db_session, task_id=task_id, worker_id=worker_id, status=TaskStatus.FAILED, detail=detail
    )


def end(
    db_session: Session,
    *,
    task_id: str,
    worker_id: str | None,
    status: TaskStatus,
    detail: str | None = None,
) -> bool:
    """Record a task's end (`done` or `failed`, with `detail`), fenced: only while `worker_id`
    holds it, so a worker that lost its lease cannot overwrite the result of the one that took
    over (no `worker_id`: a handler run outside a worker, as in tests). False when refused."""
    if worker_id is None:
        task = db_session.get(Task, task_id, populate_existing=True)
    else:
        task = get_held(db_session, task_id=task_id, worker_id=worker_id)
    if task is None:
        return False
    accepted = transition(task, status, reason=detail).accepted
    db_session.flush()
    return accepted


def _held(task_id: str, worker_id: str) -> ColumnElement[bool]:
    return and_(
        Task.id == task_id,
        Task.lease_owner == worker_id,
        Task.status == TaskStatus.PROCESSING,
    )


# Aliased, so that inside `UPDATE tasks` the subquery reads its own `tasks` rather than
# correlating to the row being updated. Built once: an alias builds a proxy of every column, which
# was most of a claim's CPU when made per call (bench/control_plane.py).
_CANDIDATE = aliased(Task, name="candidate")
_BUSY, _OLDER = aliased(Task, name="busy"), aliased(Task, name="older")


def _candidate(now: datetime, worker_id: str, *, lock: bool) -> Select[tuple[str]]:
    candidate, busy, older = _CANDIDATE, _BUSY, _OLDER
    # Never one of this worker's own tasks: its handler still runs (a claim that waited long for
    # SQLite's write lock can write a lease that is nearly over, and the next claim would take
    # the task over from itself and run it twice). Its renewal extends the lease instead.
    lease_expired = and_(
        candidate.status == TaskStatus.PROCESSING,
        or_(candidate.lease_expires_at.is_(None), candidate.lease_expires_at <= now),
        or_(candidate.lease_owner.is_(None), candidate.lease_owner != worker_id),
    )
    # Any processing task blocks its name, expired or not: it is taken over first, never run
    # beside the next one.
    name_busy = exists().where(
        busy.embedding_model_id == candidate.embedding_model_id,
        busy.status == TaskStatus.PROCESSING,
    )
    older_pending = exists().where(
        older.embedding_model_id == candidate.embedding_model_id,
        older.status == TaskStatus.PENDING,
        or_(
            older.created_at < candidate.created_at,
            and_(older.created_at == candidate.created_at, older.id < candidate.id),
        ),
    )
    first_pending = and_(candidate.status == TaskStatus.PENDING, ~name_busy, ~older_pending)
    query = (
        select(candidate.id)
        .where(or_(lease_expired, first_pending))
        .order_by(
            case((candidate.status == TaskStatus.PROCESSING, 0), else_=1),
            candidate.created_at,
            candidate.id,
        )
        .limit(1)
    )
    return query.with_for_update(skip_locked=True, of=candidate) if lock else query
