"""Deployments together with the other domains: the registry (the embedding model a config
serves), the tasks (a new deployment version queues the same deploy task the Tasks API queues;
a DELETE of something that runs queues the served name's delete task) and the workloads (what
is live, which revisions have replicas).

The deployments domain's own modules (service, configs, deletion) import no other domain: what
they need of one, these functions fetch through that domain's service and pass in as plain
values. Plain functions, keyword-only arguments led by `db_session`; they never commit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy.orm import Session

from greenroom.auth.service import Principal
from greenroom.deployments import configs as deployments_configs
from greenroom.deployments import deletion as deployments_deletion
from greenroom.deployments import service as deployments_service
from greenroom.deployments.configs import DEFAULT_POLICY, ConfigPolicy
from greenroom.deployments.deletion import Activity, Deletion
from greenroom.deployments.models import Deployment, DeploymentConfig, served_name
from greenroom.deployments.schemas import (
    DeploymentConfigUpdate,
    DeploymentCreate,
    DeploymentStatusUpdate,
    DeploymentUpdate,
    LivePointer,
    RegisteredModel,
)
from greenroom.deployments.states import DELETION_STATUSES, DeploymentStatus
from greenroom.registry import service as registry_service
from greenroom.schemas import Strategy
from greenroom.tasks import service as tasks_service
from greenroom.tasks.schemas import TaskKind
from greenroom.workloads import service as workloads_service

log = logging.getLogger("greenroom.deployments")
DELETE_REASON = "deleted through the deployments API"


# ----- configs: the embedding model they serve comes from the registry ---------------------------


def registered_model(db_session: Session, *, model_name: str) -> RegisteredModel | None:
    return registry_service.get(db_session, embedding_model_id=model_name)


def create_config(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    model_name: str,
    policy: ConfigPolicy = DEFAULT_POLICY,
    **fields: Any,
) -> DeploymentConfig:
    """Version 1 of a config for the registered model `model_name` (400 when it is not);
    `fields`: `deployments.configs.create_config`'s other settings."""
    return deployments_configs.create_config(
        db_session,
        workspace=workspace,
        name=name,
        model_name=model_name,
        model=registered_model(db_session, model_name=model_name),
        policy=policy,
        **fields,
    )


def create_config_version(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    overrides: dict[str, Any],
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """A new config version with flat overrides, naming its model's current content hash."""
    return deployments_configs.create_config_version(
        db_session,
        workspace=workspace,
        name=name,
        overrides=overrides,
        model=_model_of_latest(db_session, workspace=workspace, name=name),
        policy=policy,
    )


def ensure_config_version(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    overrides: dict[str, Any],
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """The config a deploy with these overrides uses (the latest, or a new version)."""
    return deployments_configs.ensure_config_version(
        db_session,
        workspace=workspace,
        name=name,
        overrides=overrides,
        model=_model_of_latest(db_session, workspace=workspace, name=name),
        policy=policy,
    )


def update_config(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    config_in: DeploymentConfigUpdate,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> DeploymentConfig:
    """A new config version through the deployments API (its model must be registered)."""
    latest = deployments_configs.get_latest_config_or_raise(
        db_session, workspace=workspace, name=name
    )
    model_name = deployments_configs.model_name_after(latest, config_in)
    return deployments_configs.update_config(
        db_session,
        workspace=workspace,
        name=name,
        config_in=config_in,
        model=registered_model(db_session, model_name=model_name),
        policy=policy,
    )


def delete_config(
    db_session: Session, *, workspace: str, name: str, version: int | None = None
) -> None:
    """Delete a config (or one version) unless a deployment that is not DELETED uses it."""
    deployments_configs.delete_config(
        db_session,
        workspace=workspace,
        name=name,
        version=version,
        live_revision_ids=workloads_service.live_revision_ids(db_session),
    )


def _model_of_latest(db_session: Session, *, workspace: str, name: str) -> RegisteredModel | None:
    latest = deployments_configs.get_latest_config_or_raise(
        db_session, workspace=workspace, name=name
    )
    return registered_model(db_session, model_name=latest.model_name)


# ----- deployment versions and their tasks -------------------------------------------------------


def create_deployment(
    db_session: Session,
    *,
    workspace: str,
    deployment_in: DeploymentCreate,
    principal: Principal,
    deployment_target: str,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> Deployment:
    """Version 1 (CREATED) and its deploy task."""
    deployment = deployments_service.create_deployment(
        db_session,
        workspace=workspace,
        deployment_in=deployment_in,
        principal=principal,
        policy=policy,
    )
    _queue_rollout(
        db_session, deployment, initiated_by=principal.name, deployment_target=deployment_target
    )
    return deployment


def create_deployment_version(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    deployment_in: DeploymentUpdate,
    principal: Principal,
    deployment_target: str,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> Deployment:
    """The next version (PENDING) and its deploy task."""
    deployment = deployments_service.create_deployment_version(
        db_session,
        workspace=workspace,
        name=name,
        deployment_in=deployment_in,
        principal=principal,
        policy=policy,
    )
    _queue_rollout(
        db_session,
        deployment,
        initiated_by=principal.name,
        deployment_target=deployment_target,
        strategy=deployment_in.strategy,
    )
    return deployment


def update_status(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    version: int | None,
    status_in: DeploymentStatusUpdate,
) -> Deployment:
    """A controller's status of a version (the latest unless one is named); 409 when the state
    machine refuses it (DELETING or DELETED are refused while something of the version runs)."""
    deployment = deployments_service.get_version_or_latest(
        db_session, workspace=workspace, name=name, version=version
    )
    runs = DeploymentStatus(status_in.status) in DELETION_STATUSES and load_activity(
        db_session, served=deployment.served_name, versions=[deployment]
    ).may_run(deployment)
    return deployments_service.update_status(
        db_session, deployment=deployment, status_in=status_in, runs=runs
    )


def delete_deployment(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    version: int | None,
    principal: Principal,
) -> Deletion:
    """Mark the targeted versions (DELETING, or DELETED where nothing runs) and queue the served
    name's delete task where one is needed; or remove versions already DELETED."""
    versions = deployments_service.list_deployment_versions(
        db_session, workspace=workspace, name=name
    )
    activity = load_activity(db_session, served=served_name(workspace, name), versions=versions)
    deletion = deployments_deletion.delete_deployment(
        db_session, workspace=workspace, name=name, version=version, activity=activity
    )
    if deletion.needs_delete_task and deletion.deployment is not None:
        deployment = deletion.deployment
        task = tasks_service.queue_delete(
            db_session,
            served_name=deployment.served_name,
            reason=DELETE_REASON,
            initiated_by=principal.name,
            deployment_revision_id=deployment.revision_id if version is not None else None,
        )
        log.info("deployment %s: delete task %s queued", deployment.served_name, task.id)
    return deletion


def load_activity(db_session: Session, *, served: str, versions: Iterable[Deployment]) -> Activity:
    """What runs under a served name, from the workloads and tasks services; `versions`: the
    deployment versions whose revisions an unfinished task may name."""
    unfinished = tasks_service.unfinished(db_session, served_name=served)
    live = workloads_service.get_live(db_session, served_name=served)
    revisions = workloads_service.revisions_of(db_session, served_name=served)
    return Activity(
        served=served,
        live_revision_id=live.revision_id if live is not None else None,
        tasks_unfinished=bool(unfinished),
        delete_task_unfinished=any(task.kind == TaskKind.DELETE for task in unfinished),
        named_by_tasks=frozenset(
            version.revision_id
            for version in versions
            if any(tasks_service.names_revision(task, version.revision_id) for task in unfinished)
        ),
        with_replicas=frozenset(
            revision.id for revision in revisions if workloads_service.has_replicas(revision)
        ),
    )


def live_revisions(
    db_session: Session, *, deployments: Iterable[Deployment]
) -> dict[str, LivePointer]:
    """The live-revision pointer of the served name of each of these versions (one query)."""
    return workloads_service.live_revisions(
        db_session, served_names=(deployment.served_name for deployment in deployments)
    )


def _queue_rollout(
    db_session: Session,
    deployment: Deployment,
    *,
    initiated_by: str,
    deployment_target: str,
    strategy: Strategy = "green",
) -> None:
    config = deployments_configs.get_config_or_raise(
        db_session,
        workspace=deployment.workspace,
        name=deployment.config,
        version=deployment.config_version,
    )
    task = tasks_service.queue_deploy(
        db_session,
        served_name=deployment.served_name,
        config=config,
        deployment_revision_id=deployment.revision_id,
        initiated_by=initiated_by,
        deployment_target=deployment_target,
        strategy=strategy,
    )
    log.info(
        "deployment %s version %d: deploy task %s queued",
        deployment.served_name,
        deployment.entity_version,
        task.id,
    )
