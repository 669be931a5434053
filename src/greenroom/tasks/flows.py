"""Tasks API requests that need other domains: which config a deploy uses, whether a delete has
anything to delete, which revision a rollback brings back. They check the request against the
deployments, registry and workloads services, then store the task through the tasks service.

Rollback: a deploy task that brings back an earlier revision's snapshot as a new revision. The
target is the named revision, else the one the live revision replaced. A target whose weights
are not on disk as they were (their content hash no longer matches) cannot succeed: the task is
stored `refused` with the reason, and no worker ever runs it.

A deploy's config overrides are checked here (400 out of bounds, 422 not allowed on this
server) but written as a config version only when the task runs (its snapshot step): a task
canceled or refused while pending leaves no config version behind.

Embedding migrations (docs/api/migrations.md): a staged deploy, then promote, finish or abort
tasks. While a served name is staged or adapted, a plain deploy or a rollback of it is stored
`refused` (it would replace the live revision under the migration); a promote, finish or abort
the stage does not allow is a 409 with what to do instead. The rollout checks the stage again
when the task runs: it may have changed while the task was pending.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from greenroom.auth.service import Principal
from greenroom.config import Settings
from greenroom.deployments import configs as deployments_configs
from greenroom.deployments import service as deployments_service
from greenroom.deployments.configs import ConfigPolicy
from greenroom.errors import ConflictError, ModelSourceError, NotFoundError
from greenroom.migrations import service as migrations_service
from greenroom.migrations.states import MigrationStage
from greenroom.registry import service as registry_service
from greenroom.registry.weights import content_hash
from greenroom.schemas import split_served_name
from greenroom.tasks import service as tasks_service
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import (
    AbortRequest,
    FinishRequest,
    ModelDeletionRequest,
    ModelDeploymentRequest,
    PromoteRequest,
    RollbackRequest,
    TaskKind,
    TaskMetadata,
)
from greenroom.tasks.service import DEFAULT_WORKSPACE, IN_MIGRATION, canonical
from greenroom.tasks.states import TaskStatus, transition
from greenroom.workloads import service as workloads_service
from greenroom.workloads.schemas import RevisionSnapshot

if TYPE_CHECKING:  # the type only: the workloads service hands its rows on
    from greenroom.workloads.models import Revision


def config_policy(settings: Settings) -> ConfigPolicy:
    """What a deploy on this server may name (its enabled runtimes, its allowed variables)."""
    return ConfigPolicy.of(settings)


def create_deploy_task(
    db_session: Session,
    *,
    request: ModelDeploymentRequest,
    principal: Principal | None = None,
    initiated_by: str = "admin",
    deployment_target: str = "local",
    policy: deployments_configs.ConfigPolicy = deployments_configs.DEFAULT_POLICY,
) -> Task:
    """A pending deploy task (or the existing one of the same id and body).

    `principal`: who asks (a token); its name is the task's `initiated_by`, its id and scopes
    the auth context of the deployment version the rollout creates. Internal callers without a
    token name themselves in `initiated_by`. `deployment_target` is the server's runtime, unless
    the config names one. Overrides that change the config are kept in the task until it runs;
    overrides that change nothing leave it on the latest config version."""
    name = canonical(request.embedding_model_id)
    overrides = request.config.as_dict() if request.config is not None else {}
    body = {
        "embedding_model_id": name,
        "id": request.id,
        "config": overrides,
        "allow_embedding_space_change": request.allow_embedding_space_change,
        "strategy": request.strategy,
    }
    existing = tasks_service.existing_or_conflict(
        db_session, task_id=request.id, kind=TaskKind.DEPLOY, body=body
    )
    if existing is not None:
        return existing
    workspace, config_name = _deploy_target(db_session, name=name)
    latest = deployments_configs.get_latest_config_or_raise(
        db_session, workspace=workspace, name=config_name
    )
    engine, executor_config = deployments_configs.apply_overrides(latest, overrides, policy=policy)
    changed = engine != latest.engine or executor_config != latest.executor_config
    metadata = TaskMetadata(
        deployment_target=executor_config.get("runtime") or deployment_target,
        initiated_by=principal.name if principal is not None else initiated_by,
        workspace=latest.workspace,
        config=latest.name,
        allow_embedding_space_change=request.allow_embedding_space_change,
        strategy=request.strategy,
    )
    if changed:
        metadata.config_overrides = overrides
    else:
        metadata.config_version = latest.entity_version
    _record_principal(metadata, principal)
    task = tasks_service.new_task(
        db_session,
        kind=TaskKind.DEPLOY,
        task_id=request.id,
        name=name,
        body=body,
        metadata=metadata,
    )
    stage = migrations_service.stage_of(db_session, served_name=name)
    if reason := tasks_service.migration_refusal(
        served_name=name, stage=stage, strategy=request.strategy
    ):
        transition(task, TaskStatus.REFUSED, reason=reason)
    return task


def _record_principal(metadata: TaskMetadata, principal: Principal | None) -> None:
    """Who asked, for the deployment version a snapshot step creates (hidden in the API)."""
    if principal is not None:
        metadata.principal_id = principal.id
        metadata.principal_groups = sorted(str(scope) for scope in principal.scopes)


def create_delete_task(
    db_session: Session,
    *,
    request: ModelDeletionRequest,
    principal: Principal | None = None,
    initiated_by: str = "admin",
) -> Task:
    """A pending delete task (or the existing one of the same id and body); 404 when there is
    neither a registered model (workspace `default`) nor a deployment of that name."""
    name = canonical(request.embedding_model_id)
    body = {"embedding_model_id": name, "id": request.id, "reason": request.reason}
    existing = tasks_service.existing_or_conflict(
        db_session, task_id=request.id, kind=TaskKind.DELETE, body=body
    )
    if existing is not None:
        return existing
    _require_deletable(db_session, name=name)
    metadata = tasks_service.delete_metadata(
        reason=request.reason,
        initiated_by=principal.name if principal is not None else initiated_by,
    )
    return tasks_service.new_task(
        db_session,
        kind=TaskKind.DELETE,
        task_id=request.id,
        name=name,
        body=body,
        metadata=metadata,
    )


def _deploy_target(db_session: Session, *, name: str) -> tuple[str, str]:
    """The workspace and config name a deploy of this served name uses; 404 if unknown.

    In workspace `default` the name must be a registered embedding model; elsewhere a deployment
    of that name must exist. An existing deployment's config is used, else the model's own."""
    workspace, short_name = split_served_name(name)
    deployment = deployments_service.get_latest_deployment(
        db_session, workspace=workspace, name=short_name
    )
    if workspace == DEFAULT_WORKSPACE:
        if registry_service.get(db_session, embedding_model_id=short_name) is None:
            raise _unknown_model(name)
    elif deployment is None:
        raise _unknown_model(name)
    return workspace, deployment.config if deployment is not None else short_name


def _require_deletable(db_session: Session, *, name: str) -> None:
    """A delete needs a registered model (workspace `default`) or a deployment of that name."""
    workspace, short_name = split_served_name(name)
    if (
        deployments_service.get_latest_deployment(db_session, workspace=workspace, name=short_name)
        is not None
    ):
        return
    if (
        workspace == DEFAULT_WORKSPACE
        and registry_service.get(db_session, embedding_model_id=short_name) is not None
    ):
        return
    raise _unknown_model(name)


def _unknown_model(name: str) -> NotFoundError:
    return NotFoundError(f"Embedding model `{name}` is not found")


# ----- rollback: an earlier revision's snapshot, deployed again as a new revision ----------------


def create_rollback_task(
    db_session: Session,
    *,
    request: RollbackRequest,
    policy: ConfigPolicy,
    principal: Principal | None = None,
    initiated_by: str = "admin",
    deployment_target: str = "local",
) -> Task:
    """The rollback's deploy task, stored `refused` when its target cannot come back: weights
    changed, or settings this server no longer allows (`policy`: its runtime, its variables).
    `principal` as for `flows.create_deploy_task`."""
    name = tasks_service.canonical(request.embedding_model_id)
    target = workloads_service.get_rollback_target(
        db_session, served_name=name, revision_id=request.revision_id
    )
    metadata = TaskMetadata(
        deployment_target=deployment_target,
        initiated_by=principal.name if principal is not None else initiated_by,
        workspace=split_served_name(name)[0],
        rollback_of=target.id,
        allow_embedding_space_change=request.allow_embedding_space_change,
    )
    _record_principal(metadata, principal)
    body = {"embedding_model_id": name, "rollback_of": target.id}
    task = tasks_service.new_task(
        db_session, kind=TaskKind.DEPLOY, name=name, body=body, metadata=metadata
    )
    stage = migrations_service.stage_of(db_session, served_name=name)
    in_migration = IN_MIGRATION.format(name=name, stage=stage)
    if reason := (in_migration if stage is not MigrationStage.NONE else None) or cannot_return(
        target, policy=policy
    ):
        transition(task, TaskStatus.REFUSED, reason=reason)
    return task


def cannot_return(target: Revision, *, policy: ConfigPolicy) -> str | None:
    """Why a retired revision's snapshot cannot be deployed again (weights changed, settings
    this server no longer allows), or None."""
    snapshot = RevisionSnapshot.of(target)
    return weights_changed(snapshot, revision_id=target.id) or policy.problem(
        {**snapshot.config, "runtime": snapshot.runtime}
    )


def weights_changed(snapshot: RevisionSnapshot, *, revision_id: str) -> str | None:
    """Why the revision's weights cannot be brought back, or None when they are intact."""
    path = Path(snapshot.model_path)
    try:
        if path.is_dir() and content_hash(path) == snapshot.content_hash:
            return None
    except (OSError, ModelSourceError):
        pass
    return (
        f"The weights of revision {revision_id} are no longer on disk as they were (content "
        f"hash of {path} does not match {snapshot.content_hash[:12]}); register and deploy "
        "them again instead."
    )


# ----- embedding migrations: promote, finish, abort ---------------------------------------------


def create_promote_task(
    db_session: Session,
    *,
    request: PromoteRequest,
    principal: Principal | None = None,
    initiated_by: str = "admin",
) -> Task:
    """A pending promote task (or the existing one of the same id and body); 404 for an
    unknown served name, 409 unless it has a staged revision (and, to promote `adapted`, an
    adapter fitted for it)."""
    name = canonical(request.embedding_model_id)
    body = {
        "embedding_model_id": name,
        "id": request.id,
        "mode": request.mode,
        "allow_embedding_space_change": request.allow_embedding_space_change,
    }
    existing = tasks_service.existing_or_conflict(
        db_session, task_id=request.id, kind=TaskKind.PROMOTE, body=body
    )
    if existing is not None:
        return existing
    _require_known(db_session, name=name)
    staged = _staged_revision_or_conflict(db_session, name=name)
    if request.mode == "adapted":
        _require_adapter(db_session, name=name, staged_revision_id=staged)
    metadata = _migration_metadata(name, principal=principal, initiated_by=initiated_by)
    metadata.mode = request.mode
    metadata.allow_embedding_space_change = request.allow_embedding_space_change
    return tasks_service.new_task(
        db_session,
        kind=TaskKind.PROMOTE,
        task_id=request.id,
        name=name,
        body=body,
        metadata=metadata,
    )


def create_finish_task(
    db_session: Session,
    *,
    request: FinishRequest,
    principal: Principal | None = None,
    initiated_by: str = "admin",
) -> Task:
    """A pending finish task; 404 for an unknown served name, 409 unless it is adapted."""
    name = canonical(request.embedding_model_id)
    body = {"embedding_model_id": name, "id": request.id}
    existing = tasks_service.existing_or_conflict(
        db_session, task_id=request.id, kind=TaskKind.FINISH, body=body
    )
    if existing is not None:
        return existing
    _require_known(db_session, name=name)
    stage = migrations_service.stage_of(db_session, served_name=name)
    if stage is not MigrationStage.ADAPTED:
        raise ConflictError(tasks_service.not_adapted(name, stage))
    metadata = _migration_metadata(name, principal=principal, initiated_by=initiated_by)
    return tasks_service.new_task(
        db_session,
        kind=TaskKind.FINISH,
        task_id=request.id,
        name=name,
        body=body,
        metadata=metadata,
    )


def create_abort_task(
    db_session: Session,
    *,
    request: AbortRequest,
    policy: ConfigPolicy = deployments_configs.DEFAULT_POLICY,
    principal: Principal | None = None,
    initiated_by: str = "admin",
    deployment_target: str = "local",
) -> Task:
    """A pending abort task; 404 for an unknown served name, 409 when it is in no migration.

    Staged: the task withdraws the staged revision. Adapted: it brings the old model back as a
    new revision from the old revision's snapshot (a rollback's steps); stored `refused`, as a
    rollback is, when that snapshot cannot come back (weights changed, settings not allowed)."""
    name = canonical(request.embedding_model_id)
    body = {"embedding_model_id": name, "id": request.id}
    existing = tasks_service.existing_or_conflict(
        db_session, task_id=request.id, kind=TaskKind.ABORT, body=body
    )
    if existing is not None:
        return existing
    _require_known(db_session, name=name)
    migration = migrations_service.get_migration(db_session, served_name=name)
    stage = migrations_service.stage_of(db_session, served_name=name)
    if migration is None or stage is MigrationStage.NONE:
        raise ConflictError(
            f"`{name}` is not in a migration: there is no staged revision or adapted promotion "
            "to abort"
        )
    metadata = _migration_metadata(name, principal=principal, initiated_by=initiated_by)
    metadata.abort_of = "staged" if stage is MigrationStage.STAGED else "adapted"
    old = None
    if stage is MigrationStage.ADAPTED:
        old = _old_revision_or_conflict(
            db_session, name=name, revision_id=migration.old_revision_id
        )
        metadata.rollback_of = old.id
        metadata.allow_embedding_space_change = True  # the served name answered in old's space
        metadata.deployment_target = old.runtime or deployment_target
    task = tasks_service.new_task(
        db_session,
        kind=TaskKind.ABORT,
        task_id=request.id,
        name=name,
        body=body,
        metadata=metadata,
    )
    if old is not None and (reason := cannot_return(old, policy=policy)):
        transition(task, TaskStatus.REFUSED, reason=reason)
    return task


def _staged_revision_or_conflict(db_session: Session, *, name: str) -> str:
    migration = migrations_service.get_migration(db_session, served_name=name)
    stage = migrations_service.stage_of(db_session, served_name=name)
    if migration is None or stage is not MigrationStage.STAGED or not migration.staged_revision_id:
        raise ConflictError(tasks_service.no_staged_revision(name, stage))
    return migration.staged_revision_id


def _require_adapter(db_session: Session, *, name: str, staged_revision_id: str) -> None:
    """An adapted promotion needs an adapter fitted for the staged revision."""
    adapter = migrations_service.active_adapter(db_session, served_name=name)
    if adapter is None or adapter.revision_id != staged_revision_id:
        raise ConflictError(
            f"`{name}` has no adapter for its staged revision {staged_revision_id}: fit one "
            f"with POST {tasks_service.migration_path(name)}/adapter first, or promote it raw"
        )


def _old_revision_or_conflict(
    db_session: Session, *, name: str, revision_id: str | None
) -> Revision:
    """The revision whose space an adapted name answers in: what its abort brings back."""
    old = (
        workloads_service.get_revision(db_session, revision_id=revision_id) if revision_id else None
    )
    if old is None:
        raise ConflictError(
            f"`{name}` is adapted, but the revision it answers for ({revision_id}) is gone: "
            "finish the migration instead"
        )
    return old


def _require_known(db_session: Session, *, name: str) -> None:
    """A migration task needs a registered model (workspace `default`) or a deployment."""
    _require_deletable(db_session, name=name)


def _migration_metadata(
    name: str, *, principal: Principal | None, initiated_by: str
) -> TaskMetadata:
    metadata = TaskMetadata(
        initiated_by=principal.name if principal is not None else initiated_by,
        workspace=split_served_name(name)[0],
    )
    _record_principal(metadata, principal)
    return metadata
