"""The steps of an embedding migration's tasks (docs/api/migrations.md), in the order of
`greenroom.rollout.plan`: a staged deploy's `stage` and `finish`; a promotion's `gate`,
`start_live`, `switch` and `finish`; a finish's `switch_space`, `retire_adapter` and `finish`;
an abort's `withdraw_staged` (while staged) or `switch` (after an adapted promotion, at the end
of a rollback's deploy steps) and `finish`.

As every step (`greenroom.rollout.steps`): it asks the domain services to record the new state
(the migrations service for the stage, workloads for revisions and the live pointer,
deployments for the version's status), waits for what the routers and the runtime report, and
is idempotent: a worker that takes a task over runs an interrupted step again. A stage change
and the step's record in the task commit together. Each task's `metadata.revision_id` is the
revision it concerns (its deployment version's history records the stage change): the staged
revision for a staged deploy, a promotion and an abort while staged, the live revision for a
finish, the old model's new revision for an abort after an adapted promotion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from greenroom.deployments import service as deployments_service
from greenroom.deployments.states import DeploymentStatus
from greenroom.errors import GreenroomError
from greenroom.migrations import service as migrations_service
from greenroom.migrations.states import MigrationStage
from greenroom.rollout import steps
from greenroom.rollout.steps import (
    FAILED_STARTS,
    READY_MESSAGE,
    StepContext,
    StepFailed,
    StepOutcome,
    done,
    green_of,
    skipped,
)
from greenroom.serving import reports
from greenroom.signals import Topic
from greenroom.tasks import service as tasks_service
from greenroom.tasks.schemas import TaskMetadata
from greenroom.workloads import service as workloads_service
from greenroom.workloads.service import STAGED_MESSAGE
from greenroom.workloads.states import RevisionPhase

ABORTED_MESSAGE = "migration aborted"


def _record_in_task(session: Session, ctx: StepContext, updates: dict[str, Any]) -> None:
    """Keys of the task's metadata, written in the step's own transaction."""
    if updates:
        tasks_service.save_metadata(
            session, task_id=ctx.task_id, updates=TaskMetadata.model_validate(updates)
        )


def _apply(ctx: StepContext, updates: dict[str, Any]) -> None:
    """The keys just committed, in the context's copy of the metadata too."""
    for key, value in updates.items():
        setattr(ctx.metadata, key, value)


def _version_status(session: Session, revision_id: str, message: str) -> None:
    """The revision's deployment version READY with `message`: a stage change in its history."""
    deployments_service.record_status(
        session, revision_id=revision_id, status=DeploymentStatus.READY, message=message
    )


# ----- staged deploy -----------------------------------------------------------------------------


async def stage(ctx: StepContext) -> StepOutcome:
    """The new revision becomes the served name's staged revision (Running, its version READY
    "staged: no live traffic"), every router follows it (pinned names, shadow traffic), then a
    staged revision it replaced is drained and stopped."""
    revision_id = green_of(ctx)
    updates = await ctx.db(_record_staged, ctx, revision_id)
    _apply(ctx, updates)
    ctx.signals.notify(Topic.LIVE)
    await steps.routers_confirm(
        ctx,
        lambda r: reports.staged_of(r, ctx.served_name) == revision_id,
        f"follow staged revision {revision_id}",
    )
    replaced = ctx.metadata.replaced_staged_revision_id
    if not replaced:
        return done(f"staged: no live traffic; `{ctx.served_name}@staged` answers with it")
    drained = await steps.drain(ctx, replaced)
    message = f"replaced by staged revision {revision_id}"
    await steps.retire(ctx, replaced, RevisionPhase.STOPPED, message)
    how = "drained and stopped" if drained else "stopped after the grace period"
    return done(f"staged; the staged revision it replaced ({replaced}) {how}")


def _record_staged(session: Session, ctx: StepContext, revision_id: str) -> dict[str, Any]:
    stage_now = migrations_service.stage_of(session, served_name=ctx.served_name)
    refusal = tasks_service.migration_refusal(
        served_name=ctx.served_name, stage=stage_now, strategy="staged"
    )
    if refusal:  # adapted meanwhile: nothing may replace what the adapter maps into
        raise StepFailed(refusal)
    try:
        replaced = migrations_service.record_staged(
            session, served_name=ctx.served_name, revision_id=revision_id
        )
    except GreenroomError as exc:
        raise StepFailed(exc.message) from exc
    workloads_service.record_staged(session, revision_id=revision_id)
    _version_status(session, revision_id, STAGED_MESSAGE)
    updates: dict[str, Any] = {}
    if replaced and replaced != revision_id and not ctx.metadata.replaced_staged_revision_id:
        updates["replaced_staged_revision_id"] = replaced
        _version_status(session, replaced, f"replaced by staged revision {revision_id}")
    _record_in_task(session, ctx, updates)
    return updates


async def roll_back_unless_staged(ctx: StepContext, reason: str) -> None:
    """`stage` failed: withdraw the new revision, unless it was recorded staged already (then
    it stays staged, consistent: an abort withdraws it)."""
    revision_id = ctx.metadata.revision_id
    staged = await ctx.db(lambda s: _staged_revision(s, ctx.served_name))
    if revision_id and staged == revision_id:
        return
    await steps.roll_back(ctx, reason)


async def finish_staged(ctx: StepContext) -> StepOutcome:
    await ctx.save(result="staged")
    return done("promote it, or abort it")


def _staged_revision(session: Session, served_name: str) -> str | None:
    migration = migrations_service.get_migration(session, served_name=served_name)
    if migration is None:
        return None
    if migrations_service.stage_of(session, served_name=served_name) is not MigrationStage.STAGED:
        return None
    return migration.staged_revision_id


# ----- promote -----------------------------------------------------------------------------------


async def promotion_gate(ctx: StepContext) -> StepOutcome:
    """Which revisions the promotion concerns (read once, when it first runs), then its gate:
    raw, the compatibility gate between the live and the staged revision, as a deploy's;
    adapted, the adapter's held-out evaluation against the thresholds."""
    if not ctx.metadata.revision_id:
        _apply(ctx, await ctx.db(_resolve_promotion, ctx))
    if ctx.metadata.mode == "adapted":
        return await _adapter_gate(ctx)
    return await steps.compatibility_gate(ctx)


def _resolve_promotion(session: Session, ctx: StepContext) -> dict[str, Any]:
    staged_id = _staged_revision(session, ctx.served_name)
    if staged_id is None:
        stage_now = migrations_service.stage_of(session, served_name=ctx.served_name)
        raise StepFailed(tasks_service.no_staged_revision(ctx.served_name, stage_now))
    live = workloads_service.get_live(session, served_name=ctx.served_name)
    if live is None:
        raise StepFailed(f"`{ctx.served_name}` has no live revision to promote over.")
    staged = workloads_service.get_revision_or_fail(session, revision_id=staged_id)
    updates = {
        "revision_id": staged_id,
        "previous_revision_id": live.revision_id,
        "deployment_id": staged.deployment_id,
    }
    _record_in_task(session, ctx, updates)
    return updates


@dataclass(frozen=True)
class AdapterFigures:
    """What the gate reads of the served name's active adapter."""

    id: str
    revision_id: str
    kind: str
    evaluation: dict[str, Any]


def _active_adapter(session: Session, served_name: str) -> AdapterFigures | None:
    adapter = migrations_service.active_adapter(session, served_name=served_name)
    if adapter is None:
        return None
    return AdapterFigures(
        id=adapter.id,
        revision_id=adapter.revision_id,
        kind=adapter.kind,
        evaluation=dict(adapter.evaluation or {}),
    )


async def _adapter_gate(ctx: StepContext) -> StepOutcome:
    staged_id = green_of(ctx)
    name = ctx.served_name
    path = tasks_service.migration_path(name)
    adapter = await ctx.db(lambda s: _active_adapter(s, name))
    if adapter is None or adapter.revision_id != staged_id:
        raise StepFailed(
            f"`{name}` has no adapter for its staged revision {staged_id}: fit one with POST "
            f"{path}/adapter first, or promote it raw."
        )
    settings = ctx.settings
    cosine = _figure(adapter.evaluation, "mean_cosine")
    overlap = _figure(adapter.evaluation, "neighbour_overlap_at_10")
    held_out = adapter.evaluation.get("held_out", "?")
    shown = (
        f"mean cosine {_shown(cosine)} (needs {settings.adapter_min_mean_cosine}), neighbour "
        f"overlap@10 {_shown(overlap)} (needs {settings.adapter_min_neighbour_overlap}) on "
        f"{held_out} held-out pairs"
    )
    if (
        cosine is None
        or overlap is None
        or cosine < settings.adapter_min_mean_cosine
        or overlap < settings.adapter_min_neighbour_overlap
    ):
        raise StepFailed(
            f"The {adapter.kind} adapter of `{name}` falls short: {shown}; add sample texts "
            f"(POST {path}/samples) and fit it again, or promote raw and re-index."
        )
    await ctx.save(adapter_id=adapter.id)
    return done(f"{adapter.kind} adapter {adapter.id}: {shown}")


def _figure(evaluation: dict[str, Any], key: str) -> float | None:
    value = evaluation.get(key)
    return float(value) if isinstance(value, int | float) else None


def _shown(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3f}"


async def start_live(ctx: StepContext) -> StepOutcome:
    """The staged revision's replicas at normal priority: the spec changed, so the reconciler
    starts them again (the local runtime beside the low-priority ones, which stop once the
    fresh ones are ready), and the step waits until only fresh ones are ready (none on a port
    the low-priority ones had), before any live request reaches them."""
    revision_id = green_of(ctx)
    if ctx.metadata.replica_ports_before is None:
        _apply(ctx, await ctx.db(_restart_at_normal_priority, ctx, revision_id))
    ctx.signals.notify(Topic.DESIRED)
    before = frozenset(ctx.metadata.replica_ports_before or [])
    timeout = ctx.settings.rollout_ready_timeout_s
    ready = await ctx.wait_until(
        Topic.REPORTED, lambda s: _ready_afresh(s, revision_id, before), timeout
    )
    if ready is None:
        raise StepFailed(
            f"The staged revision's replicas did not come back at normal priority within "
            f"{timeout:.0f} s; see the replica logs in the data dir."
        )
    return done(f"{ready} replica(s) ready at normal priority")


def _restart_at_normal_priority(
    session: Session, ctx: StepContext, revision_id: str
) -> dict[str, Any]:
    """Set the priority and record the ports of the replicas that ran before, together."""
    revision = workloads_service.get_revision_or_fail(session, revision_id=revision_id)
    restarts = revision.priority != "normal"
    ports = sorted({r["port"] for r in revision.replicas if r.get("port")}) if restarts else []
    workloads_service.set_priority(session, revision_id=revision_id, priority="normal")
    updates = {"replica_ports_before": ports}
    _record_in_task(session, ctx, updates)
    return updates


def _ready_afresh(session: Session, revision_id: str, before: frozenset[int]) -> int | None:
    ready, problem = workloads_service.ready_or_broken(
        session, revision_id=revision_id, failed_starts=FAILED_STARTS
    )
    if problem is not None:
        raise StepFailed(f"The promoted revision's replicas failed to start: {problem}")
    revision = workloads_service.get_revision_or_fail(session, revision_id=revision_id)
    ports = {r.get("port") for r in revision.replicas if r.get("state") == "ready"}
    if not ready or ports & before:
        return None
    return revision.ready_replicas


async def keep_staged(ctx: StepContext, reason: str) -> None:
    """A promotion failed before its switch: the staged revision stays staged, back at low
    priority if `start_live` had raised it."""
    revision_id = ctx.metadata.revision_id
    if not revision_id or ctx.metadata.replica_ports_before is None:
        return
    if await ctx.db(lambda s: _back_to_low_priority(s, ctx.served_name, revision_id)):
        ctx.signals.notify(Topic.DESIRED)


def _back_to_low_priority(session: Session, served_name: str, revision_id: str) -> bool:
    if _staged_revision(session, served_name) != revision_id:
        return False
    workloads_service.set_priority(session, revision_id=revision_id, priority="low")
    return True


async def switch_promoted(ctx: StepContext) -> StepOutcome:
    """The staged revision becomes live (raw: in its own space; adapted: through the adapter,
    in the old revision's), then every fresh router confirms it serves it so."""
    revision_id = green_of(ctx)
    name, mode, adapter_id = ctx.served_name, ctx.metadata.mode or "raw", ctx.metadata.adapter_id
    await ctx.db(_promote, ctx, revision_id)
    ctx.signals.notify(Topic.LIVE)

    def promoted(report: Any) -> bool:
        if report.live.get(name) != revision_id:
            return False
        return mode != "adapted" or reports.adapter_of(report, name) == adapter_id

    await steps.routers_confirm(ctx, promoted, f"serve the promoted revision ({mode})")
    return done(f"routers serve the promoted revision ({mode})")


def _promote(session: Session, ctx: StepContext, revision_id: str) -> None:
    meta = ctx.metadata
    workloads_service.point_live(
        session,
        served_name=ctx.served_name,
        revision_id=revision_id,
        deployment_id=meta.deployment_id or "",
    )
    if _staged_revision(session, ctx.served_name) != revision_id:
        return  # recorded by the run that was interrupted
    mode = meta.mode or "raw"
    migrations_service.record_promoted(
        session,
        served_name=ctx.served_name,
        mode=mode,
        old_revision_id=meta.previous_revision_id,
    )
    if mode == "adapted":
        message = (
            f"promoted (adapted): live, its vectors mapped by adapter {meta.adapter_id} into "
            f"the space of revision {meta.previous_revision_id}"
        )
    else:
        message = "promoted (raw): live, in its own space"
    _version_status(session, revision_id, message)


async def finish_promoted(ctx: StepContext) -> StepOutcome:
    revision_id = green_of(ctx)
    await ctx.db(lambda s: _version_status(s, revision_id, READY_MESSAGE))
    await ctx.save(result="promoted")
    if ctx.metadata.mode == "adapted":
        return done("re-index with the pinned name @live, then finish the migration")
    return done()


# ----- finish (after an adapted promotion) -------------------------------------------------------


async def switch_space(ctx: StepContext) -> StepOutcome:
    """The migration ends: the served name answers with the live revision's own vectors, once
    every fresh router has stopped applying the adapter."""
    if not ctx.metadata.revision_id:
        _apply(ctx, await ctx.db(_resolve_finish, ctx))
    revision_id = green_of(ctx)
    await ctx.db(_finish_space, ctx, revision_id)
    ctx.signals.notify(Topic.LIVE)
    name = ctx.served_name
    await steps.routers_confirm(
        ctx, lambda r: reports.adapter_of(r, name) is None, "stop applying the adapter"
    )
    return done("the served name answers with raw vectors")


def _resolve_finish(session: Session, ctx: StepContext) -> dict[str, Any]:
    stage_now = migrations_service.stage_of(session, served_name=ctx.served_name)
    live = workloads_service.get_live(session, served_name=ctx.served_name)
    if stage_now is not MigrationStage.ADAPTED or live is None:
        raise StepFailed(tasks_service.not_adapted(ctx.served_name, stage_now))
    adapter = migrations_service.active_adapter(session, served_name=ctx.served_name)
    updates: dict[str, Any] = {"revision_id": live.revision_id}
    if adapter is not None:
        updates["adapter_id"] = adapter.id
    _record_in_task(session, ctx, updates)
    return updates


def _finish_space(session: Session, ctx: StepContext, revision_id: str) -> None:
    stage_now = migrations_service.stage_of(session, served_name=ctx.served_name)
    if stage_now is not MigrationStage.ADAPTED:
        return  # recorded by the run that was interrupted
    migrations_service.record_finished(session, served_name=ctx.served_name)
    _version_status(session, revision_id, "migration finished: live, in its own space")


async def retire_adapter(ctx: StepContext) -> StepOutcome:
    """Confirm the adapter retired (the finish recorded it so): no router or restart applies
    it again."""
    adapter_id = ctx.metadata.adapter_id
    if not adapter_id:
        return skipped("no adapter was active")
    active = await ctx.db(lambda s: _active_adapter(s, ctx.served_name))
    if active is not None and active.id == adapter_id:
        raise StepFailed(f"Adapter {adapter_id} of `{ctx.served_name}` is still active.")
    return done(f"adapter {adapter_id} retired")


async def finish_migration(ctx: StepContext) -> StepOutcome:
    await ctx.save(result="finished")
    return done()


# ----- abort -------------------------------------------------------------------------------------


async def withdraw_staged(ctx: StepContext) -> StepOutcome:
    """While staged: the migration ends, every router stops following the staged revision, and
    it is drained and stopped ("migration aborted"); the live revision never changed."""
    if not ctx.metadata.revision_id:
        _apply(ctx, await ctx.db(_abort_staged, ctx))
    revision_id = green_of(ctx)
    ctx.signals.notify(Topic.LIVE)
    name = ctx.served_name
    await steps.routers_confirm(
        ctx,
        lambda r: reports.staged_of(r, name) != revision_id,
        f"stop following staged revision {revision_id}",
    )
    drained = await steps.drain(ctx, revision_id)
    await steps.retire(ctx, revision_id, RevisionPhase.STOPPED, ABORTED_MESSAGE)
    how = "drained and stopped" if drained else "stopped after the grace period"
    return done(f"staged revision {revision_id} {how}")


def _abort_staged(session: Session, ctx: StepContext) -> dict[str, Any]:
    staged_id = _staged_revision(session, ctx.served_name)
    if staged_id is None:
        stage_now = migrations_service.stage_of(session, served_name=ctx.served_name)
        raise StepFailed(
            f"`{ctx.served_name}` has no staged revision to withdraw (stage {stage_now}); "
            "nothing was changed"
        )
    migrations_service.record_aborted(session, served_name=ctx.served_name)
    _version_status(session, staged_id, f"{ABORTED_MESSAGE}: the staged revision is withdrawn")
    updates = {"revision_id": staged_id, "staged_revision_id": staged_id}
    _record_in_task(session, ctx, updates)
    return updates


async def switch_back(ctx: StepContext) -> StepOutcome:
    """After an adapted promotion: the old model's new revision becomes live (the served name
    answered in its space all along) and the migration ends, together; then every fresh router
    serves it, with no adapter."""
    revision_id = green_of(ctx)
    await ctx.db(_switch_back, ctx, revision_id)
    ctx.signals.notify(Topic.LIVE)
    name = ctx.served_name

    def back(report: Any) -> bool:
        return report.live.get(name) == revision_id and reports.adapter_of(report, name) is None

    await steps.routers_confirm(ctx, back, "serve the old model again")
    return done("routers serve the old model again")


def _switch_back(session: Session, ctx: StepContext, revision_id: str) -> None:
    workloads_service.point_live(
        session,
        served_name=ctx.served_name,
        revision_id=revision_id,
        deployment_id=ctx.metadata.deployment_id or "",
    )
    stage_now = migrations_service.stage_of(session, served_name=ctx.served_name)
    if stage_now is not MigrationStage.NONE:
        migrations_service.record_aborted(session, served_name=ctx.served_name)
        _version_status(session, revision_id, f"{ABORTED_MESSAGE}: the old model is live again")


async def finish_abort(ctx: StepContext) -> StepOutcome:
    """An abort's end. After an adapted promotion the old model's new revision is READY
    ("Deployment is ready"), as a rollback's is."""
    if ctx.metadata.abort_of == "adapted":
        revision_id = green_of(ctx)
        await ctx.db(lambda s: _version_status(s, revision_id, READY_MESSAGE))
    await ctx.save(result="aborted")
    return done()
