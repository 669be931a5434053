"""Task status: pending → processing → done | failed; pending → canceled | refused."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from greenroom.store.db import utcnow
from greenroom.tasks.models import Task


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"
    REFUSED = "refused"

    def is_final(self) -> bool:
        return self in TERMINAL_TASK_STATUSES


TERMINAL_TASK_STATUSES = frozenset(
    {TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELED, TaskStatus.REFUSED}
)
ALLOWED_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.PROCESSING, TaskStatus.CANCELED, TaskStatus.REFUSED}),
    TaskStatus.PROCESSING: frozenset({TaskStatus.DONE, TaskStatus.FAILED}),
}


@dataclass(frozen=True)
class TransitionResult:
    accepted: bool
    reason: str = ""


def transition(task: Task, to: TaskStatus, *, reason: str | None = None) -> TransitionResult:
    """Move a task to `to` if the table allows it; a task never goes back."""
    current = TaskStatus(task.status)
    if to not in ALLOWED_TRANSITIONS.get(current, frozenset()):
        return TransitionResult(False, f"Task `{task.id}` is {current} and cannot become {to}")
    task.status = to
    if reason is not None:
        task.detail = reason[:1500]
    task.updated_at = utcnow()
    if to.is_final():
        task.lease_owner = None
        task.lease_expires_at = None
    return TransitionResult(True)
