"""`/v1/embedding-models`: register, list, read, re-point and delete embedding models.

Registration and re-pointing wait for the model's load check (seconds): the endpoints are sync,
so FastAPI runs them in its thread pool and the event loop keeps serving. Once a re-point or a
delete commits, the stored models that nothing references any more are removed.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from sqlalchemy.orm import Session

from greenroom.config import Settings
from greenroom.deps import DbSession, get_store
from greenroom.registry import flows as registry_flows
from greenroom.registry import service as registry_service
from greenroom.registry.schemas import (
    EmbeddingModelCreate,
    EmbeddingModelRead,
    EmbeddingModelUpdate,
)

api_router = APIRouter(prefix="/v1/embedding-models", tags=["embedding models"])

# The errors a route answers besides those of its kind (greenroom.openapi adds those): 400 a
# source that is not a usable model, 409 a conflict, 503 a model store that cannot take a copy.
CHECKED: dict[int | str, dict[str, Any]] = {400: {}, 503: {}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {}}


@api_router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=EmbeddingModelRead,
    responses=CHECKED | CONFLICT,
)
def register_model(
    model_in: EmbeddingModelCreate, db_session: DbSession, request: Request
) -> EmbeddingModelRead:
    model = registry_flows.register(
        db_session, model_in=model_in, options=registry_service.CheckOptions.of(_settings(request))
    )
    return EmbeddingModelRead.model_validate(model)


@api_router.get("", response_model=list[EmbeddingModelRead])
def list_models(db_session: DbSession) -> list[EmbeddingModelRead]:
    return [EmbeddingModelRead.model_validate(m) for m in registry_service.get_all(db_session)]


@api_router.get("/{embedding_model_id}", response_model=EmbeddingModelRead)
def get_model(embedding_model_id: str, db_session: DbSession) -> EmbeddingModelRead:
    model = registry_service.get_or_raise(db_session, embedding_model_id=embedding_model_id)
    return EmbeddingModelRead.model_validate(model)


@api_router.put("/{embedding_model_id}", response_model=EmbeddingModelRead, responses=CHECKED)
def update_model(
    embedding_model_id: str, model_in: EmbeddingModelUpdate, db_session: DbSession, request: Request
) -> EmbeddingModelRead:
    model = registry_flows.update_source(
        db_session,
        embedding_model_id=embedding_model_id,
        model_in=model_in,
        options=registry_service.CheckOptions.of(_settings(request)),
    )
    _collect_after_commit(request, db_session)
    return EmbeddingModelRead.model_validate(model)


@api_router.delete(
    "/{embedding_model_id}", status_code=status.HTTP_204_NO_CONTENT, responses=CONFLICT
)
def delete_model(embedding_model_id: str, db_session: DbSession, request: Request) -> Response:
    registry_flows.delete(db_session, embedding_model_id=embedding_model_id)
    _collect_after_commit(request, db_session)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _collect_after_commit(request: Request, db_session: Session) -> None:
    registry_flows.collect_after_commit(
        db_session, get_store(request), _settings(request).resolved_data_dir()
    )


def _settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if settings is not None else Settings()
