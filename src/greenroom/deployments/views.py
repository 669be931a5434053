"""The deployments API (docs/api/deployments.md): deployment configs and deployments, per workspace.

Thin views: parse, call one service (or flow) function, shape the response. A new deployment
version queues a deploy task and a DELETE of something that runs a delete task; workers are woken
once the request's session has committed.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import WithJsonSchema
from sqlalchemy.orm import Session

from greenroom.auth.deps import CurrentPrincipal
from greenroom.auth.scopes import Scope
from greenroom.auth.service import Principal
from greenroom.config import Settings
from greenroom.deployments import configs as deployments_configs
from greenroom.deployments import flows as deployments_flows
from greenroom.deployments import service as deployments_service
from greenroom.deployments.configs import ConfigPolicy
from greenroom.deployments.models import Deployment
from greenroom.deployments.schemas import (
    DeploymentConfigCreate,
    DeploymentConfigPage,
    DeploymentConfigRead,
    DeploymentConfigUpdate,
    DeploymentCreate,
    DeploymentPage,
    DeploymentRead,
    DeploymentStatusName,
    DeploymentStatusUpdate,
    DeploymentUpdate,
    config_read,
    deployment_read,
)
from greenroom.deps import DbSession, notify_workers_after_commit
from greenroom.pagination import parse_version
from greenroom.schemas import MAX_VERSION, NAME_PATTERN, PROJECT_PATTERN

api_router = APIRouter(prefix="/apis/models/v2/workspaces/{workspace}", tags=["deployments"])

Workspace = Annotated[str, Path(max_length=255, pattern=NAME_PATTERN)]
Name = Annotated[str, Path(max_length=255, pattern=NAME_PATTERN)]
MAX_PAGE = 1_000_000
Page = Annotated[int, Query(ge=1, le=MAX_PAGE)]
PageSize = Annotated[int, Query(ge=1, le=1000)]
# A version is read as text and parsed by `parse_version`, so that anything but 1 to
# MAX_VERSION is the contract's 400; the OpenAPI document shows the integer it must be.
VERSION_SCHEMA = WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_VERSION})
Version = Annotated[str, VERSION_SCHEMA, Path(description="a version number")]
VersionQuery = Annotated[
    str | None, VERSION_SCHEMA, Query(description="a version number; absent: the latest")
]
FilterName = Annotated[str | None, Query(max_length=255, pattern=NAME_PATTERN)]
FilterProject = Annotated[str | None, Query(max_length=255, pattern=PROJECT_PATTERN)]


# The errors a route answers besides those of its kind (greenroom.openapi adds those, and the
# descriptions and bodies): 400 a refused value the service finds, 409 a conflict.
INVALID: dict[int | str, dict[str, Any]] = {400: {}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {}}
INVALID_OR_CONFLICT = INVALID | CONFLICT


def _sort_pattern(fields: tuple[str, ...]) -> str:
    return rf"^-?({'|'.join(fields)})$"


ConfigSort = Annotated[str, Query(pattern=_sort_pattern(deployments_configs.CONFIG_SORT_FIELDS))]
DeploymentSort = Annotated[
    str, Query(pattern=_sort_pattern(deployments_service.DEPLOYMENT_SORT_FIELDS))
]


# ----- deployment configs ------------------------------------------------------------------------


@api_router.get("/deployment-configs", response_model=DeploymentConfigPage)
def list_configs(
    workspace: Workspace,
    db_session: DbSession,
    principal: CurrentPrincipal,
    page: Page = 1,
    page_size: PageSize = 100,
    sort: ConfigSort = "created_at",
    name: FilterName = None,
    project: FilterProject = None,
    model_name: FilterName = None,
) -> DeploymentConfigPage:
    filters = _given(name=name, project=project, model_name=model_name)
    result = deployments_configs.list_configs(
        db_session,
        workspace=workspace,
        page=page,
        page_size=page_size,
        sort=sort,
        filters=filters,
    )
    return DeploymentConfigPage(
        data=[config_read(config, reveal_envs=_reveals_envs(principal)) for config in result.items],
        pagination=result.pagination(),
        sort=sort,
        filter=filters,
    )


@api_router.post(
    "/deployment-configs",
    status_code=HTTPStatus.CREATED,
    response_model=DeploymentConfigRead,
    responses=INVALID_OR_CONFLICT,
)
def create_config(
    workspace: Workspace,
    config_in: DeploymentConfigCreate,
    db_session: DbSession,
    request: Request,
    principal: CurrentPrincipal,
) -> DeploymentConfigRead:
    executor_config = config_in.executor_config.model_dump(mode="json", exclude_none=True)
    config = deployments_flows.create_config(
        db_session,
        workspace=workspace,
        name=config_in.name,
        model_name=config_in.model_spec.model_name,
        model_revision=config_in.model_spec.model_revision,
        engine=config_in.engine,
        executor_config=executor_config,
        project=config_in.project,
        description=config_in.description,
        policy=_policy(request),
    )
    return config_read(config, reveal_envs=_reveals_envs(principal))


@api_router.get("/deployment-configs/{name}", response_model=DeploymentConfigRead)
def get_config(
    workspace: Workspace, name: Name, db_session: DbSession, principal: CurrentPrincipal
) -> DeploymentConfigRead:
    config = deployments_configs.get_latest_config_or_raise(
        db_session, workspace=workspace, name=name
    )
    return config_read(config, reveal_envs=_reveals_envs(principal))


@api_router.get("/deployment-configs/{name}/versions", response_model=list[DeploymentConfigRead])
def list_config_versions(
    workspace: Workspace, name: Name, db_session: DbSession, principal: CurrentPrincipal
) -> list[DeploymentConfigRead]:
    versions = deployments_configs.list_config_versions(db_session, workspace=workspace, name=name)
    return [config_read(config, reveal_envs=_reveals_envs(principal)) for config in versions]


@api_router.get(
    "/deployment-configs/{name}/versions/{version}",
    response_model=DeploymentConfigRead,
    responses=INVALID,
)
def get_config_version(
    workspace: Workspace,
    name: Name,
    version: Version,
    db_session: DbSession,
    principal: CurrentPrincipal,
) -> DeploymentConfigRead:
    config = deployments_configs.get_config_or_raise(
        db_session,
        workspace=workspace,
        name=name,
        version=parse_version(version),
    )
    return config_read(config, reveal_envs=_reveals_envs(principal))


@api_router.post(
    "/deployment-configs/{name}",
    status_code=HTTPStatus.CREATED,
    response_model=DeploymentConfigRead,
    responses=INVALID_OR_CONFLICT,
)
def update_config(
    workspace: Workspace,
    name: Name,
    config_in: DeploymentConfigUpdate,
    db_session: DbSession,
    request: Request,
    principal: CurrentPrincipal,
) -> DeploymentConfigRead:
    config = deployments_flows.update_config(
        db_session,
        workspace=workspace,
        name=name,
        config_in=config_in,
        policy=_policy(request),
    )
    return config_read(config, reveal_envs=_reveals_envs(principal))


@api_router.delete(
    "/deployment-configs/{name}", status_code=HTTPStatus.NO_CONTENT, responses=CONFLICT
)
def delete_config(workspace: Workspace, name: Name, db_session: DbSession) -> Response:
    deployments_flows.delete_config(db_session, workspace=workspace, name=name)
    return Response(status_code=HTTPStatus.NO_CONTENT)


@api_router.delete(
    "/deployment-configs/{name}/versions/{version}",
    status_code=HTTPStatus.NO_CONTENT,
    responses=INVALID_OR_CONFLICT,
)
def delete_config_version(
    workspace: Workspace, name: Name, version: Version, db_session: DbSession
) -> Response:
    deployments_flows.delete_config(
        db_session,
        workspace=workspace,
        name=name,
        version=parse_version(version),
    )
    return Response(status_code=HTTPStatus.NO_CONTENT)


# ----- deployments -------------------------------------------------------------------------------


@api_router.get("/deployments", response_model=DeploymentPage)
def list_deployments(
    workspace: Workspace,
    db_session: DbSession,
    page: Page = 1,
    page_size: PageSize = 100,
    sort: DeploymentSort = "created_at",
    all_versions: bool = False,
    name: FilterName = None,
    status: DeploymentStatusName | None = None,
    config: FilterName = None,
    project: FilterProject = None,
) -> DeploymentPage:
    filters = _given(name=name, status=status, config=config, project=project)
    result = deployments_service.list_deployments(
        db_session,
        workspace=workspace,
        page=page,
        page_size=page_size,
        sort=sort,
        filters=filters,
        all_versions=all_versions,
    )
    return DeploymentPage(
        data=_deployment_reads(db_session, result.items),
        pagination=result.pagination(),
        sort=sort,
        filter=filters,
    )


@api_router.post(
    "/deployments",
    status_code=HTTPStatus.CREATED,
    response_model=DeploymentRead,
    responses=INVALID_OR_CONFLICT,
)
def create_deployment(
    workspace: Workspace,
    deployment_in: DeploymentCreate,
    db_session: DbSession,
    request: Request,
    principal: CurrentPrincipal,
) -> DeploymentRead:
    deployment = deployments_flows.create_deployment(
        db_session,
        workspace=workspace,
        deployment_in=deployment_in,
        principal=principal,
        deployment_target=_settings(request).runtime,
        policy=_policy(request),
    )
    notify_workers_after_commit(request, db_session)
    return _deployment_read(db_session, deployment)


@api_router.get("/deployments/{name}", response_model=DeploymentRead)
def get_deployment(workspace: Workspace, name: Name, db_session: DbSession) -> DeploymentRead:
    deployment = deployments_service.get_latest_deployment_or_raise(
        db_session, workspace=workspace, name=name
    )
    return _deployment_read(db_session, deployment)


@api_router.get("/deployments/{name}/versions", response_model=list[DeploymentRead])
def list_deployment_versions(
    workspace: Workspace, name: Name, db_session: DbSession
) -> list[DeploymentRead]:
    versions = deployments_service.list_deployment_versions(
        db_session, workspace=workspace, name=name
    )
    return _deployment_reads(db_session, versions)


@api_router.get(
    "/deployments/{name}/versions/{version}", response_model=DeploymentRead, responses=INVALID
)
def get_deployment_version(
    workspace: Workspace, name: Name, version: Version, db_session: DbSession
) -> DeploymentRead:
    deployment = deployments_service.get_deployment_or_raise(
        db_session,
        workspace=workspace,
        name=name,
        version=parse_version(version),
    )
    return _deployment_read(db_session, deployment)


@api_router.post(
    "/deployments/{name}",
    status_code=HTTPStatus.CREATED,
    response_model=DeploymentRead,
    responses=INVALID_OR_CONFLICT,
)
def create_deployment_version(
    workspace: Workspace,
    name: Name,
    deployment_in: DeploymentUpdate,
    db_session: DbSession,
    request: Request,
    principal: CurrentPrincipal,
) -> DeploymentRead:
    deployment = deployments_flows.create_deployment_version(
        db_session,
        workspace=workspace,
        name=name,
        deployment_in=deployment_in,
        principal=principal,
        deployment_target=_settings(request).runtime,
        policy=_policy(request),
    )
    notify_workers_after_commit(request, db_session)
    return _deployment_read(db_session, deployment)


@api_router.post(
    "/deployments/{name}/status", response_model=DeploymentRead, responses=INVALID_OR_CONFLICT
)
def update_deployment_status(
    workspace: Workspace,
    name: Name,
    status_in: DeploymentStatusUpdate,
    db_session: DbSession,
    version: VersionQuery = None,
) -> DeploymentRead:
    deployment = deployments_flows.update_status(
        db_session,
        workspace=workspace,
        name=name,
        version=parse_version(version) if version is not None else None,
        status_in=status_in,
    )
    return _deployment_read(db_session, deployment)


DELETE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "model": DeploymentRead,
        "description": "marked DELETING (a delete task queued) or DELETED (nothing of it ran)",
    },
    204: {"description": "every targeted version was already DELETED: records removed"},
}


@api_router.delete(
    "/deployments/{name}",
    response_model=None,
    status_code=HTTPStatus.ACCEPTED,
    responses=DELETE_RESPONSES,
)
def delete_deployment(
    workspace: Workspace,
    name: Name,
    db_session: DbSession,
    request: Request,
    principal: CurrentPrincipal,
) -> Response:
    return _delete(db_session, request, principal, workspace=workspace, name=name, version=None)


@api_router.delete(
    "/deployments/{name}/versions/{version}",
    response_model=None,
    status_code=HTTPStatus.ACCEPTED,
    responses=DELETE_RESPONSES | INVALID,
)
def delete_deployment_version(
    workspace: Workspace,
    name: Name,
    version: Version,
    db_session: DbSession,
    request: Request,
    principal: CurrentPrincipal,
) -> Response:
    number = parse_version(version)
    return _delete(db_session, request, principal, workspace=workspace, name=name, version=number)


# ----- helpers -----------------------------------------------------------------------------------


def _delete(
    db_session: Session,
    request: Request,
    principal: Principal,
    *,
    workspace: str,
    name: str,
    version: int | None,
) -> Response:
    deletion = deployments_flows.delete_deployment(
        db_session,
        workspace=workspace,
        name=name,
        version=version,
        principal=principal,
    )
    if deletion.removed or deletion.deployment is None:
        return Response(status_code=HTTPStatus.NO_CONTENT)
    if deletion.needs_delete_task:
        notify_workers_after_commit(request, db_session)
    body = _deployment_read(db_session, deletion.deployment)
    return JSONResponse(body.model_dump(mode="json"), status_code=HTTPStatus.ACCEPTED)


def _deployment_read(db_session: Session, deployment: Deployment) -> DeploymentRead:
    return _deployment_reads(db_session, [deployment])[0]


def _deployment_reads(db_session: Session, deployments: list[Deployment]) -> list[DeploymentRead]:
    """Reads of these versions, with the live pointers of their served names (one query)."""
    live = deployments_flows.live_revisions(db_session, deployments=deployments)
    return [
        deployment_read(deployment, live.get(deployment.served_name)) for deployment in deployments
    ]


def _given(**filters: str | None) -> dict[str, str]:
    return {key: value for key, value in filters.items() if value is not None}


def _settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if settings is not None else Settings()


def _policy(request: Request) -> ConfigPolicy:
    """What configs written or deployed through this server may name."""
    return ConfigPolicy.of(_settings(request))


def _reveals_envs(principal: Principal) -> bool:
    """`additional_envs` values are shown only to callers that may write them."""
    return principal.allows(Scope.DEPLOY)
