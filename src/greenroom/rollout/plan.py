"""The rollout's whole machine in two lists: the named steps of a deploy and of a delete, in
order, each naming the function that runs it and whether a failure there rolls back.

`greenroom.rollout.runner` runs a list: it records a step `running` before it starts and
`done` / `skipped` / `failed` after, resumes at the first step that is not finished (every step
is idempotent, so a worker that takes over an expired lease continues where the dead one
stopped), and on a failure before the switch rolls back (withdraws green; blue never stopped
serving). A failure from the switch on cannot undo the switch: the task fails, green serves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from greenroom.rollout import steps
from greenroom.store.db import utcnow
from greenroom.tasks.schemas import StepRecord, StepStatus, TaskKind

__all__ = [
    "DELETE_PLAN",
    "DELETE_STEPS",
    "DEPLOY_PLAN",
    "DEPLOY_STEPS",
    "DeleteStep",
    "RolloutStep",
    "Step",
    "StepStatus",
    "initial_steps",
    "mark",
    "next_step",
    "plan_of",
]


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


StepFunction = Callable[[steps.StepContext], Awaitable[steps.StepOutcome]]


@dataclass(frozen=True)
class Step:
    """One named step: the function that runs it, and whether its failure rolls back (only
    before the switch: blue still serves, so withdrawing green undoes the deploy)."""

    name: str
    run: StepFunction
    rolls_back: bool = False


DEPLOY_PLAN: tuple[Step, ...] = (
    Step(RolloutStep.SNAPSHOT, steps.snapshot, rolls_back=True),
    Step(RolloutStep.START_GREEN, steps.start_green, rolls_back=True),
    Step(RolloutStep.SMOKE_TEST, steps.smoke_test, rolls_back=True),
    Step(RolloutStep.COMPATIBILITY_GATE, steps.compatibility_gate, rolls_back=True),
    Step(RolloutStep.SWITCH, steps.switch),
    Step(RolloutStep.DRAIN_BLUE, steps.drain_blue),
    Step(RolloutStep.FINISH, steps.finish),
)
DELETE_PLAN: tuple[Step, ...] = (
    Step(DeleteStep.UNROUTE, steps.unroute),
    Step(DeleteStep.DRAIN, steps.drain_deleted),
    Step(DeleteStep.STOP, steps.stop_deleted),
    Step(DeleteStep.FINISH, steps.finish_delete),
)
DEPLOY_STEPS = [step.name for step in DEPLOY_PLAN]
DELETE_STEPS = [step.name for step in DELETE_PLAN]


def plan_of(kind: str) -> tuple[Step, ...]:
    return DEPLOY_PLAN if kind == TaskKind.DEPLOY else DELETE_PLAN


def initial_steps(plan: tuple[Step, ...]) -> list[StepRecord]:
    return [StepRecord.pending(step.name) for step in plan]


def next_step(records: list[StepRecord]) -> str | None:
    """The first step that still has to run (a `running` one was interrupted: run it again)."""
    for record in records:
        if not record.status.is_finished():
            return record.name
    return None


def mark(
    records: list[StepRecord], name: str, status: StepStatus, message: str | None = None
) -> list[StepRecord]:
    """A copy of the records with one step moved to `status` (timings filled in)."""
    now = utcnow()
    return [_moved(r, status, message, now) if r.name == name else r for r in records]


def _moved(
    record: StepRecord, status: StepStatus, message: str | None, now: datetime
) -> StepRecord:
    if status is StepStatus.RUNNING:
        started, finished, duration = now.isoformat(), None, None
    else:
        started = record.started_at or now.isoformat()
        finished, duration = now.isoformat(), _ms_between(started, now)
    return StepRecord(
        name=record.name,
        status=status,
        started_at=started,
        finished_at=finished,
        duration_ms=duration,
        message=message,
    )


def with_message(records: list[StepRecord], name: str, message: str) -> list[StepRecord]:
    """A copy of the records with a running step's message replaced (its progress)."""
    return [r.model_copy(update={"message": message}) if r.name == name else r for r in records]


def _ms_between(started_iso: str, now: datetime) -> int:
    return max(0, int((now - datetime.fromisoformat(started_iso)).total_seconds() * 1000))
