"""The Deployment Tasks API (docs/api/tasks.md), under `/internal/inference-deployment`, with
the embedding migration's tasks (docs/api/migrations.md): promote, finish, abort.

Thin views: parse, call one service function, shape the response. Workers are woken through the
`TASKS` signal once the session that created or canceled a task has committed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from greenroom.auth.deps import CurrentPrincipal
from greenroom.config import Settings
from greenroom.deps import DbSession, notify_workers_after_commit
from greenroom.schemas import TEXT_PATTERN
from greenroom.tasks import flows as tasks_flows
from greenroom.tasks import service as tasks_service
from greenroom.tasks.schemas import (
    AbortRequest,
    FinishRequest,
    ModelDeletionRequest,
    ModelDeletionResponse,
    ModelDeploymentRequest,
    ModelDeploymentResponse,
    PromoteRequest,
    RollbackRequest,
    TaskKind,
    TaskResponse,
)

api_router = APIRouter(prefix="/internal/inference-deployment", tags=["tasks"])

# The errors a route answers besides those of its kind (greenroom.openapi adds those): 400 a
# stored config over today's bounds, 404 an unknown model or revision in the body, 409 a
# conflict, 500 a task the store could not take.
DELETE_ERRORS: dict[int | str, dict[str, Any]] = {404: {}, 409: {}, 500: {}}
DEPLOY_ERRORS = DELETE_ERRORS | {400: {}}
UNKNOWN: dict[int | str, dict[str, Any]] = {404: {}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {}}

# Looked up as given (an unknown one is the contract's 404), bounded like what is stored.
TaskId = Annotated[str, Path(max_length=255, pattern=TEXT_PATTERN)]
ServedNamePath = Annotated[str, Path(max_length=511, pattern=TEXT_PATTERN)]
ServedNameQuery = Annotated[str | None, Query(max_length=511, pattern=TEXT_PATTERN)]


@api_router.post("/deploy", response_model=ModelDeploymentResponse, responses=DEPLOY_ERRORS)
def deploy(
    body: ModelDeploymentRequest,
    db_session: DbSession,
    request: Request,
    principal: CurrentPrincipal,
) -> ModelDeploymentResponse:
    task = tasks_flows.create_deploy_task(
        db_session,
        request=body,
        principal=principal,
        deployment_target=_settings(request).runtime,
        policy=tasks_flows.config_policy(_settings(request)),
    )
    notify_workers_after_commit(request, db_session)
    return ModelDeploymentResponse.from_task(task)


@api_router.post("/rollback", response_model=ModelDeploymentResponse, responses=UNKNOWN)
def rollback(
    body: RollbackRequest,
    db_session: DbSession,
    request: Request,
    principal: CurrentPrincipal,
) -> ModelDeploymentResponse:
    """A deploy task bringing back the previous (or the named) revision as a new revision."""
    task = tasks_flows.create_rollback_task(
        db_session,
        request=body,
        principal=principal,
        deployment_target=_settings(request).runtime,
        policy=tasks_flows.config_policy(_settings(request)),
    )
    notify_workers_after_commit(request, db_session)
    return ModelDeploymentResponse.from_task(task)


@api_router.get("/deploy/{task_id}", response_model=ModelDeploymentResponse)
def get_deploy_task(task_id: TaskId, db_session: DbSession) -> ModelDeploymentResponse:
    task = tasks_service.get_or_raise(db_session, task_id=task_id, kind=TaskKind.DEPLOY)
    return ModelDeploymentResponse.from_task(task)


@api_router.get("/deploy-status/{embedding_model_id:path}", response_model=ModelDeploymentResponse)
def get_latest_deploy_task(
    embedding_model_id: ServedNamePath, db_session: DbSession
) -> ModelDeploymentResponse:
    task = tasks_service.get_latest_or_raise(
        db_session, embedding_model_id=embedding_model_id, kind=TaskKind.DEPLOY
    )
    return ModelDeploymentResponse.from_task(task)


@api_router.post(
    "/deploy/{task_id}/cancel", response_model=ModelDeploymentResponse, responses=CONFLICT
)
def cancel_deploy_task(
    task_id: TaskId, db_session: DbSession, request: Request
) -> ModelDeploymentResponse:
    task = tasks_service.cancel(db_session, task_id=task_id, kind=TaskKind.DEPLOY)
    notify_workers_after_commit(request, db_session)
    return ModelDeploymentResponse.from_task(task)


@api_router.get("/tasks", response_model=list[ModelDeploymentResponse])
def list_tasks(
    db_session: DbSession,
    embedding_model_id: ServedNameQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> list[ModelDeploymentResponse]:
    """Recent tasks of every kind, newest first (greenroom's addition, for `greenroom tasks`)."""
    tasks = tasks_service.list_recent(
        db_session, embedding_model_id=embedding_model_id, limit=limit
    )
    return [ModelDeploymentResponse.from_task(task) for task in tasks]


@api_router.post("/delete", response_model=ModelDeletionResponse, responses=DELETE_ERRORS)
def delete(
    body: ModelDeletionRequest,
    db_session: DbSession,
    request: Request,
    principal: CurrentPrincipal,
) -> ModelDeletionResponse:
    task = tasks_flows.create_delete_task(db_session, request=body, principal=principal)
    notify_workers_after_commit(request, db_session)
    return ModelDeletionResponse.from_task(task)


@api_router.get("/delete/{task_id}", response_model=ModelDeletionResponse)
def get_delete_task(task_id: TaskId, db_session: DbSession) -> ModelDeletionResponse:
    task = tasks_service.get_or_raise(db_session, task_id=task_id, kind=TaskKind.DELETE)
    return ModelDeletionResponse.from_task(task)


@api_router.get("/delete-status/{embedding_model_id:path}", response_model=ModelDeletionResponse)
def get_latest_delete_task(
    embedding_model_id: ServedNamePath, db_session: DbSession
) -> ModelDeletionResponse:
    task = tasks_service.get_latest_or_raise(
        db_session, embedding_model_id=embedding_model_id, kind=TaskKind.DELETE
    )
    return ModelDeletionResponse.from_task(task)


@api_router.post(
    "/delete/{task_id}/cancel", response_model=ModelDeletionResponse, responses=CONFLICT
)
def cancel_delete_task(
    task_id: TaskId, db_session: DbSession, request: Request
) -> ModelDeletionResponse:
    task = tasks_service.cancel(db_session, task_id=task_id, kind=TaskKind.DELETE)
    notify_workers_after_commit(request, db_session)
    return ModelDeletionResponse.from_task(task)


# ----- embedding migrations: promote, finish, abort ---------------------------------------------


@api_router.post("/promote", response_model=TaskResponse, responses=DELETE_ERRORS)
def promote(
    body: PromoteRequest, db_session: DbSession, request: Request, principal: CurrentPrincipal
) -> TaskResponse:
    """A `promote-…` task: the staged revision becomes live, raw or adapted."""
    task = tasks_flows.create_promote_task(db_session, request=body, principal=principal)
    notify_workers_after_commit(request, db_session)
    return TaskResponse.from_task(task)


@api_router.post("/finish", response_model=TaskResponse, responses=DELETE_ERRORS)
def finish(
    body: FinishRequest, db_session: DbSession, request: Request, principal: CurrentPrincipal
) -> TaskResponse:
    """A `finish-…` task: after an adapted promotion, the served name answers raw."""
    task = tasks_flows.create_finish_task(db_session, request=body, principal=principal)
    notify_workers_after_commit(request, db_session)
    return TaskResponse.from_task(task)


@api_router.post("/abort", response_model=TaskResponse, responses=DELETE_ERRORS)
def abort(
    body: AbortRequest, db_session: DbSession, request: Request, principal: CurrentPrincipal
) -> TaskResponse:
    """An `abort-…` task: the staged revision withdrawn, or the old model brought back."""
    task = tasks_flows.create_abort_task(
        db_session,
        request=body,
        principal=principal,
        policy=tasks_flows.config_policy(_settings(request)),
        deployment_target=_settings(request).runtime,
    )
    notify_workers_after_commit(request, db_session)
    return TaskResponse.from_task(task)


def _add_task_routes(kind: TaskKind) -> None:
    """`GET /{kind}/{task_id}`, `GET /{kind}-status/{embedding_model_id}` and
    `POST /{kind}/{task_id}/cancel` of a migration kind: the same as deploy's."""

    def get_task(task_id: TaskId, db_session: DbSession) -> TaskResponse:
        return TaskResponse.from_task(
            tasks_service.get_or_raise(db_session, task_id=task_id, kind=kind)
        )

    def get_latest_task(embedding_model_id: ServedNamePath, db_session: DbSession) -> TaskResponse:
        return TaskResponse.from_task(
            tasks_service.get_latest_or_raise(
                db_session, embedding_model_id=embedding_model_id, kind=kind
            )
        )

    def cancel_task(task_id: TaskId, db_session: DbSession, request: Request) -> TaskResponse:
        task = tasks_service.cancel(db_session, task_id=task_id, kind=kind)
        notify_workers_after_commit(request, db_session)
        return TaskResponse.from_task(task)

    api_router.add_api_route(
        f"/{kind}/{{task_id}}", get_task, methods=["GET"], response_model=TaskResponse,
        name=f"get_{kind}_task", summary=f"Get a {kind} task",
    )  # fmt: skip
    api_router.add_api_route(
        f"/{kind}-status/{{embedding_model_id:path}}", get_latest_task, methods=["GET"],
        response_model=TaskResponse, name=f"get_latest_{kind}_task",
        summary=f"Get the latest {kind} task of a model",
    )  # fmt: skip
    api_router.add_api_route(
        f"/{kind}/{{task_id}}/cancel", cancel_task, methods=["POST"], response_model=TaskResponse,
        responses=CONFLICT, name=f"cancel_{kind}_task", summary=f"Cancel a pending {kind} task",
    )  # fmt: skip


for _kind in (TaskKind.PROMOTE, TaskKind.FINISH, TaskKind.ABORT):
    _add_task_routes(_kind)


def _settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if settings is not None else Settings()
