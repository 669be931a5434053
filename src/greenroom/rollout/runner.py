"""The worker's task handler: runs a deploy or delete task's steps in order, recording each.

Steps are recorded `running` before they start and `done`/`skipped`/`failed` after, with their
timings, in the task's `metadata.steps`; a take-over resumes at the first unfinished step. A
failure before the switch rolls back (green withdrawn, blue untouched) and fails the task.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.orm import Session

from greenroom.config import Settings
from greenroom.metrics import Metrics
from greenroom.rollout import steps
from greenroom.rollout.plan import (
    DELETE_STEPS,
    DEPLOY_STEPS,
    STEPS_BEFORE_SWITCH,
    DeleteStep,
    RolloutStep,
    StepFailed,
    StepStatus,
    initial_steps,
    mark,
    next_step,
)
from greenroom.signals import Signals
from greenroom.store.db import Store
from greenroom.tasks.models import Task
from greenroom.tasks.states import TaskStatus, transition
from greenroom.worker import leases

log = logging.getLogger("greenroom.rollout")

StepFunction = Callable[[steps.StepContext], Awaitable[steps.StepOutcome]]
DEPLOY: dict[str, StepFunction] = {
    RolloutStep.SNAPSHOT: steps.snapshot,
    RolloutStep.START_GREEN: steps.start_green,
    RolloutStep.SMOKE_TEST: steps.smoke_test,
    RolloutStep.COMPATIBILITY_GATE: steps.compatibility_gate,
    RolloutStep.SWITCH: steps.switch,
    RolloutStep.DRAIN_BLUE: steps.drain_blue,
    RolloutStep.FINISH: steps.finish,
}
DELETE: dict[str, StepFunction] = {
    DeleteStep.UNROUTE: steps.unroute,
    DeleteStep.DRAIN: steps.drain_deleted,
    DeleteStep.STOP: steps.stop_deleted,
    DeleteStep.FINISH: steps.finish_delete,
}


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
        ctx = await self._context(task_id)
        if ctx is None:
            return
        kind = ctx.metadata.pop("_kind")
        functions = DEPLOY if kind == "deploy" else DELETE
        names = [str(n) for n in (DEPLOY_STEPS if kind == "deploy" else DELETE_STEPS)]
        step_list: list[dict[str, Any]] = ctx.metadata.get("steps") or initial_steps(names)
        while (name := next_step(step_list)) is not None:
            step_list = await self._record(ctx, mark(step_list, name, StepStatus.RUNNING))
            try:
                outcome = await functions[name](ctx)
            except StepFailed as exc:
                await self._fail(ctx, step_list, name, exc.message, kind)
                return
            except Exception as exc:  # a bug or a lost store: fail it the same careful way
                log.exception("step %s of task %s raised", name, task_id)
                await self._fail(
                    ctx, step_list, name, f"Internal error in step {name}: {exc}", kind
                )
                return
            step_list = await self._record(
                ctx, mark(step_list, name, outcome.status, outcome.message)
            )
            self._observe(step_list, name)
            if outcome.unchanged:
                for rest in names[names.index(name) + 1 :]:
                    step_list = mark(step_list, rest, StepStatus.SKIPPED, "unchanged")
                await self._record(ctx, step_list)
                await ctx.save(result="unchanged")
                await self._end(ctx, TaskStatus.DONE, None, "unchanged")
                return
        await self._end(ctx, TaskStatus.DONE, None, ctx.metadata.get("result", "done"))

    async def _context(self, task_id: str) -> steps.StepContext | None:
        def load(session: Session) -> tuple[str, str, dict[str, Any]] | None:
            task = session.get(Task, task_id)
            if task is None or TaskStatus(task.status) is not TaskStatus.PROCESSING:
                return None
            return task.kind, task.embedding_model_id, dict(task.task_metadata)

        with self.store.session_scope() as session:
            loaded = load(session)
        if loaded is None:
            return None
        kind, served_name, metadata = loaded
        metadata["_kind"] = kind
        return steps.StepContext(
            store=self.store,
            signals=self.signals,
            settings=self.settings,
            task_id=task_id,
            served_name=served_name,
            metadata=metadata,
        )

    async def _record(
        self, ctx: steps.StepContext, step_list: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        await ctx.save(steps=step_list)
        revision_id = ctx.metadata.get("revision_id")
        finished = [s for s in step_list if s["finished_at"]]
        if revision_id and finished:
            await ctx.db(steps.record_step_in_history, revision_id, finished[-1])
        return step_list

    async def _fail(
        self,
        ctx: steps.StepContext,
        step_list: list[dict[str, Any]],
        name: str,
        message: str,
        kind: str,
    ) -> None:
        step_list = await self._record(ctx, mark(step_list, name, StepStatus.FAILED, message))
        self._observe(step_list, name)
        if kind == "deploy" and name in STEPS_BEFORE_SWITCH:
            try:
                await steps.roll_back(ctx, message)
            except Exception:
                log.exception("rolling back task %s failed", ctx.task_id)
        await ctx.save(result="failed")
        await self._end(ctx, TaskStatus.FAILED, message, "failed")

    async def _end(
        self, ctx: steps.StepContext, status: TaskStatus, detail: str | None, result: str
    ) -> None:
        def end(session: Session) -> None:
            # Fenced: a worker that lost its lease must not overwrite the new owner's result.
            if self.worker_id is None:
                task = session.get(Task, ctx.task_id)
            else:
                task = leases.get_held(session, task_id=ctx.task_id, worker_id=self.worker_id)
            if task is None:
                log.warning("task %s is no longer ours; leaving its result alone", ctx.task_id)
                return
            transition(task, status, reason=detail)

        await ctx.db(end)
        if self.metrics is not None:
            self.metrics.rollouts.labels(result).inc()
        log.info("task %s %s (%s)", ctx.task_id, status, detail or result)

    def _observe(self, step_list: list[dict[str, Any]], name: str) -> None:
        if self.metrics is None:
            return
        step = next(s for s in step_list if s["name"] == name)
        if step["duration_ms"] is not None:
            self.metrics.rollout_step_duration.labels(name, step["status"]).observe(
                step["duration_ms"] / 1000
            )
