"""Deployment versions: versioned per `workspace/name`, one row per version; every version is one
revision of the workloads API (`revision_id`). `create_version` is the one function that writes
a version (the deployments API and the rollout both call it); every status change goes through
`deployments.states.transition`.

Plain functions, keyword-only arguments led by `db_session`; they flush where a constraint must be
checked and never commit (the caller's session scope does). What they need of other domains comes
in as plain values (the caller's `Principal`, whether something of a version runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from greenroom.deployments.configs import DEFAULT_POLICY, ConfigPolicy, resolve_config
from greenroom.deployments.models import Deployment, DeploymentConfig, split_served_name
from greenroom.deployments.schemas import DeploymentCreate, DeploymentStatusUpdate, DeploymentUpdate
from greenroom.deployments.states import (
    Actor,
    DeploymentStatus,
    TransitionResult,
    current_status,
    transition,
)
from greenroom.errors import ConflictError, InvalidTransitionError, NotFoundError
from greenroom.pagination import Page, filtered, latest_versions, paginate

if TYPE_CHECKING:  # the value only: who asks (the auth domain's request principal)
    from greenroom.auth.service import Principal

DEPLOYMENT_SORT_FIELDS = (
    "name",
    "created_at",
    "updated_at",
    "entity_version",
    "status",
    "config",
    "config_version",
    "project",
)
DEPLOYMENT_FILTERS = ("name", "status", "config", "project")
CREATED_MESSAGE = "Deployment created"
PENDING_MESSAGE = "Deployment update pending"
READY_AGAIN_MESSAGE = "Replicas are ready again"
DELETING_MESSAGE = "Deployment is being deleted"
DELETED_MESSAGE = "Deployment deleted"


# ----- reading -----------------------------------------------------------------------------------


def get_deployment(
    db_session: Session, *, workspace: str, name: str, version: int
) -> Deployment | None:
    return db_session.scalars(
        select(Deployment).where(
            Deployment.workspace == workspace,
            Deployment.name == name,
            Deployment.entity_version == version,
        )
    ).first()


def get_deployment_or_raise(
    db_session: Session, *, workspace: str, name: str, version: int
) -> Deployment:
    deployment = get_deployment(db_session, workspace=workspace, name=name, version=version)
    if deployment is None:
        raise NotFoundError(f"Deployment '{workspace}/{name}' version {version} not found")
    return deployment


def get_by_revision(db_session: Session, *, revision_id: str) -> Deployment | None:
    """The version whose revision this is."""
    return db_session.scalars(
        select(Deployment).where(Deployment.revision_id == revision_id)
    ).first()


def get_by_revisions(db_session: Session, *, revision_ids: list[str]) -> dict[str, Deployment]:
    """The version of each of these revisions that has one, by revision id (one query)."""
    if not revision_ids:
        return {}
    found = db_session.scalars(select(Deployment).where(Deployment.revision_id.in_(revision_ids)))
    return {deployment.revision_id: deployment for deployment in found}


def get_latest_deployment(db_session: Session, *, workspace: str, name: str) -> Deployment | None:
    """The latest version of a deployment, whatever its status."""
    return db_session.scalars(
        select(Deployment)
        .where(Deployment.workspace == workspace, Deployment.name == name)
        .order_by(Deployment.entity_version.desc())
        .limit(1)
    ).first()


def get_latest_deployment_or_raise(db_session: Session, *, workspace: str, name: str) -> Deployment:
    deployment = get_latest_deployment(db_session, workspace=workspace, name=name)
    if deployment is None:
        raise NotFoundError(f"Deployment '{workspace}/{name}' not found")
    return deployment


def get_version_or_latest(
    db_session: Session, *, workspace: str, name: str, version: int | None
) -> Deployment:
    """The named version, or the latest when none is named (404 either way)."""
    if version is None:
        return get_latest_deployment_or_raise(db_session, workspace=workspace, name=name)
    return get_deployment_or_raise(db_session, workspace=workspace, name=name, version=version)


def list_versions_by_id(db_session: Session, *, deployment_id: str) -> list[Deployment]:
    """Every version of the deployment with this id (the workloads API's workload), oldest
    first."""
    return list(
        db_session.scalars(
            select(Deployment)
            .where(Deployment.id == deployment_id)
            .order_by(Deployment.entity_version)
        )
    )


def list_deployment_versions(db_session: Session, *, workspace: str, name: str) -> list[Deployment]:
    """Every version of a deployment, newest first (none for an unknown name)."""
    return list(
        db_session.scalars(
            select(Deployment)
            .where(Deployment.workspace == workspace, Deployment.name == name)
            .order_by(Deployment.entity_version.desc())
        )
    )


def list_deployments(
    db_session: Session,
    *,
    workspace: str,
    page: int = 1,
    page_size: int = 100,
    sort: str = "created_at",
    filters: dict[str, str] | None = None,
    all_versions: bool = False,
) -> Page[Deployment]:
    """A page of deployments in a workspace: the latest version of each (filters apply to
    it), or every version with `all_versions`."""
    if all_versions:
        query = select(Deployment).where(Deployment.workspace == workspace)
    else:
        query = latest_versions(Deployment, workspace=workspace)
    query = filtered(query, Deployment, filters or {}, DEPLOYMENT_FILTERS)
    return paginate(
        db_session,
        query,
        model=Deployment,
        page=page,
        page_size=page_size,
        sort=sort,
        sort_fields=DEPLOYMENT_SORT_FIELDS,
    )


# ----- writing a version -------------------------------------------------------------------------


def auth_context(principal: Principal) -> dict[str, Any]:
    """Who created a version, as stored (docs/api/deployments.md `auth_context`): the token's id
    and its scopes (sorted)."""
    return {
        "principal_id": principal.id,
        "principal_email": None,
        "principal_groups": principal_groups(principal),
        "principal_on_behalf_of": None,
        "principal_on_behalf_of_groups": [],
        "principal_on_behalf_of_email": None,
    }


def principal_groups(principal: Principal) -> list[str]:
    """A principal's scopes as `auth_context.principal_groups` records them."""
    return sorted(str(scope) for scope in principal.scopes)


def create_version(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    config: DeploymentConfig,
    principal: Principal,
    project: str | None = None,
) -> Deployment:
    """The next version of a deployment (version 1 of a new one), running `config`: version 1
    is CREATED ("Deployment created"), a later one PENDING ("Deployment update pending") and
    keeps the deployment's id (the workloads API's workload) and project. Refused (409) while
    the latest is DELETING: the delete would take the new version too. `auth_context` records
    `principal`. The caller queues or runs its deploy task."""
    latest = get_latest_deployment(db_session, workspace=workspace, name=name)
    if latest is not None:
        refuse_versions_while_deleting(latest)
    deployment = Deployment(
        workspace=workspace,
        name=name,
        entity_version=latest.entity_version + 1 if latest else 1,
        project=latest.project if latest else project,
        config=config.name,
        config_version=config.entity_version,
        auth_context=auth_context(principal),
    )
    if latest is not None:
        deployment.id = latest.id
    first = latest is None
    transition(
        deployment,
        DeploymentStatus.CREATED if first else DeploymentStatus.PENDING,
        message=CREATED_MESSAGE if first else PENDING_MESSAGE,
        by=Actor.SYSTEM,
    )
    deployment.created_at = deployment.updated_at  # the first history entry's time
    db_session.add(deployment)
    _flush_or_conflict(
        db_session,
        f"Deployment with workspace '{workspace}' and name '{name}' already exists"
        if first
        else f"Deployment '{workspace}/{name}' changed concurrently",
    )
    return deployment


def refuse_versions_while_deleting(latest: Deployment) -> None:
    """No new version while the latest is DELETING (409): the delete would take it too."""
    if current_status(latest) is DeploymentStatus.DELETING:
        raise ConflictError(
            f"Deployment '{latest.workspace}/{latest.name}' is marked for deletion (DELETING); "
            "deploy a new version once it is DELETED"
        )


def create_deployment(
    db_session: Session,
    *,
    workspace: str,
    deployment_in: DeploymentCreate,
    principal: Principal,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> Deployment:
    """Version 1 of a new deployment (the deployments API's POST), CREATED: 409 when the name
    exists, 400 when its config (version) does not (the caller queues its deploy task)."""
    name = deployment_in.name
    if get_latest_deployment(db_session, workspace=workspace, name=name) is not None:
        raise ConflictError(
            f"Deployment with workspace '{workspace}' and name '{name}' already exists"
        )
    config = resolve_config(
        db_session,
        workspace=workspace,
        name=deployment_in.config,
        version=deployment_in.config_version,
        policy=policy,
    )
    return create_version(
        db_session,
        workspace=workspace,
        name=name,
        config=config,
        principal=principal,
        project=deployment_in.project,
    )


def create_deployment_version(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    deployment_in: DeploymentUpdate,
    principal: Principal,
    policy: ConfigPolicy = DEFAULT_POLICY,
) -> Deployment:
    """The next version of an existing deployment (the deployments API's POST on a name),
    PENDING: 404 when the name is unknown, 409 while it is DELETING, 400 when the config
    (version) does not exist (the caller queues its deploy task)."""
    latest = get_latest_deployment_or_raise(db_session, workspace=workspace, name=name)
    refuse_versions_while_deleting(latest)
    config = resolve_config(
        db_session,
        workspace=workspace,
        name=deployment_in.config,
        version=deployment_in.config_version,
        policy=policy,
    )
    return create_version(
        db_session, workspace=workspace, name=name, config=config, principal=principal
    )


# ----- status: a controller's, and the system's own ----------------------------------------------


def update_status(
    db_session: Session,
    *,
    deployment: Deployment,
    status_in: DeploymentStatusUpdate,
    runs: bool,
) -> Deployment:
    """A controller's status of a version, through the state machine; 409 when it refuses.
    `runs`: whether something of the version runs or may soon (a controller cannot report such
    a version DELETING or DELETED: only a DELETE, whose delete task withdraws the replicas,
    gets it there)."""
    change = transition(
        deployment,
        DeploymentStatus(status_in.status),
        message=status_in.status_message,
        by=Actor.CONTROLLER,
        runs=runs,
    )
    if not change.accepted:
        raise InvalidTransitionError(change.reason)
    provider = status_in.model_provider_id
    if provider is not None and provider != deployment.model_provider_id:
        deployment.model_provider_id = provider
    db_session.flush()
    return deployment


def record_status(
    db_session: Session, *, revision_id: str, status: DeploymentStatus, message: str
) -> None:
    """The system moves the version of this revision (a rollout's READY or ERROR, the
    reconciler's LOST); a move the state machine refuses (the version is being deleted) leaves
    it as it is."""
    deployment = get_by_revision(db_session, revision_id=revision_id)
    if deployment is not None:
        transition(deployment, status, message=message, by=Actor.SYSTEM)


def record_recovered(db_session: Session, *, revision_id: str) -> None:
    """The live revision has a ready replica again: its version, if LOST, is READY again."""
    deployment = get_by_revision(db_session, revision_id=revision_id)
    if deployment is not None and current_status(deployment) is DeploymentStatus.LOST:
        transition(deployment, DeploymentStatus.READY, message=READY_AGAIN_MESSAGE, by=Actor.SYSTEM)


def record_step(db_session: Session, *, revision_id: str, step: dict[str, Any]) -> None:
    """The version's history shows each finished rollout step with its duration (a message in
    the same status), until the rollout has ended it READY or ERROR."""
    deployment = get_by_revision(db_session, revision_id=revision_id)
    if deployment is None:
        return
    status = current_status(deployment)
    if status in (DeploymentStatus.READY, DeploymentStatus.ERROR):
        return
    message = f"{step['name']} {step['status']} in {step['duration_ms']} ms"
    transition(deployment, status, message=message, by=Actor.SYSTEM)


def mark_deleting(db_session: Session, *, served_name: str, live_revision_id: str | None) -> None:
    """A delete task takes the served name off the routers: its latest version and the live
    one (`live_revision_id`'s) become DELETING unless they are DELETED."""
    workspace, name = split_served_name(served_name)
    targets = [get_latest_deployment(db_session, workspace=workspace, name=name)]
    if live_revision_id is not None:
        targets.append(get_by_revision(db_session, revision_id=live_revision_id))
    for deployment in targets:
        if deployment is not None and current_status(deployment) is not DeploymentStatus.DELETED:
            mark_one_deleting(deployment)


def mark_deleted(db_session: Session, *, served_name: str) -> None:
    """The delete task has withdrawn everything of the served name: every version of it that
    is DELETING becomes DELETED."""
    workspace, name = split_served_name(served_name)
    deleting = db_session.scalars(
        select(Deployment).where(
            Deployment.workspace == workspace,
            Deployment.name == name,
            Deployment.status == DeploymentStatus.DELETING,
        )
    ).all()
    for deployment in deleting:
        mark_one_deleted(deployment)


def mark_one_deleting(deployment: Deployment) -> TransitionResult:
    return transition(
        deployment, DeploymentStatus.DELETING, message=DELETING_MESSAGE, by=Actor.SYSTEM
    )


def mark_one_deleted(deployment: Deployment) -> TransitionResult:
    return transition(
        deployment, DeploymentStatus.DELETED, message=DELETED_MESSAGE, by=Actor.SYSTEM
    )


def _flush_or_conflict(db_session: Session, message: str) -> None:
    """Flush; a unique version written concurrently by another request is a conflict (409)."""
    try:
        db_session.flush()
    except IntegrityError as exc:
        raise ConflictError(message) from exc
