"""Task rows for the tasks and worker tests: written straight to the store, no task service."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import func, select

from greenroom.store.db import Store, utcnow
from greenroom.tasks import leases
from greenroom.tasks.models import Task
from greenroom.tasks.states import TaskStatus, transition

_numbers = itertools.count()


def add_tasks(
    store: Store,
    names: Iterable[str],
    *,
    kind: str = "deploy",
    status: TaskStatus = TaskStatus.PENDING,
    start: datetime | None = None,
) -> list[str]:
    """One task per served name in `names`, created a millisecond apart in that order."""
    start = start or utcnow()
    ids = []
    with store.session_scope() as db_session:
        for offset, name in enumerate(names):
            created_at = start + timedelta(milliseconds=offset)
            task = Task(
                id=f"{kind}-{next(_numbers):05d}",
                kind=kind,
                embedding_model_id=name,
                status=status,
                request={},
                task_metadata={},
                created_at=created_at,
                updated_at=created_at,
            )
            db_session.add(task)
            ids.append(task.id)
    return ids


def get_task(store: Store, task_id: str) -> Task:
    with store.session_scope() as db_session:
        task = db_session.get(Task, task_id)
        assert task is not None
        return task


def finish(store: Store, task_id: str, worker_id: str) -> bool:
    """End a task `done` as a handler does, if `worker_id` still holds it."""
    with store.session_scope() as db_session:
        task = leases.get_held(db_session, task_id=task_id, worker_id=worker_id)
        return task is not None and transition(task, TaskStatus.DONE).accepted


def count_by_status(store: Store, status: TaskStatus) -> int:
    with store.session_scope() as db_session:
        return db_session.scalar(select(func.count()).where(Task.status == status)) or 0
