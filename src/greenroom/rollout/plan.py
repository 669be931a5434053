"""The rollout's whole machine in a few lists: the named steps of a deploy and of a delete, and
of an embedding migration's tasks (a staged deploy, promote, finish, abort: docs/api/
migrations.md), in order, each naming the function that runs it and whether a failure there
rolls back (and what rolling back means there).

`greenroom.rollout.runner` runs a list: it records a step `running` before it starts and
`done` / `skipped` / `failed` after, resumes at the first step that is not finished (every step
is idempotent, so a worker that takes over an expired lease continues where the dead one
stopped), and on a failure before the switch rolls back (withdraws green; blue never stopped
serving). A failure from the switch on cannot undo the switch: the task fails, green serves.

A promotion that fails before its switch leaves the staged revision staged (its priority back to
low); an abort after an adapted promotion is a rollback's deploy steps (the old revision's
snapshot brought back), whose switch also ends the migration.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from greenroom.rollout import migration_steps, steps
from greenroom.store.db import utcnow
from greenroom.tasks.schemas import StepRecord, StepStatus, TaskKind, TaskMetadata

__all__ = [
    "ABORT_ADAPTED_PLAN",
    "ABORT_STAGED_PLAN",
    "DELETE_PLAN",
    "DELETE_STEPS",
    "DEPLOY_PLAN",
    "DEPLOY_STEPS",
    "FINISH_PLAN",
    "PROMOTE_PLAN",
    "PROMOTE_STEPS",
    "STAGED_DEPLOY_PLAN",
    "DeleteStep",
    "MigrationStep",
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


class MigrationStep(StrEnum):
    STAGE = "stage"  # staged deploy: the new revision is the staged one, routers follow it
    GATE = "gate"  # promote: the compatibility gate (raw) or the adapter's evaluation (adapted)
    START_LIVE = "start_live"  # promote: the staged replicas restarted at normal priority
    SWITCH_SPACE = "switch_space"  # finish: the served name answers with raw vectors
    RETIRE_ADAPTER = "retire_adapter"
    WITHDRAW_STAGED = "withdraw_staged"  # abort while staged


StepFunction = Callable[[steps.StepContext], Awaitable[steps.StepOutcome]]
UndoFunction = Callable[[steps.StepContext, str], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    """One named step: the function that runs it, and whether its failure rolls back (only
    before the switch: blue still serves, so withdrawing green undoes the deploy). `undo` is
    what rolling back means for it (default: withdraw green); `failure_note` is appended to
    the task's `detail` when it fails (what stays as it was)."""

    name: str
    run: StepFunction
    rolls_back: bool = False
    undo: UndoFunction | None = None
    failure_note: str | None = None


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
STAGED_DEPLOY_PLAN: tuple[Step, ...] = (
    *DEPLOY_PLAN[:4],  # snapshot … compatibility_gate (which only measures for a staged deploy)
    Step(
        MigrationStep.STAGE,
        migration_steps.stage,
        rolls_back=True,
        undo=migration_steps.roll_back_unless_staged,
    ),
    Step(RolloutStep.FINISH, migration_steps.finish_staged),
)
STAYS_STAGED = "The staged revision stays staged; the live revision serves as before."
PROMOTE_PLAN: tuple[Step, ...] = (
    Step(
        MigrationStep.GATE,
        migration_steps.promotion_gate,
        rolls_back=True,
        undo=migration_steps.keep_staged,
        failure_note=STAYS_STAGED,
    ),
    Step(
        MigrationStep.START_LIVE,
        migration_steps.start_live,
        rolls_back=True,
        undo=migration_steps.keep_staged,
        failure_note=STAYS_STAGED,
    ),
    Step(RolloutStep.SWITCH, migration_steps.switch_promoted),
    Step(RolloutStep.DRAIN_BLUE, steps.drain_blue),
    Step(RolloutStep.FINISH, migration_steps.finish_promoted),
)
FINISH_PLAN: tuple[Step, ...] = (
    Step(MigrationStep.SWITCH_SPACE, migration_steps.switch_space),
    Step(MigrationStep.RETIRE_ADAPTER, migration_steps.retire_adapter),
    Step(RolloutStep.FINISH, migration_steps.finish_migration),
)
ABORT_STAGED_PLAN: tuple[Step, ...] = (
    Step(MigrationStep.WITHDRAW_STAGED, migration_steps.withdraw_staged),
    Step(RolloutStep.FINISH, migration_steps.finish_abort),
)
STAYS_ADAPTED = "The migration stays adapted: the promoted revision serves through the adapter."
ABORT_ADAPTED_PLAN: tuple[Step, ...] = (
    *(
        Step(step.name, step.run, rolls_back=True, failure_note=STAYS_ADAPTED)
        for step in DEPLOY_PLAN[:4]  # snapshot (of the old revision) … compatibility_gate
    ),
    Step(RolloutStep.SWITCH, migration_steps.switch_back),
    Step(RolloutStep.DRAIN_BLUE, steps.drain_blue),
    Step(RolloutStep.FINISH, migration_steps.finish_abort),
)
DEPLOY_STEPS = [step.name for step in DEPLOY_PLAN]
DELETE_STEPS = [step.name for step in DELETE_PLAN]
PROMOTE_STEPS = [step.name for step in PROMOTE_PLAN]


def plan_of(kind: str, metadata: TaskMetadata | None = None) -> tuple[Step, ...]:
    """The steps a task of this kind runs; a deploy's and an abort's depend on its metadata
    (`strategy`; `abort_of`)."""
    metadata = metadata or TaskMetadata()
    if kind == TaskKind.DELETE:
        return DELETE_PLAN
    if kind == TaskKind.PROMOTE:
        return PROMOTE_PLAN
    if kind == TaskKind.FINISH:
        return FINISH_PLAN
    if kind == TaskKind.ABORT:
        return ABORT_ADAPTED_PLAN if metadata.abort_of == "adapted" else ABORT_STAGED_PLAN
    return STAGED_DEPLOY_PLAN if metadata.strategy == "staged" else DEPLOY_PLAN


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
