"""Workloads: a deployment seen from the cluster's side, and its revisions."""

from __future__ import annotations

import uuid

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from greenroom.config import Settings
from greenroom.deployments.models import Deployment, served_name
from greenroom.deployments.schemas import shown_envs
from greenroom.deployments.states import DeploymentStatus
from greenroom.errors import InvalidRequestError, NotFoundError
from greenroom.tasks.models import Task
from greenroom.workloads.models import LiveRevision, Revision
from greenroom.workloads.schemas import ReadyCondition, RequestedPods, RevisionRead, WorkloadRead
from greenroom.workloads.states import RevisionPhase

NOT_FOUND = "Resource id not found."
REPLICA_COMMAND = "python -m greenroom.runtime.replica"


def parse_id(value: str) -> str:
    """A workload or revision id must be a UUID: 400 otherwise, never a 500."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidRequestError(f"Invalid id '{value}': must be a UUID") from None


def get_workload_or_raise(
    db_session: Session, *, workload_id: str, settings: Settings
) -> WorkloadRead:
    versions = db_session.scalars(
        select(Deployment)
        .where(Deployment.id == parse_id(workload_id))
        .order_by(Deployment.entity_version)
    ).all()
    if not versions:
        raise NotFoundError(NOT_FOUND)
    first, latest = versions[0], versions[-1]
    name = served_name(latest.workspace, latest.name)
    live = db_session.get(LiveRevision, name)
    deleted = latest.status in (DeploymentStatus.DELETED, DeploymentStatus.DELETING)
    return WorkloadRead(
        name=latest.name,
        workloadId=latest.id,
        projectId=latest.project or settings.project_id,
        departmentId=settings.department_id,
        clusterId=settings.cluster_id,
        createdBy=(first.auth_context or {}).get("principal_id"),
        createdAt=first.created_at,
        deletedAt=latest.updated_at if latest.status == DeploymentStatus.DELETED else None,
        desiredPhase="Deleted" if deleted else ("Running" if live else "Stopped"),
        actualPhase=_actual_phase(db_session, name, live),
    )


def _actual_phase(db_session: Session, name: str, live: LiveRevision | None) -> str:
    rolling = db_session.scalar(
        select(func.count())
        .select_from(Task)
        .where(Task.embedding_model_id == name, Task.kind == "deploy", Task.status == "processing")
    )
    if rolling:
        return "Updating"
    if live is None:
        return RevisionPhase.STOPPED
    revision = db_session.get(Revision, live.revision_id)
    return revision.phase if revision else RevisionPhase.STOPPED


def list_revisions(
    db_session: Session,
    *,
    workload_id: str,
    deleted: bool | None,
    settings: Settings,
    reveal_envs: bool = False,
) -> list[RevisionRead]:
    query = _revisions_query(db_session, workload_id=workload_id, deleted=deleted)
    revisions = db_session.scalars(query.order_by(Revision.created_at, Revision.id)).all()
    return [to_read(db_session, r, settings, reveal_envs=reveal_envs) for r in revisions]


def count_revisions(db_session: Session, *, workload_id: str, deleted: bool | None) -> int:
    query = _revisions_query(db_session, workload_id=workload_id, deleted=deleted)
    return db_session.scalar(select(func.count()).select_from(query.subquery())) or 0


def _revisions_query(db_session: Session, *, workload_id: str, deleted: bool | None) -> Select:
    """The workload's revisions, only deleted ones or only live ones when `deleted` says so."""
    workload_id = parse_id(workload_id)
    _require_workload(db_session, workload_id)
    query = select(Revision).where(Revision.deployment_id == workload_id)
    if deleted is not None:
        column = Revision.deleted_at
        query = query.where(column.is_not(None) if deleted else column.is_(None))
    return query


def get_revision_or_raise(
    db_session: Session, *, revision_id: str, settings: Settings, reveal_envs: bool = False
) -> RevisionRead:
    revision = db_session.get(Revision, parse_id(revision_id))
    if revision is None:
        raise NotFoundError(NOT_FOUND)
    return to_read(db_session, revision, settings, reveal_envs=reveal_envs)


def _require_workload(db_session: Session, workload_id: str) -> None:
    exists = db_session.scalar(
        select(func.count()).select_from(Deployment).where(Deployment.id == workload_id)
    )
    if not exists:
        raise NotFoundError(NOT_FOUND)


def to_read(
    db_session: Session, revision: Revision, settings: Settings, *, reveal_envs: bool = False
) -> RevisionRead:
    """A revision as the API shows it; `environmentVariables` values only with `reveal_envs`
    (a caller with the `deploy` scope)."""
    deployment = db_session.scalars(
        select(Deployment).where(Deployment.revision_id == revision.id)
    ).first()
    config = revision.config
    return RevisionRead(
        name=deployment.name if deployment else revision.served_name,
        id=revision.id,
        workloadId=revision.deployment_id,
        tenantId=settings.tenant_id,
        clusterId=settings.cluster_id,
        projectId=(deployment.project if deployment else None) or settings.project_id,
        departmentId=settings.department_id,
        createdAt=revision.created_at,
        deletedAt=revision.deleted_at,
        requestedNodePools=[revision.runtime],
        currentNodePools=[revision.runtime] if revision.ready_replicas else [],
        requestedPods=RequestedPods(number=int(config.get("replicas", 1))),
        runningPods=revision.ready_replicas,
        images=[f"{revision.source}@sha256:{revision.content_hash}"],
        command=REPLICA_COMMAND,
        arguments=replica_arguments(revision),
        environmentVariables=shown_envs(config.get("additional_envs") or {}, reveal=reveal_envs),
        phase=revision.phase,
        phaseMessage=revision.phase_message,
        phaseUpdatedAt=revision.phase_updated_at,
        conditions=[ready_condition(revision)],
    )


def replica_arguments(revision: Revision) -> str:
    config = revision.config
    return " ".join(
        [
            f"--model-path {revision.model_path}",
            f"--content-hash {revision.content_hash}",
            f"--engine {revision.engine}",
            f"--quantization {config.get('quantization', 'none')}",
            f"--threads {config.get('threads', 1)}",
            f"--gpu {config.get('gpu', 0)}",
        ]
    )


def ready_condition(revision: Revision) -> ReadyCondition:
    wanted = int(revision.config.get("replicas", 1))
    if revision.deleted_at is not None or revision.desired_replicas == 0:
        status, reason = "False", "Retired" if revision.deleted_at else "NotRequested"
    elif revision.ready_replicas >= wanted:
        status, reason = "True", "AllReplicasReady"
    elif revision.reported_at is None:
        status, reason = "Unknown", "NotReported"
    else:
        status, reason = "False", "ReplicasNotReady"
    return ReadyCondition(
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=f"{revision.ready_replicas} of {wanted} replicas ready",
        lastTransitionTime=revision.reported_at or revision.phase_updated_at,
    )
