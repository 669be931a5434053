"""The workloads API face (`docs/api/workloads.md`): a deployment seen from the cluster's side
and its revisions. It reads across domains: deployment versions (the workload's name, project,
creator and desired phase) and deploy tasks (a rollout under way shows `Updating`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from greenroom.config import Settings
from greenroom.deployments import service as deployments_service
from greenroom.errors import NotFoundError
from greenroom.schemas import shown_envs
from greenroom.tasks import service as tasks_service
from greenroom.workloads import service as workloads_service
from greenroom.workloads.models import LiveRevision, Revision
from greenroom.workloads.schemas import RequestedPods, RevisionRead, WorkloadRead
from greenroom.workloads.service import NOT_FOUND, REPLICA_COMMAND, parse_id
from greenroom.workloads.states import RevisionPhase

if TYPE_CHECKING:
    from greenroom.deployments.models import Deployment

DeploymentStatus = deployments_service.DeploymentStatus
DELETION_STATUSES = (DeploymentStatus.DELETED, DeploymentStatus.DELETING)


def get_workload_or_raise(
    db_session: Session, *, workload_id: str, settings: Settings
) -> WorkloadRead:
    versions = deployments_service.list_versions_by_id(
        db_session, deployment_id=parse_id(workload_id)
    )
    if not versions:
        raise NotFoundError(NOT_FOUND)
    first, latest = versions[0], versions[-1]
    name = latest.served_name
    live = workloads_service.get_live(db_session, served_name=name)
    deleted = latest.status in DELETION_STATUSES
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
        actualPhase=actual_phase(db_session, served_name=name, live=live),
    )


def actual_phase(db_session: Session, *, served_name: str, live: LiveRevision | None) -> str:
    """Updating while a rollout runs, else the live revision's phase (Stopped when nothing is
    live)."""
    if tasks_service.is_rolling_out(db_session, served_name=served_name):
        return "Updating"
    if live is None:
        return RevisionPhase.STOPPED
    revision = workloads_service.get_revision(db_session, revision_id=live.revision_id)
    return revision.phase if revision else RevisionPhase.STOPPED


def list_revisions(
    db_session: Session,
    *,
    workload_id: str,
    deleted: bool | None,
    settings: Settings,
    reveal_envs: bool = False,
) -> list[RevisionRead]:
    workload_id = _require_workload(db_session, workload_id=workload_id)
    revisions = workloads_service.list_revisions_of_workload(
        db_session, workload_id=workload_id, deleted=deleted
    )
    deployments = deployments_service.get_by_revisions(
        db_session, revision_ids=[r.id for r in revisions]
    )
    return [
        to_read(revision, deployments.get(revision.id), settings, reveal_envs=reveal_envs)
        for revision in revisions
    ]


def count_revisions(db_session: Session, *, workload_id: str, deleted: bool | None) -> int:
    workload_id = _require_workload(db_session, workload_id=workload_id)
    return workloads_service.count_revisions_of_workload(
        db_session, workload_id=workload_id, deleted=deleted
    )


def get_revision_or_raise(
    db_session: Session, *, revision_id: str, settings: Settings, reveal_envs: bool = False
) -> RevisionRead:
    revision = workloads_service.get_revision(db_session, revision_id=parse_id(revision_id))
    if revision is None:
        raise NotFoundError(NOT_FOUND)
    deployment = deployments_service.get_by_revision(db_session, revision_id=revision.id)
    return to_read(revision, deployment, settings, reveal_envs=reveal_envs)


def _require_workload(db_session: Session, *, workload_id: str) -> str:
    """The workload id, parsed; 400 when malformed, 404 when no deployment version has it."""
    workload_id = parse_id(workload_id)
    if not deployments_service.list_versions_by_id(db_session, deployment_id=workload_id):
        raise NotFoundError(NOT_FOUND)
    return workload_id


def to_read(
    revision: Revision,
    deployment: Deployment | None,
    settings: Settings,
    *,
    reveal_envs: bool = False,
) -> RevisionRead:
    """A revision, with the deployment version it belongs to, as the API shows it;
    `environmentVariables` values only with `reveal_envs` (a caller with the `deploy` scope)."""
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
        # what the revision asks for now: autoscaled, or its fixed count
        requestedPods=RequestedPods(
            number=revision.desired_replicas or int(config.get("replicas", 1))
        ),
        runningPods=revision.ready_replicas,
        images=[f"{revision.source}@sha256:{revision.content_hash}"],
        command=REPLICA_COMMAND,
        arguments=workloads_service.replica_arguments(revision),
        environmentVariables=shown_envs(config.get("additional_envs") or {}, reveal=reveal_envs),
        phase=revision.phase,
        phaseMessage=revision.phase_message,
        phaseUpdatedAt=revision.phase_updated_at,
        conditions=[workloads_service.ready_condition(revision)],
    )
