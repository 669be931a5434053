"""The ordered steps of a task, recorded in its metadata before and after each one runs.

Resume starts at the first step that is not done or skipped (every step is idempotent), so a
worker that takes over an expired lease continues where the dead one stopped; a failure before
the switch rolls back (withdraws green), a failure after it cannot undo the switch.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from greenroom.store.db import utcnow


class RolloutStep(StrEnum):
    SNAPSHOT = "snapshot"
    START_GREEN = "start_green"
    SMOKE_TEST = "smoke_test"
    COMPATIBILITY_GATE = "compatibility_gate"
    SWITCH = "switch"
    DRAIN_BLUE = "drain_blue"
    FINISH = "finish"


class DeleteStep(StrEnum):
    UNROUTE = "unroute"  # the served name leaves the routers: new requests get 404
    DRAIN = "drain"
    STOP = "stop"
    FINISH = "finish"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"

    def is_finished(self) -> bool:
        return self in (StepStatus.DONE, StepStatus.SKIPPED)


DEPLOY_STEPS = list(RolloutStep)
DELETE_STEPS = list(DeleteStep)
STEPS_BEFORE_SWITCH = frozenset(DEPLOY_STEPS[: DEPLOY_STEPS.index(RolloutStep.SWITCH)])


class StepFailed(Exception):
    """A step cannot succeed; `message` is the one sentence the task's `detail` carries."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def initial_steps(names: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "status": StepStatus.PENDING.value,
            "started_at": None,
            "finished_at": None,
            "duration_ms": None,
            "message": None,
        }
        for name in names
    ]


def next_step(steps: list[dict[str, Any]]) -> str | None:
    """The first step that still has to run (a `running` one was interrupted: run it again)."""
    for step in steps:
        if not StepStatus(step["status"]).is_finished():
            return step["name"]
    return None


def mark(
    steps: list[dict[str, Any]], name: str, status: StepStatus, message: str | None = None
) -> list[dict[str, Any]]:
    """A copy of the steps with one step moved to `status` (timings filled in)."""
    now = utcnow()
    updated = []
    for step in steps:
        step = dict(step)
        if step["name"] == name:
            step["status"] = status.value
            if status is StepStatus.RUNNING:
                step["started_at"], step["finished_at"], step["duration_ms"] = (
                    now.isoformat(),
                    None,
                    None,
                )
            else:
                started = step["started_at"] or now.isoformat()
                step["started_at"] = started
                step["finished_at"] = now.isoformat()
                step["duration_ms"] = _ms_between(started, now)
            step["message"] = message
        updated.append(step)
    return updated


def _ms_between(started_iso: str, now: datetime) -> int:
    return max(0, int((now - datetime.fromisoformat(started_iso)).total_seconds() * 1000))
