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
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from greenroom.auth.service import Principal
from greenroom.config import Settings
from greenroom.deployments import configs as deployments_configs
from greenroom.deployments import service as deployments_service
from greenroom.deployments.configs import ConfigPolicy
from greenroom.errors import ModelSourceError, NotFoundError
from greenroom.registry import service as registry_service
from greenroom.registry.weights import content_hash
from greenroom.schemas import split_served_name
from greenroom.tasks import service as tasks_service
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import (
    ModelDeletionRequest,
    ModelDeploymentRequest,
    RollbackRequest,
    TaskKind,
    TaskMetadata,
)
from greenroom.tasks.service import DEFAULT_WORKSPACE, canonical
from greenroom.tasks.states import TaskStatus, transition
from greenroom.workloads import service as workloads_service
from greenroom.workloads.schemas import RevisionSnapshot


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
    )
    if changed:
        metadata.config_overrides = overrides
    else:
        metadata.config_version = latest.entity_version
    if principal is not None:
        metadata.principal_id = principal.id
        metadata.principal_groups = sorted(str(scope) for scope in principal.scopes)
    return tasks_service.new_task(
        db_session,
        kind=TaskKind.DEPLOY,
        task_id=request.id,
        name=name,
        body=body,
        metadata=metadata,
    )


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
    if principal is not None:
        metadata.principal_id = principal.id
        metadata.principal_groups = sorted(str(scope) for scope in principal.scopes)
    body = {"embedding_model_id": name, "rollback_of": target.id}
    task = tasks_service.new_task(
        db_session, kind=TaskKind.DEPLOY, name=name, body=body, metadata=metadata
    )
    snapshot = RevisionSnapshot.of(target)
    if reason := weights_changed(snapshot, revision_id=target.id) or policy.problem(
        {**snapshot.config, "runtime": snapshot.runtime}
    ):
        transition(task, TaskStatus.REFUSED, reason=reason)
    return task


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
