"""The worker's task handler: runs a task's plan (`greenroom.rollout.plan`), recording each step.

A step is recorded `running` before it starts and `done`/`skipped`/`failed` after, with its
timings, in the task's `metadata.steps` (through the tasks service); a take-over resumes at the
first unfinished step. A failure in a step that `rolls_back` runs its `undo` (by default:
withdraw green, blue untouched) and fails the task, its `detail` the step's sentence and the
step's `failure_note` (what stays as it was). The plan is the task's kind's and, for a deploy
and an abort, its metadata's (`plan.plan_of`). The task's end is fenced by its lease
(`tasks.leases.end`).

Test only: `Settings.test_crash_at` ("<kind>:<step>") makes the runner SIGKILL its own process
right after that step of a task of that kind (deploy, delete, promote, finish, abort) is
recorded finished in the store.
"""

from __future__ import annotations

import logging
import os
import signal

from sqlalchemy.orm import Session

from greenroom.config import Settings
from greenroom.metrics import Metrics
from greenroom.rollout import steps
from greenroom.rollout.plan import Step, initial_steps, mark, next_step, plan_of
from greenroom.rollout.steps import StepContext, StepFailed
from greenroom.signals import Signals
from greenroom.store.db import Store
from greenroom.tasks import leases
from greenroom.tasks import service as tasks_service
from greenroom.tasks.schemas import StepRecord, StepStatus, TaskMetadata
from greenroom.tasks.states import TaskStatus

log = logging.getLogger("greenroom.rollout")


class TaskRunner:
    def __init__(
        self,
        store: Store,
        signals: Signals,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        worker_id: str | None = None,
    ) -> None:
        self.worker_id = worker_id  # the lease holder whose results this runner may write
        self.store = store
        self.signals = signals
        self.settings = settings
        self.metrics = metrics

    async def __call__(self, task_id: str) -> None:
        loaded = await self._context(task_id)
        if loaded is None:
            return
        kind, ctx = loaded
        plan = plan_of(kind, ctx.metadata)
        by_name = {step.name: step for step in plan}
        records = ctx.metadata.steps or initial_steps(plan)
        if failed := next((r for r in records if r.status is StepStatus.FAILED), None):
            # the worker died between a step's failure and the task's end: roll back, don't rerun
            await self._fail(ctx, records, by_name[failed.name], failed.message or "step failed")
            return
        while (name := next_step(records)) is not None:
            step = by_name[name]
            records = await self._record(ctx, mark(records, name, StepStatus.RUNNING))
            ctx.step = name
            try:
                outcome = await step.run(ctx)
            except StepFailed as exc:
                await self._fail(ctx, records, step, exc.message)
                return
            except Exception as exc:  # a bug or a lost store: fail it the same careful way
                log.exception("step %s of task %s raised", name, task_id)
                await self._fail(ctx, records, step, f"Internal error in step {name}: {exc}")
                return
            finally:
                ctx.step = None
            records = await self._record(ctx, mark(records, name, outcome.status, outcome.message))
            self._observe(records, name)
            self._crash_if_asked(kind, [name])
            if outcome.unchanged:
                await self._finish_unchanged(ctx, kind, records, plan, name)
                return
        await self._end(ctx, TaskStatus.DONE, None, ctx.metadata.result or "done")

    async def _context(self, task_id: str) -> tuple[str, StepContext] | None:
        def load(session: Session) -> tuple[str, str, TaskMetadata] | None:
            task = tasks_service.get(session, task_id=task_id)
            if task is None or TaskStatus(task.status) is not TaskStatus.PROCESSING:
                return None
            return task.kind, task.embedding_model_id, TaskMetadata.of(task.task_metadata)

        with self.store.session_scope() as session:
            loaded = load(session)
        if loaded is None:
            return None
        kind, served_name, metadata = loaded
        ctx = StepContext(
            store=self.store,
            signals=self.signals,
            settings=self.settings,
            task_id=task_id,
            served_name=served_name,
            metadata=metadata,
            kind=kind,
        )
        return kind, ctx

    async def _record(self, ctx: StepContext, records: list[StepRecord]) -> list[StepRecord]:
        """Persist the step records; the deployment version's history gets the last finished."""
        await ctx.save(steps=records)
        revision_id = ctx.metadata.revision_id
        finished = [record for record in records if record.finished_at]
        if revision_id and finished:
            await ctx.db(steps.record_step_in_history, revision_id, finished[-1])
        return records

    async def _finish_unchanged(
        self,
        ctx: StepContext,
        kind: str,
        records: list[StepRecord],
        plan: tuple[Step, ...],
        name: str,
    ) -> None:
        """What is asked for is live and healthy already: the rest is skipped, the task done."""
        rest = [step.name for step in plan][[step.name for step in plan].index(name) + 1 :]
        for later in rest:
            records = mark(records, later, StepStatus.SKIPPED, "unchanged")
        await self._record(ctx, records)
        self._crash_if_asked(kind, rest)
        await ctx.save(result="unchanged")
        await self._end(ctx, TaskStatus.DONE, None, "unchanged")

    async def _fail(
        self, ctx: StepContext, records: list[StepRecord], step: Step, message: str
    ) -> None:
        """Record the step failed, roll back when it does (its own `undo`, else withdraw
        green) and fail the task; its `detail` says what stays as it was."""
        records = await self._record(ctx, mark(records, step.name, StepStatus.FAILED, message))
        self._observe(records, step.name)
        if step.rolls_back:
            try:
                await (step.undo or steps.roll_back)(ctx, message)
            except Exception:
                log.exception("rolling back task %s failed", ctx.task_id)
        await ctx.save(result="failed")
        detail = f"{message} {step.failure_note}" if step.failure_note else message
        await self._end(ctx, TaskStatus.FAILED, detail, "failed")

    async def _end(
        self, ctx: StepContext, status: TaskStatus, detail: str | None, result: str
    ) -> None:
        def end(session: Session) -> bool:
            # Fenced: a worker that lost its lease must not overwrite the new owner's result.
            return leases.end(
                session,
                task_id=ctx.task_id,
                worker_id=self.worker_id,
                status=status,
                detail=detail,
            )

        if not await ctx.db(end):
            log.warning("task %s is no longer ours; leaving its result alone", ctx.task_id)
        if self.metrics is not None:
            self.metrics.rollouts.labels(result).inc()
        log.info("task %s %s (%s)", ctx.task_id, status, detail or result)

    def _crash_if_asked(self, kind: str, finished: list[str]) -> None:
        """Test only (`Settings.test_crash_at`): die at once, as a SIGKILLed worker does, right
        after one of `finished` (steps of a `kind` task just recorded finished) is the one named."""
        crash_at = self.settings.test_crash_at
        if crash_at is not None and any(crash_at == f"{kind}:{name}" for name in finished):
            log.warning("test_crash_at %s: killing this process", crash_at)
            os.kill(os.getpid(), signal.SIGKILL)

    def _observe(self, records: list[StepRecord], name: str) -> None:
        if self.metrics is None:
            return
        record = next(r for r in records if r.name == name)
        if record.duration_ms is not None:
            self.metrics.rollout_step_duration.labels(name, record.status.value).observe(
                record.duration_ms / 1000
            )
