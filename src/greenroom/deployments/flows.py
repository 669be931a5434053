"""Deployments and tasks together: one system. A new deployment version queues the same deploy
task the Tasks API queues (its rollout snapshots that version and moves its status); a DELETE of
something that runs queues the served name's delete task.

Plain functions, keyword-only arguments led by `db_session`; they never commit.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from greenroom.deployments import service as deployments_service
from greenroom.deployments.models import Deployment
from greenroom.deployments.schemas import DeploymentCreate, DeploymentUpdate
from greenroom.tasks import service as tasks_service

log = logging.getLogger("greenroom.deployments")
DELETE_REASON = "deleted through the deployments API"


def create_deployment(
    db_session: Session,
    *,
    workspace: str,
    deployment_in: DeploymentCreate,
    caller: deployments_service.Caller,
    deployment_target: str,
    policy: deployments_service.ConfigPolicy = deployments_service.DEFAULT_POLICY,
) -> Deployment:
    """Version 1 (CREATED) and its deploy task."""
    deployment = deployments_service.create_deployment(
        db_session,
        workspace=workspace,
        deployment_in=deployment_in,
        caller=caller,
        policy=policy,
    )
    _queue_rollout(
        db_session, deployment, initiated_by=caller.name, deployment_target=deployment_target
    )
    return deployment


def create_deployment_version(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    deployment_in: DeploymentUpdate,
    caller: deployments_service.Caller,
    deployment_target: str,
    policy: deployments_service.ConfigPolicy = deployments_service.DEFAULT_POLICY,
) -> Deployment:
    """The next version (PENDING) and its deploy task."""
    deployment = deployments_service.create_deployment_version(
        db_session,
        workspace=workspace,
        name=name,
        deployment_in=deployment_in,
        caller=caller,
        policy=policy,
    )
    _queue_rollout(
        db_session, deployment, initiated_by=caller.name, deployment_target=deployment_target
    )
    return deployment


def delete_deployment(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    version: int | None,
    caller: deployments_service.Caller,
) -> deployments_service.Deletion:
    """Mark the targeted versions (DELETING, or DELETED where nothing runs) and queue the served
    name's delete task where one is needed; or remove versions already DELETED."""
    deletion = deployments_service.delete_deployment(
        db_session, workspace=workspace, name=name, version=version
    )
    if deletion.needs_delete_task and deletion.deployment is not None:
        deployment = deletion.deployment
        task = tasks_service.queue_delete(
            db_session,
            served_name=deployment.served_name,
            reason=DELETE_REASON,
            initiated_by=caller.name,
            deployment_revision_id=deployment.revision_id if version is not None else None,
        )
        log.info("deployment %s: delete task %s queued", deployment.served_name, task.id)
    return deletion


def _queue_rollout(
    db_session: Session, deployment: Deployment, *, initiated_by: str, deployment_target: str
) -> None:
    config = deployments_service.get_config_or_raise(
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
    )
    log.info(
        "deployment %s version %d: deploy task %s queued",
        deployment.served_name,
        deployment.entity_version,
        task.id,
    )
