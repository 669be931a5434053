"""The workloads API (`docs/api/workloads.md`) under `/api/v1/workloads/inferences`."""

from __future__ import annotations

from fastapi import APIRouter, Request

from greenroom.auth.deps import CurrentPrincipal
from greenroom.auth.scopes import Scope
from greenroom.config import Settings
from greenroom.deps import DbSession
from greenroom.workloads import flows as workloads_flows
from greenroom.workloads.schemas import RevisionCount, RevisionList, RevisionRead, WorkloadRead

api_router = APIRouter(prefix="/api/v1/workloads/inferences", tags=["workloads"])


def _settings(request: Request) -> Settings:
    return request.app.state.settings


# declared before /{workloadId}/… so that `revisions/<id>` is never read as a workload id
@api_router.get("/revisions/{revision_id}", response_model=RevisionRead)
def get_revision(
    revision_id: str, db_session: DbSession, request: Request, principal: CurrentPrincipal
) -> RevisionRead:
    return workloads_flows.get_revision_or_raise(
        db_session,
        revision_id=revision_id,
        settings=_settings(request),
        reveal_envs=principal.allows(Scope.DEPLOY),
    )


@api_router.get("/{workload_id}", response_model=WorkloadRead)
def get_workload(workload_id: str, db_session: DbSession, request: Request) -> WorkloadRead:
    return workloads_flows.get_workload_or_raise(
        db_session, workload_id=workload_id, settings=_settings(request)
    )


@api_router.get("/{workload_id}/revisions", response_model=RevisionList)
def list_revisions(
    workload_id: str,
    db_session: DbSession,
    request: Request,
    principal: CurrentPrincipal,
    deleted: bool | None = None,
) -> RevisionList:
    revisions = workloads_flows.list_revisions(
        db_session,
        workload_id=workload_id,
        deleted=deleted,
        settings=_settings(request),
        reveal_envs=principal.allows(Scope.DEPLOY),
    )
    return RevisionList(revisions=revisions)


@api_router.get("/{workload_id}/revisions/count", response_model=RevisionCount)
def count_revisions(
    workload_id: str, db_session: DbSession, deleted: bool | None = None
) -> RevisionCount:
    count = workloads_flows.count_revisions(db_session, workload_id=workload_id, deleted=deleted)
    return RevisionCount(count=count)
