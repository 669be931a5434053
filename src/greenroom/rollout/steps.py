"""One short function per step (the order is `greenroom.rollout.plan`'s). A step never starts a
process and never writes another domain's rows: it asks the domain services (workloads for
revisions and the live pointer, deployments for versions and their status, the tasks service
for its own metadata) to record desired state, and waits for the state the runtime and the
routers report (docs/architecture.md). Every step is idempotent, so a worker that takes
over a task runs an interrupted step again.

The deploy's steps also serve an embedding migration (docs/api/migrations.md): a staged deploy
(`metadata.strategy == "staged"`) runs them with low-priority replicas and a gate that only
measures; an abort after an adapted promotion runs them to bring the old model back. The
migration's own steps are in `greenroom.rollout.migration_steps`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy.orm import Session

from greenroom.auth.scopes import Scope
from greenroom.auth.service import Principal
from greenroom.config import Settings, default_threads
from greenroom.deployments import configs as deployments_configs
from greenroom.deployments import service as deployments_service
from greenroom.deployments.states import DeploymentStatus
from greenroom.errors import GreenroomError, NotFoundError
from greenroom.migrations import service as migrations_service
from greenroom.migrations.states import MigrationStage
from greenroom.registry import service as registry_service
from greenroom.registry.weights import inspect_model
from greenroom.rollout.probes import ProbeError, embed_probes, mean_cosine, smoke_problem
from greenroom.schemas import split_served_name
from greenroom.serving import reports
from greenroom.signals import Signals, Topic
from greenroom.store.db import Store
from greenroom.tasks import service as tasks_service
from greenroom.tasks.schemas import Compatibility, StepRecord, StepStatus, TaskKind, TaskMetadata
from greenroom.workloads import service as workloads_service
from greenroom.workloads.schemas import RevisionSnapshot
from greenroom.workloads.states import RevisionPhase

T = TypeVar("T")
STOP_TIMEOUT_S = 60.0
FAILED_STARTS = 2  # a green replica that failed to start this often fails the rollout
READY_MESSAGE = "Deployment is ready"  # a rolled-out version's status message
# While routers have not confirmed a switch, the running step says which every this long.
AWAITED_REPORT_S = 10.0


class StepFailed(Exception):
    """A step cannot succeed; `message` is the one sentence the task's `detail` carries."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class StepOutcome:
    status: StepStatus = StepStatus.DONE
    message: str | None = None
    unchanged: bool = False


def done(message: str | None = None) -> StepOutcome:
    return StepOutcome(StepStatus.DONE, message)


def skipped(message: str) -> StepOutcome:
    return StepOutcome(StepStatus.SKIPPED, message)


@dataclass
class StepContext:
    """What a step may touch: the store (through services), the signals, the settings, and its
    task's metadata (`metadata`, kept equal to what is stored)."""

    store: Store
    signals: Signals
    settings: Settings
    task_id: str
    served_name: str
    metadata: TaskMetadata
    kind: str = TaskKind.DEPLOY  # the task's kind: a migration's abort reuses the deploy's steps
    step: str | None = None  # the step running now (its progress goes to its record)
    green_probe: np.ndarray | None = None  # the smoke test's vectors, reused by the gate
    # blue's probe vectors, embedded while green starts (the gate's other half)
    blue_probe: asyncio.Task[np.ndarray] | None = None

    async def db(self, work: Callable[..., T], *args: Any) -> T:
        """Run `work(session, *args)` in one transaction, off the event loop; a record that
        is missing (a revision, a config) fails the step with the service's sentence."""

        def run() -> T:
            with self.store.session_scope() as session:
                return work(session, *args)

        try:
            return await asyncio.to_thread(run)
        except NotFoundError as exc:
            raise StepFailed(exc.message) from exc

    async def save(self, **values: Any) -> None:
        """Set metadata attributes and persist them at once (resume relies on it)."""
        updates = TaskMetadata.model_validate(values)
        for key in values:
            setattr(self.metadata, key, getattr(updates, key))
        await self.db(
            lambda s: tasks_service.save_metadata(s, task_id=self.task_id, updates=updates)
        )

    async def report(self, message: str) -> None:
        """Say how the running step stands (its record's message), while it waits."""
        if self.step is None or self.metadata.steps is None:
            return
        steps = [
            record.model_copy(update={"message": message}) if record.name == self.step else record
            for record in self.metadata.steps
        ]
        await self.save(steps=steps)

    async def wait_until(
        self, topic: Topic, check: Callable[[Session], T | None], timeout: float
    ) -> T | None:
        """Re-check after each signal (at most a second apart) until `check` gives a value."""
        deadline = asyncio.get_running_loop().time() + timeout
        with self.signals.listen(topic) as listener:  # a signal during the check is kept
            while True:
                result = await self.db(check)
                if result is not None:
                    return result
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return None
                await listener.wait(remaining)


# ----- deploy ------------------------------------------------------------------------------


async def snapshot(ctx: StepContext) -> StepOutcome:
    if ctx.metadata.revision_id:
        return done("resumed: the revision was already snapshotted")
    outcome, updates = await ctx.db(_snapshot_and_record, ctx)
    for key, value in updates.items():
        setattr(ctx.metadata, key, value)
    return outcome


def _snapshot_and_record(session: Session, ctx: StepContext) -> tuple[StepOutcome, dict]:
    """The snapshot (config version, deployment version, revision) and its record in the task
    commit together: a take-over never repeats it."""
    outcome, updates = _snapshot(session, ctx)
    tasks_service.save_metadata(
        session, task_id=ctx.task_id, updates=TaskMetadata.model_validate(updates)
    )
    return outcome, updates


def _snapshot(session: Session, ctx: StepContext) -> tuple[StepOutcome, dict[str, Any]]:
    workspace, name = split_served_name(ctx.served_name)
    meta = ctx.metadata
    _check_stage(session, ctx)
    latest = deployments_service.get_latest_deployment(session, workspace=workspace, name=name)
    requested = _requested_version(session, meta)  # pre-created by the deployments API
    if meta.rollback_of:
        target = workloads_service.get_revision_or_fail(session, revision_id=meta.rollback_of)
        wanted = RevisionSnapshot.of(target)
        version = deployments_service.get_by_revision(session, revision_id=target.id) or latest
        config = _deploy_config(session, ctx, name, version, exact=True)
    else:
        config = _deploy_config(session, ctx, name, requested or latest, exact=bool(requested))
        wanted = _snapshot_of_config(session, ctx.settings, config)
    live = workloads_service.get_live(session, served_name=ctx.served_name)
    blue = workloads_service.get_revision(session, revision_id=live.revision_id) if live else None
    staged = is_staged_deploy(ctx)
    if staged and blue is None:
        raise StepFailed(
            f"`{ctx.served_name}` has no live revision to stage a revision beside: deploy it "
            'with "strategy": "green" first'
        )
    if (
        blue is not None
        and not staged  # a staged revision is always a new one beside the live one
        and ctx.kind != TaskKind.ABORT  # the old model comes back anew: the migration must end
        and requested is None
        and wanted.matches(blue)
        and blue.ready_replicas
    ):
        unchanged = {"revision_id": blue.id, "deployment_id": blue.deployment_id}
        message = "this exact revision is already live and healthy"
        return StepOutcome(StepStatus.DONE, message, unchanged=True), unchanged
    deployment = requested or deployments_service.create_version(
        session,
        workspace=workspace,
        name=name,
        config=config,
        principal=principal_of(meta),
        project=latest.project if latest else None,
    )
    workloads_service.create_revision(
        session,
        revision_id=deployment.revision_id,
        deployment_id=deployment.id,
        served_name=ctx.served_name,
        snapshot=wanted,
    )
    rollback = meta.rollback_of
    what = f"a rollback to {rollback}" if rollback else f"config version {config.entity_version}"
    message = (
        f"revision {deployment.revision_id} (deployment version {deployment.entity_version}, "
        f"{what})"
    )
    return done(message), {
        "revision_id": deployment.revision_id,
        "previous_revision_id": blue.id if blue else None,
        "deployment_id": deployment.id,
        "config_version": config.entity_version,
    }


def is_staged_deploy(ctx: StepContext) -> bool:
    return ctx.kind == TaskKind.DEPLOY and ctx.metadata.strategy == "staged"


def _check_stage(session: Session, ctx: StepContext) -> None:
    """The migration's stage, checked again now that the task runs (it may have changed while
    the task was pending): a plain deploy or a rollback needs none; a staged deploy none or
    staged; an abort's rollback the adapted stage it was asked for."""
    stage = migrations_service.stage_of(session, served_name=ctx.served_name)
    if ctx.kind == TaskKind.ABORT:
        migration = migrations_service.get_migration(session, served_name=ctx.served_name)
        old = migration.old_revision_id if migration is not None else None
        if stage is not MigrationStage.ADAPTED or old != ctx.metadata.rollback_of:
            raise StepFailed(
                f"`{ctx.served_name}` is no longer adapted to revision {ctx.metadata.rollback_of} "
                f"(stage {stage}): there is nothing to abort"
            )
        return
    strategy = ctx.metadata.strategy or "green"
    refusal = tasks_service.migration_refusal(
        served_name=ctx.served_name, stage=stage, strategy=strategy
    )
    if refusal:
        raise StepFailed(refusal)


def principal_of(meta: TaskMetadata) -> Principal:
    """Who the new version records as its creator: the token that asked (its id and scopes),
    or, for a task no token asked for, the name it was initiated by."""
    name = meta.initiated_by or "admin"
    scopes = frozenset(Scope(group) for group in meta.principal_groups or [])
    return Principal(id=meta.principal_id or name, name=name, scopes=scopes)


def _requested_version(session: Session, meta: TaskMetadata) -> Any:
    """The deployment version this task was queued for, when the deployments API created it."""
    revision_id = meta.deployment_revision_id
    if not revision_id:
        return None
    deployment = deployments_service.get_by_revision(session, revision_id=revision_id)
    if deployment is None:
        raise StepFailed(f"The deployment version with revision {revision_id} no longer exists.")
    return deployment


def _deploy_config(
    session: Session, ctx: StepContext, name: str, base: Any, *, exact: bool = False
) -> Any:
    """The config to deploy: the task's config version (written now from the request's
    overrides, when it had some), else the base version's config (its exact version when
    `exact`: a pre-created version or a rollback target), else `name`."""
    meta = ctx.metadata
    config_name = meta.config or (base.config if base else name)
    workspace = meta.workspace or split_served_name(ctx.served_name)[0]
    version = meta.config_version
    if exact and base is not None:
        config_name, version = base.config, base.config_version
    elif version is None and meta.config_overrides:
        return _write_config_version(session, ctx, workspace, config_name, meta.config_overrides)
    if version:
        config = deployments_configs.get_config(
            session, workspace=workspace, name=config_name, version=version
        )
    else:
        config = deployments_configs.get_latest_config(
            session, workspace=workspace, name=config_name
        )
    if config is None:
        raise StepFailed(f"Deployment config '{workspace}/{config_name}' does not exist.")
    return config


def _write_config_version(
    session: Session, ctx: StepContext, workspace: str, name: str, overrides: dict[str, Any]
) -> Any:
    """The config version a Tasks API deploy's overrides make, written when the task runs."""
    policy = deployments_configs.ConfigPolicy.of(ctx.settings)
    try:
        latest = deployments_configs.get_latest_config_or_raise(
            session, workspace=workspace, name=name
        )
        return deployments_configs.ensure_config_version(
            session,
            workspace=workspace,
            name=name,
            overrides=overrides,
            model=registry_service.get(session, embedding_model_id=latest.model_name),
            policy=policy,
        )
    except GreenroomError as exc:
        raise StepFailed(f"The requested config cannot be deployed: {exc.message}") from exc


def _snapshot_of_config(session: Session, settings: Settings, config: Any) -> RevisionSnapshot:
    model = registry_service.get(session, embedding_model_id=config.model_name)
    if model is None:
        raise StepFailed(f"Embedding model '{config.model_name}' is not registered any more.")
    serving = deployments_configs.serving_settings(config)
    executor = serving.model_dump(exclude={"engine"})
    executor["threads"] = config.executor_config.get("threads") or default_threads()
    runtime = serving.runtime or settings.runtime
    executor["runtime"] = runtime
    return RevisionSnapshot(
        embedding_model_id=model.id,
        source=model.source,
        model_path=model.path,
        content_hash=model.content_hash,
        engine=config.engine,
        config=executor,
        runtime=runtime,
    )


async def start_green(ctx: StepContext) -> StepOutcome:
    revision_id = green_of(ctx)
    # A staged revision's replicas yield the CPU to the live ones (shadow traffic, re-indexing)
    priority = "low" if is_staged_deploy(ctx) else None
    wanted = await ctx.db(
        lambda s: workloads_service.want_replicas(s, revision_id=revision_id, priority=priority)
    )
    ctx.signals.notify(Topic.DESIRED)
    probe_blue_meanwhile(ctx)
    timeout = ctx.settings.rollout_ready_timeout_s
    if await ctx.wait_until(Topic.REPORTED, lambda s: _ready(s, revision_id), timeout) is None:
        raise StepFailed(
            f"Green did not become ready within {timeout:.0f} s; "
            "see the replica logs in the data dir."
        )
    return done(f"{wanted} replica(s) ready")


def probe_blue_meanwhile(ctx: StepContext) -> None:
    """Embed the probe texts on blue while green loads, so that the gate waits only for green
    (blue serves all along; its vectors are the same at either moment)."""
    blue_id = ctx.metadata.previous_revision_id
    if not blue_id or ctx.kind == TaskKind.ABORT or ctx.blue_probe is not None:
        return
    ctx.blue_probe = asyncio.get_running_loop().create_task(_probe(ctx, blue_id))
    ctx.blue_probe.add_done_callback(_retrieve)  # a failure is the gate's to report, or none's


def _retrieve(task: asyncio.Task[np.ndarray]) -> None:
    if not task.cancelled():
        task.exception()


async def _blue_vectors(ctx: StepContext, blue_id: str) -> np.ndarray:
    """Blue's probe vectors: those embedded while green started, else (a take-over, or that
    probe failed) embedded now."""
    early, ctx.blue_probe = ctx.blue_probe, None
    if early is not None:
        try:
            return await early
        except ProbeError:
            pass  # blue may have been busy restarting then: ask it again
    return await _probe(ctx, blue_id)


def _ready(session: Session, revision_id: str) -> bool | None:
    ready, problem = workloads_service.ready_or_broken(
        session, revision_id=revision_id, failed_starts=FAILED_STARTS
    )
    if problem is not None:
        raise StepFailed(f"Green's replicas failed to start: {problem}")
    return True if ready else None


async def smoke_test(ctx: StepContext) -> StepOutcome:
    green = await ctx.db(_probe_target, green_of(ctx))
    try:
        result = await embed_probes(green.model_path, green.replicas, secret=green.secret)
    except ProbeError as exc:
        raise StepFailed(f"Green failed the smoke test: {exc}.") from exc
    problem = smoke_problem(
        result,
        dimension=green.dimension,
        normalize=green.normalize,
        latency_bound_s=ctx.settings.smoke_latency_bound_s,
    )
    if problem:
        raise StepFailed(f"Green failed the smoke test: {problem}.")
    ctx.green_probe = result.vectors
    return done(f"{len(result.vectors)} probe vectors fine in {result.latency_s * 1000:.0f} ms")


@dataclass(frozen=True)
class ProbeTarget:
    """What probing a revision needs: its weights (for the tokenizer), replicas, secret, and
    what its vectors must look like."""

    model_path: Path
    replicas: list[dict[str, Any]]
    secret: Any
    dimension: int
    normalize: bool


def _probe_target(session: Session, revision_id: str) -> ProbeTarget:
    revision = workloads_service.get_revision_or_fail(session, revision_id=revision_id)
    model = registry_service.get(session, embedding_model_id=revision.embedding_model_id)
    info = inspect_model(Path(revision.model_path))
    # The registered dimension while the model still has the revision's weights; a revision
    # snapshotted from other weights (a rollback, an abort's old model) has its own.
    registered = model is not None and model.content_hash == revision.content_hash
    return ProbeTarget(
        model_path=Path(revision.model_path),
        replicas=list(revision.replicas),
        secret=revision.replica_secret,
        dimension=model.dimension if model is not None and registered else info.dimension,
        normalize=info.normalize,
    )


async def compatibility_gate(ctx: StepContext) -> StepOutcome:
    """Blue's and green's probe vectors compared. A staged deploy only measures (its revision
    takes no live traffic: the promotion decides); an abort after an adapted promotion skips
    it (the served name answered in the old revision's space all along)."""
    blue_id = ctx.metadata.previous_revision_id
    threshold = ctx.settings.compatibility_threshold
    staged = is_staged_deploy(ctx)
    if ctx.kind == TaskKind.ABORT:
        return skipped("the served name answers in this revision's space already (adapted)")
    if not blue_id:
        return skipped("no live revision to compare with")
    try:
        green_vectors = ctx.green_probe
        if green_vectors is None:  # resumed after a take-over: probe green again
            green_vectors = await _probe(ctx, green_of(ctx))
        blue_vectors = await _blue_vectors(ctx, blue_id)
    except ProbeError as exc:
        if staged:
            return skipped(f"not measured: cannot compare with the live revision: {exc}")
        raise StepFailed(f"Cannot compare blue and green: {exc}.") from exc
    cosine = mean_cosine(blue_vectors, green_vectors)
    reindex = cosine is None or cosine < threshold
    rounded = None if cosine is None else round(cosine, 6)
    await ctx.save(
        compatibility=Compatibility(
            mean_cosine=rounded, threshold=threshold, reindex_required=reindex
        )
    )
    shown = "different dimensions" if cosine is None else f"mean cosine {cosine:.3f}"
    if staged:
        if reindex:
            return done(
                f"measured: embedding space differs ({shown}, threshold {threshold}); promote "
                "adapted, or raw with allow_embedding_space_change and a re-index"
            )
        return done(f"measured: compatible ({shown}); a raw promotion keeps every index")
    if reindex and not ctx.metadata.allow_embedding_space_change:
        advice = (
            'promote with allow_embedding_space_change: true and re-index, or promote with "mode": '
            '"adapted"'
            if ctx.kind == TaskKind.PROMOTE
            else "deploy with allow_embedding_space_change: true and re-index, or keep the live "
            "model"
        )
        raise StepFailed(
            f"The new vectors are not comparable with the live ones ({shown}, threshold "
            f"{threshold}): every vector index built with the live model would break; {advice}."
        )
    if reindex:
        return done(f"embedding space changed ({shown}); re-index vectors (allowed by request)")
    return done(f"compatible: {shown}")


async def _probe(ctx: StepContext, revision_id: str) -> np.ndarray:
    target = await ctx.db(_probe_target, revision_id)
    return (await embed_probes(target.model_path, target.replicas, secret=target.secret)).vectors


async def switch(ctx: StepContext) -> StepOutcome:
    """Point the served name at green, then wait until every router with a fresh heartbeat
    serves green (a router whose heartbeat goes stale is gone): never done before that, so
    blue is not stopped under a router that still sends to it."""
    green_id = green_of(ctx)
    deployment_id = ctx.metadata.deployment_id or ""
    await ctx.db(
        lambda s: workloads_service.point_live(
            s, served_name=ctx.served_name, revision_id=green_id, deployment_id=deployment_id
        )
    )
    ctx.signals.notify(Topic.LIVE)
    await routers_confirm(ctx, lambda r: r.live.get(ctx.served_name) == green_id, "serve green")
    return done("routers serve green")


async def drain_blue(ctx: StepContext) -> StepOutcome:
    blue_id = ctx.metadata.previous_revision_id
    if not blue_id:
        return skipped("no blue revision")
    drained = await drain(ctx, blue_id)
    await retire(ctx, blue_id, RevisionPhase.STOPPED, "replaced by " + green_of(ctx))
    return done("blue drained and stopped" if drained else "grace period over; blue stopped")


async def finish(ctx: StepContext) -> StepOutcome:
    green_id = green_of(ctx)
    await ctx.db(
        lambda s: deployments_service.record_status(
            s, revision_id=green_id, status=DeploymentStatus.READY, message=READY_MESSAGE
        )
    )
    await ctx.save(result="rolled_out")
    return done()


def green_of(ctx: StepContext) -> str:
    revision_id = ctx.metadata.revision_id
    if not revision_id:
        raise StepFailed("The task has no revision: its snapshot step did not run.")
    return revision_id


# ----- shared: routers, drain, retire, roll back -------------------------------------------


RouterCondition = Callable[[Any], bool]


async def routers_confirm(ctx: StepContext, condition: RouterCondition, what: str) -> None:
    """Wait, with no bound, until every router with a fresh heartbeat satisfies `condition`
    (`serving.reports.routers_agree`); while it takes long, the running step's message names
    the routers awaited."""
    while True:
        agreed = await ctx.wait_until(
            Topic.ROUTERS, lambda s: _agree(s, condition), AWAITED_REPORT_S
        )
        if agreed:
            return
        awaited = await ctx.db(lambda s: _awaited(s, condition))
        if awaited:
            await ctx.report(f"waiting for router(s) {', '.join(awaited)} to {what}")


def _agree(session: Session, condition: RouterCondition) -> bool | None:
    return True if reports.routers_agree(session, condition=condition) else None


def _awaited(session: Session, condition: RouterCondition) -> list[str]:
    return sorted(r.router_id for r in reports.fresh_reports(session) if not condition(r))


def routes_to(revision_id: str) -> RouterCondition:
    """The router sends requests to the revision: it is live, or staged (pinned names, shadow
    traffic), for some served name."""
    return lambda report: reports.serves(report, revision_id)


async def drain(ctx: StepContext, revision_id: str) -> bool:
    """Wait until every fresh router has stopped routing to the revision (no bound: a router
    that missed the switch would send to a stopped revision), then, bounded by the grace
    period, until none has a batch in flight to it (a batch that reaches it once withdrawn is
    retried on the live revision by its router). False when the grace period ran out. A
    staged revision counts as routed to while a router still follows it."""
    await routers_confirm(
        ctx, lambda r: not routes_to(revision_id)(r), f"stop routing to {revision_id}"
    )
    drained = await ctx.wait_until(
        Topic.ROUTERS,
        lambda s: _agree(s, lambda r: not r.in_flight.get(revision_id, 0)),
        ctx.settings.drain_grace_s,
    )
    return bool(drained)


async def retire(ctx: StepContext, revision_id: str, phase: RevisionPhase, message: str) -> None:
    """Withdraw a revision's replicas and record it retired once none runs."""
    await ctx.db(lambda s: workloads_service.withdraw(s, revision_id=revision_id))
    ctx.signals.notify(Topic.DESIRED)
    await ctx.wait_until(Topic.REPORTED, lambda s: _stopped(s, revision_id), STOP_TIMEOUT_S)
    await ctx.db(
        lambda s: workloads_service.record_retired(
            s, revision_id=revision_id, phase=phase, message=message
        )
    )


def _stopped(session: Session, revision_id: str) -> bool | None:
    return True if workloads_service.is_stopped(session, revision_id=revision_id) else None


async def roll_back(ctx: StepContext, reason: str) -> None:
    """Failure before the switch: withdraw green; blue keeps serving untouched. A version the
    deployments API created for the task, failed before its snapshot, is ERROR too."""
    green_id = ctx.metadata.revision_id
    requested = ctx.metadata.deployment_revision_id
    if not green_id and requested:
        await ctx.db(
            lambda s: deployments_service.record_status(
                s, revision_id=requested, status=DeploymentStatus.ERROR, message=reason
            )
        )
    if not green_id or ctx.metadata.result == "unchanged":
        return
    if await ctx.db(lambda s: workloads_service.get_revision(s, revision_id=green_id) is None):
        return
    await ctx.db(lambda s: workloads_service.mark_failed(s, revision_id=green_id, reason=reason))
    await retire(ctx, green_id, RevisionPhase.FAILED, reason)
    await ctx.db(
        lambda s: deployments_service.record_status(
            s, revision_id=green_id, status=DeploymentStatus.ERROR, message=reason
        )
    )


def record_step_in_history(session: Session, revision_id: str, step: StepRecord) -> None:
    """The deployment version's history shows each finished step with its duration."""
    deployments_service.record_step(
        session, revision_id=revision_id, step=step.model_dump(mode="json")
    )


# ----- delete ------------------------------------------------------------------------------


async def unroute(ctx: StepContext) -> StepOutcome:
    if ctx.metadata.revision_id or ctx.metadata.staged_revision_id:
        return done("resumed: already unrouted")
    unrouted = await ctx.db(_unroute_and_record, ctx)
    if not unrouted:
        return skipped("nothing is live under this name")
    for key, value in unrouted.items():
        setattr(ctx.metadata, key, value)
    ctx.signals.notify(Topic.LIVE)
    staged = unrouted.get("staged_revision_id")
    also = f" (its migration ended; staged revision {staged} withdrawn too)" if staged else ""
    return done(f"'{ctx.served_name}' removed from the routers{also}")


def _unroute_and_record(session: Session, ctx: StepContext) -> dict[str, str]:
    """Unroute and record what was live and staged in the task, in one transaction: a
    take-over never loses the revisions it must withdraw."""
    unrouted = _unroute(session, ctx.served_name)
    if unrouted:
        tasks_service.save_metadata(
            session, task_id=ctx.task_id, updates=TaskMetadata.model_validate(unrouted)
        )
    return unrouted


def _unroute(session: Session, served_name: str) -> dict[str, str]:
    """Mark the versions DELETING (the latest, the live one and a staged one), end the
    migration (if any), then drop the live pointer; the revisions to withdraw (`revision_id`:
    the live one, `staged_revision_id`), none when nothing ran."""
    live = workloads_service.get_live(session, served_name=served_name)
    migration = migrations_service.get_migration(session, served_name=served_name)
    staged_id = migration.staged_revision_id if migration is not None else None
    deployments_service.mark_deleting(
        session, served_name=served_name, live_revision_id=live.revision_id if live else None
    )
    if staged_id:
        staged = deployments_service.get_by_revision(session, revision_id=staged_id)
        if staged is not None:
            deployments_service.mark_one_deleting(staged)
    migrations_service.end(session, served_name=served_name)
    unrouted = {"staged_revision_id": staged_id} if staged_id else {}
    if revision_id := workloads_service.unroute(session, served_name=served_name):
        unrouted["revision_id"] = revision_id
    return unrouted


def _deleted_revisions(ctx: StepContext) -> list[str]:
    meta = ctx.metadata
    return [rid for rid in (meta.revision_id, meta.staged_revision_id) if rid]


async def drain_deleted(ctx: StepContext) -> StepOutcome:
    revision_ids = _deleted_revisions(ctx)
    if not revision_ids:
        return skipped("nothing to drain")
    drained = [await drain(ctx, revision_id) for revision_id in revision_ids]
    return done("drained" if all(drained) else "grace period over")


async def stop_deleted(ctx: StepContext) -> StepOutcome:
    revision_ids = _deleted_revisions(ctx)
    if not revision_ids:
        return skipped("nothing to stop")
    for revision_id in revision_ids:
        await retire(ctx, revision_id, RevisionPhase.STOPPED, "deployment deleted")
    return done("replicas stopped")


async def finish_delete(ctx: StepContext) -> StepOutcome:
    await ctx.db(lambda s: deployments_service.mark_deleted(s, served_name=ctx.served_name))
    return done()
