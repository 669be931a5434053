"""One function per step. Each reads and writes the store only; it never starts a process: it
writes desired state and waits for the state the runtime reports (DESIGN.md, who does what).
Every step is idempotent, so a worker that takes over a task runs an interrupted step again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from greenroom.config import Settings, default_threads
from greenroom.deployments import service as deployments_service
from greenroom.deployments.models import Deployment, DeploymentConfig, split_served_name
from greenroom.deployments.schemas import ServingSettings
from greenroom.deployments.states import DeploymentStatus, set_status
from greenroom.registry.models import EmbeddingModel
from greenroom.registry.weights import inspect_model
from greenroom.rollout.plan import StepFailed, StepStatus
from greenroom.rollout.probes import ProbeError, embed_probes, mean_cosine, smoke_problem
from greenroom.serving.models import RouterReport
from greenroom.signals import Signals, Topic
from greenroom.store.db import Store, utcnow
from greenroom.tasks.models import Task
from greenroom.workloads.models import LiveRevision, Revision
from greenroom.workloads.states import RevisionPhase, set_phase

T = TypeVar("T")
ROUTER_FRESH_S = 10.0  # a router that has not reported for this long is gone
ROUTER_SWITCH_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 60.0
FAILED_STARTS = 2  # a green replica that failed to start this often fails the rollout


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
    """What a step may touch: the store, the signals, the settings, and its task's metadata."""

    store: Store
    signals: Signals
    settings: Settings
    task_id: str
    served_name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    green_probe: np.ndarray | None = None  # the smoke test's vectors, reused by the gate

    async def db(self, work: Callable[..., T], *args: Any) -> T:
        """Run `work(session, *args)` in one transaction, off the event loop."""

        def run() -> T:
            with self.store.session_scope() as session:
                return work(session, *args)

        return await asyncio.to_thread(run)

    async def save(self, **updates: Any) -> None:
        """Merge values into the task's metadata (persisted at once: resume relies on it)."""
        self.metadata.update(updates)

        def write(session: Session) -> None:
            task = session.get(Task, self.task_id)
            assert task is not None
            task.task_metadata = {**task.task_metadata, **updates}

        await self.db(write)

    async def wait_until(
        self, topic: Topic, check: Callable[[Session], T | None], timeout: float
    ) -> T | None:
        """Re-check after each signal (at most a second apart) until `check` gives a value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = await self.db(check)
            if result is not None:
                return result
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            await self.signals.wait(topic, remaining)


# ----- deploy ------------------------------------------------------------------------------


async def snapshot(ctx: StepContext) -> StepOutcome:
    if ctx.metadata.get("revision_id"):
        return done("resumed: the revision was already snapshotted")
    result = await ctx.db(_snapshot_and_record, ctx)
    ctx.metadata.update(result["metadata"])
    if result.get("unchanged"):
        return StepOutcome(StepStatus.DONE, result["message"], unchanged=True)
    return done(result["message"])


def _snapshot_and_record(session: Session, ctx: StepContext) -> dict[str, Any]:
    """The snapshot and its record in the task commit together: a take-over never repeats it."""
    result = _snapshot(session, ctx)
    task = session.get(Task, ctx.task_id)
    assert task is not None
    task.task_metadata = {**task.task_metadata, **result["metadata"]}
    return result


@dataclass(frozen=True)
class Snapshot:
    """What a new revision will run: weights and serving settings."""

    embedding_model_id: str
    source: str
    model_path: str
    content_hash: str
    engine: str
    config: dict[str, Any]
    runtime: str

    def matches(self, revision: Revision) -> bool:
        return revision.snapshot() == {
            "content_hash": self.content_hash,
            "engine": self.engine,
            "config": self.config,
            "runtime": self.runtime,
        }


def _snapshot(session: Session, ctx: StepContext) -> dict[str, Any]:
    workspace, name = split_served_name(ctx.served_name)
    latest = deployments_service.get_latest_deployment(session, workspace=workspace, name=name)
    requested = _requested_version(session, ctx)  # pre-created by the deployments API
    rollback_of = ctx.metadata.get("rollback_of")
    if rollback_of:
        target = _revision(session, rollback_of)
        wanted = _snapshot_of_revision(target)
        version = _version_of(session, target) or latest
        config = _deploy_config(session, ctx, workspace, name, version, exact=True)
    else:
        config = _deploy_config(
            session, ctx, workspace, name, requested or latest, exact=requested is not None
        )
        wanted = _snapshot_of_config(session, ctx, config)
    live = session.get(LiveRevision, ctx.served_name)
    blue = session.get(Revision, live.revision_id) if live else None
    unchanged = blue is not None and wanted.matches(blue) and blue.ready_replicas >= 1
    if unchanged and requested is None:
        assert blue is not None
        return {
            "unchanged": True,
            "message": "this exact revision is already live and healthy",
            "metadata": {"revision_id": blue.id, "deployment_id": blue.deployment_id},
        }
    deployment = requested or _new_deployment_version(session, ctx, workspace, name, latest, config)
    session.add(
        Revision(
            id=deployment.revision_id,
            deployment_id=deployment.id,
            served_name=ctx.served_name,
            embedding_model_id=wanted.embedding_model_id,
            source=wanted.source,
            model_path=wanted.model_path,
            content_hash=wanted.content_hash,
            engine=wanted.engine,
            config=wanted.config,
            runtime=wanted.runtime,
            phase=RevisionPhase.CREATING,
        )
    )
    what = (
        f"a rollback to {rollback_of}" if rollback_of else f"config version {config.entity_version}"
    )
    return {
        "message": f"revision {deployment.revision_id} (deployment version "
        f"{deployment.entity_version}, {what})",
        "metadata": {
            "revision_id": deployment.revision_id,
            "previous_revision_id": blue.id if blue else None,
            "deployment_id": deployment.id,
            "config_version": config.entity_version,
        },
    }


def _snapshot_of_config(session: Session, ctx: StepContext, config: DeploymentConfig) -> Snapshot:
    model = session.get(EmbeddingModel, config.model_name)
    if model is None:
        raise StepFailed(f"Embedding model '{config.model_name}' is not registered any more.")
    serving = ServingSettings(engine=config.engine, **config.executor_config)
    executor = serving.model_dump(exclude={"engine"})
    executor["threads"] = config.executor_config.get("threads") or default_threads()
    runtime = serving.runtime or ctx.settings.runtime
    executor["runtime"] = runtime
    return Snapshot(
        embedding_model_id=model.id,
        source=model.source,
        model_path=model.path,
        content_hash=model.content_hash,
        engine=config.engine,
        config=executor,
        runtime=runtime,
    )


def _snapshot_of_revision(revision: Revision) -> Snapshot:
    return Snapshot(
        embedding_model_id=revision.embedding_model_id,
        source=revision.source,
        model_path=revision.model_path,
        content_hash=revision.content_hash,
        engine=revision.engine,
        config=dict(revision.config),
        runtime=revision.runtime,
    )


def _version_of(session: Session, revision: Revision) -> Deployment | None:
    return _version_by_revision(session, revision.id)


def _requested_version(session: Session, ctx: StepContext) -> Deployment | None:
    """The deployment version this task was queued for, when the deployments API created it."""
    revision_id = ctx.metadata.get("deployment_revision_id")
    if not revision_id:
        return None
    deployment = _version_by_revision(session, revision_id)
    if deployment is None:
        raise StepFailed(f"The deployment version with revision {revision_id} no longer exists.")
    return deployment


def _deploy_config(
    session: Session,
    ctx: StepContext,
    workspace: str,
    name: str,
    base: Deployment | None,
    *,
    exact: bool = False,
) -> DeploymentConfig:
    """The config to deploy: the task's config version, else the base version's config (its
    exact version when `exact`: a pre-created version or a rollback target), else `name`."""
    config_name = ctx.metadata.get("config") or (base.config if base else name)
    config_workspace = ctx.metadata.get("workspace", workspace)
    version = ctx.metadata.get("config_version")
    if exact and base is not None:
        config_name, version = base.config, base.config_version
    query = select(DeploymentConfig).where(
        DeploymentConfig.workspace == config_workspace, DeploymentConfig.name == config_name
    )
    if version:
        query = query.where(DeploymentConfig.entity_version == version)
    config = session.scalars(
        query.order_by(DeploymentConfig.entity_version.desc()).limit(1)
    ).first()
    if config is None:
        raise StepFailed(f"Deployment config '{config_workspace}/{config_name}' does not exist.")
    return config


def _new_deployment_version(
    session: Session,
    ctx: StepContext,
    workspace: str,
    name: str,
    latest: Deployment | None,
    config: DeploymentConfig,
) -> Deployment:
    deployment = Deployment(
        workspace=workspace,
        name=name,
        entity_version=(latest.entity_version + 1) if latest else 1,
        project=latest.project if latest else None,
        config=config.name,
        config_version=config.entity_version,
        auth_context={"principal_id": ctx.metadata.get("initiated_by")},
    )
    if latest is not None:
        deployment.id = latest.id
    first = latest is None
    set_status(
        deployment,
        DeploymentStatus.CREATED if first else DeploymentStatus.PENDING,
        "Deployment created" if first else "Deployment update pending",
    )
    session.add(deployment)
    session.flush()
    return deployment


async def start_green(ctx: StepContext) -> StepOutcome:
    revision_id = ctx.metadata["revision_id"]
    wanted = await ctx.db(_want_replicas, revision_id)
    ctx.signals.notify(Topic.DESIRED)
    ready = await ctx.wait_until(
        Topic.REPORTED,
        lambda s: _ready_or_broken(s, revision_id),
        ctx.settings.rollout_ready_timeout_s,
    )
    if ready is None:
        raise StepFailed(
            f"Green did not become ready within {ctx.settings.rollout_ready_timeout_s:.0f} s; "
            "see the replica logs in the data dir."
        )
    return done(f"{wanted} replica(s) ready")


def _want_replicas(session: Session, revision_id: str) -> int:
    revision = _revision(session, revision_id)
    revision.desired_replicas = int(revision.config.get("replicas", 1))
    set_phase(revision, RevisionPhase.INITIALIZING, "replicas loading and warming up")
    return revision.desired_replicas


def _ready_or_broken(session: Session, revision_id: str) -> bool | None:
    revision = _revision(session, revision_id)
    if revision.ready_replicas >= revision.desired_replicas > 0:
        return True
    for replica in revision.replicas:
        if replica["state"] != "ready" and replica["restarts"] >= FAILED_STARTS:
            raise StepFailed(f"Green's replicas failed to start: {replica['message']}")
    return None


async def smoke_test(ctx: StepContext) -> StepOutcome:
    green = await ctx.db(_probe_target, ctx.metadata["revision_id"])
    try:
        result = await embed_probes(
            Path(green["model_path"]), green["replicas"], secret=green["secret"]
        )
    except ProbeError as exc:
        raise StepFailed(f"Green failed the smoke test: {exc}.") from exc
    problem = smoke_problem(
        result,
        dimension=green["dimension"],
        normalize=green["normalize"],
        latency_bound_s=ctx.settings.smoke_latency_bound_s,
    )
    if problem:
        raise StepFailed(f"Green failed the smoke test: {problem}.")
    ctx.green_probe = result.vectors
    return done(f"{len(result.vectors)} probe vectors fine in {result.latency_s * 1000:.0f} ms")


def _probe_target(session: Session, revision_id: str) -> dict[str, Any]:
    revision = _revision(session, revision_id)
    model = session.get(EmbeddingModel, revision.embedding_model_id)
    info = inspect_model(Path(revision.model_path))
    return {
        "model_path": revision.model_path,
        "replicas": list(revision.replicas),
        "secret": revision.replica_secret,
        "dimension": model.dimension if model else info.dimension,
        "normalize": info.normalize,
    }


async def compatibility_gate(ctx: StepContext) -> StepOutcome:
    blue_id = ctx.metadata.get("previous_revision_id")
    threshold = ctx.settings.compatibility_threshold
    if not blue_id:
        return skipped("no live revision to compare with")
    blue = await ctx.db(_probe_target, blue_id)
    try:
        green_vectors = ctx.green_probe
        if green_vectors is None:  # resumed after a take-over: probe green again
            green = await ctx.db(_probe_target, ctx.metadata["revision_id"])
            green_vectors = (
                await embed_probes(
                    Path(green["model_path"]), green["replicas"], secret=green["secret"]
                )
            ).vectors
        blue_vectors = (
            await embed_probes(Path(blue["model_path"]), blue["replicas"], secret=blue["secret"])
        ).vectors
    except ProbeError as exc:
        raise StepFailed(f"Cannot compare blue and green: {exc}.") from exc
    cosine = mean_cosine(blue_vectors, green_vectors)
    reindex = cosine is None or cosine < threshold
    await ctx.save(
        compatibility={
            "mean_cosine": None if cosine is None else round(cosine, 6),
            "threshold": threshold,
            "reindex_required": reindex,
        }
    )
    shown = "different dimensions" if cosine is None else f"mean cosine {cosine:.3f}"
    if reindex and not ctx.metadata.get("allow_embedding_space_change"):
        raise StepFailed(
            f"The new vectors are not comparable with the live ones ({shown}, threshold "
            f"{threshold}): every vector index built with the live model would break; deploy "
            "with allow_embedding_space_change: true and re-index, or keep the live model."
        )
    if reindex:
        return done(f"embedding space changed ({shown}); re-index vectors (allowed by request)")
    return done(f"compatible: {shown}")


async def switch(ctx: StepContext) -> StepOutcome:
    green_id = ctx.metadata["revision_id"]
    await ctx.db(_point_to, ctx.served_name, green_id, ctx.metadata)
    ctx.signals.notify(Topic.LIVE)
    switched = await ctx.wait_until(
        Topic.ROUTERS,
        lambda s: _routers_agree(s, lambda r: r.live.get(ctx.served_name) == green_id),
        ROUTER_SWITCH_TIMEOUT_S,
    )
    return done("routers serve green" if switched else "switched; some router did not confirm")


def _point_to(session: Session, served_name: str, green_id: str, metadata: dict) -> None:
    live = session.get(LiveRevision, served_name)
    if live is None:
        live = LiveRevision(served_name=served_name, revision_id=green_id)
        session.add(live)
    if live.revision_id != green_id:
        live.previous_revision_id = live.revision_id
        live.revision_id = green_id
    live.deployment_id = metadata["deployment_id"]
    set_phase(_revision(session, green_id), RevisionPhase.RUNNING)


def _routers_agree(session: Session, condition: Callable[[RouterReport], bool]) -> bool | None:
    fresh_since = utcnow() - timedelta(seconds=ROUTER_FRESH_S)
    reports = session.scalars(
        select(RouterReport).where(RouterReport.heartbeat_at >= fresh_since)
    ).all()
    return True if all(condition(report) for report in reports) else None


async def drain_blue(ctx: StepContext) -> StepOutcome:
    blue_id = ctx.metadata.get("previous_revision_id")
    if not blue_id:
        return skipped("no blue revision")
    drained = await drain(ctx, blue_id)
    await retire(ctx, blue_id, RevisionPhase.STOPPED, "replaced by " + ctx.metadata["revision_id"])
    return done("blue drained and stopped" if drained else "grace period over; blue stopped")


async def finish(ctx: StepContext) -> StepOutcome:
    await ctx.db(
        _mark_deployment, ctx.metadata["revision_id"], DeploymentStatus.READY, "Deployment is ready"
    )
    await ctx.save(result="rolled_out")
    return done()


# ----- shared: drain, retire, roll back ----------------------------------------------------


async def drain(ctx: StepContext, revision_id: str) -> bool:
    """Wait (bounded by the grace period) until no router has anything in flight to it."""
    drained = await ctx.wait_until(
        Topic.ROUTERS,
        lambda s: _routers_agree(
            s,
            lambda r: revision_id not in r.live.values() and not r.in_flight.get(revision_id, 0),
        ),
        ctx.settings.drain_grace_s,
    )
    return bool(drained)


async def retire(ctx: StepContext, revision_id: str, phase: RevisionPhase, message: str) -> None:
    """Withdraw a revision's replicas and record it retired once none runs."""
    await ctx.db(_withdraw, revision_id)
    ctx.signals.notify(Topic.DESIRED)
    await ctx.wait_until(Topic.REPORTED, lambda s: _stopped(s, revision_id), STOP_TIMEOUT_S)
    await ctx.db(_retired, revision_id, phase, message)


def _stopped(session: Session, revision_id: str) -> bool | None:
    revision = _revision(session, revision_id)
    return True if revision.ready_replicas == 0 and not revision.replicas else None


def _withdraw(session: Session, revision_id: str) -> None:
    revision = _revision(session, revision_id)
    revision.desired_replicas = 0
    if revision.phase not in (RevisionPhase.FAILED, RevisionPhase.STOPPED):
        set_phase(revision, RevisionPhase.TERMINATING, "draining and stopping")


def _retired(session: Session, revision_id: str, phase: RevisionPhase, message: str) -> None:
    revision = _revision(session, revision_id)
    set_phase(revision, phase, message)
    revision.deleted_at = revision.deleted_at or utcnow()


async def roll_back(ctx: StepContext, reason: str) -> None:
    """Failure before the switch: withdraw green; blue keeps serving untouched."""
    green_id = ctx.metadata.get("revision_id")
    if not green_id or ctx.metadata.get("result") == "unchanged":
        return
    if await ctx.db(lambda s: s.get(Revision, green_id) is None):
        return
    await ctx.db(lambda s: set_phase(_revision(s, green_id), RevisionPhase.FAILED, reason))
    await retire(ctx, green_id, RevisionPhase.FAILED, reason)
    await ctx.db(_mark_deployment, green_id, DeploymentStatus.ERROR, reason)


def _mark_deployment(
    session: Session, revision_id: str, status: DeploymentStatus, message: str
) -> None:
    deployment = _version_by_revision(session, revision_id)
    if deployment is not None:
        set_status(deployment, status, message)


def _revision(session: Session, revision_id: str) -> Revision:
    revision = session.get(Revision, revision_id)
    if revision is None:
        raise StepFailed(f"Revision {revision_id} does not exist.")
    return revision


def record_step_in_history(session: Session, revision_id: str, step: dict[str, Any]) -> None:
    """The deployment version's history shows each finished step with its duration."""
    deployment = _version_by_revision(session, revision_id)
    if deployment is not None and deployment.status not in (
        DeploymentStatus.READY,
        DeploymentStatus.ERROR,
    ):
        message = f"{step['name']} {step['status']} in {step['duration_ms']} ms"
        set_status(deployment, DeploymentStatus(deployment.status), message)


# ----- delete ------------------------------------------------------------------------------


async def unroute(ctx: StepContext) -> StepOutcome:
    if ctx.metadata.get("revision_id"):
        return done("resumed: already unrouted")
    revision_id = await ctx.db(_unroute, ctx.served_name)
    if revision_id is None:
        return skipped("nothing is live under this name")
    await ctx.save(revision_id=revision_id)
    ctx.signals.notify(Topic.LIVE)
    return done(f"'{ctx.served_name}' removed from the routers")


def _unroute(session: Session, served_name: str) -> str | None:
    live = session.get(LiveRevision, served_name)
    workspace, name = split_served_name(served_name)
    targets = [deployments_service.get_latest_deployment(session, workspace=workspace, name=name)]
    if live is not None:
        targets.append(_version_by_revision(session, live.revision_id))
    for deployment in targets:
        if deployment is not None and deployment.status != DeploymentStatus.DELETED:
            set_status(deployment, DeploymentStatus.DELETING, "Deployment is being deleted")
    if live is None:
        return None
    revision_id = live.revision_id
    session.delete(live)
    return revision_id


def _version_by_revision(session: Session, revision_id: str) -> Deployment | None:
    return session.scalars(select(Deployment).where(Deployment.revision_id == revision_id)).first()


async def drain_deleted(ctx: StepContext) -> StepOutcome:
    revision_id = ctx.metadata.get("revision_id")
    if not revision_id:
        return skipped("nothing to drain")
    drained = await drain(ctx, revision_id)
    return done("drained" if drained else "grace period over")


async def stop_deleted(ctx: StepContext) -> StepOutcome:
    revision_id = ctx.metadata.get("revision_id")
    if not revision_id:
        return skipped("nothing to stop")
    await retire(ctx, revision_id, RevisionPhase.STOPPED, "deployment deleted")
    return done("replicas stopped")


async def finish_delete(ctx: StepContext) -> StepOutcome:
    await ctx.db(_mark_deleted, ctx.served_name)
    return done()


def _mark_deleted(session: Session, served_name: str) -> None:
    """Every version of the name marked for deletion is gone now: nothing of it runs."""
    workspace, name = split_served_name(served_name)
    deleting = session.scalars(
        select(Deployment).where(
            Deployment.workspace == workspace,
            Deployment.name == name,
            Deployment.status == DeploymentStatus.DELETING,
        )
    ).all()
    for deployment in deleting:
        set_status(deployment, DeploymentStatus.DELETED, "Deployment deleted")
