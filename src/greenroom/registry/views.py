"""`/v1/embedding-models`: register, list, read, re-point and delete embedding models.

Registration and re-pointing wait for the model's load check (seconds): the endpoints are sync,
so FastAPI runs them in its thread pool and the event loop keeps serving.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response, status

from greenroom.config import Settings
from greenroom.deps import DbSession
from greenroom.registry import service as registry_service
from greenroom.registry.schemas import (
    EmbeddingModelCreate,
    EmbeddingModelRead,
    EmbeddingModelUpdate,
)

api_router = APIRouter(prefix="/v1/embedding-models", tags=["embedding models"])


@api_router.post("", status_code=status.HTTP_201_CREATED, response_model=EmbeddingModelRead)
def register_model(
    model_in: EmbeddingModelCreate, db_session: DbSession, request: Request
) -> EmbeddingModelRead:
    settings = _settings(request)
    model = registry_service.register(
        db_session,
        model_in=model_in,
        cache_dir=onnx_cache_dir(settings),
        timeout_s=settings.registration_timeout_s,
    )
    return EmbeddingModelRead.model_validate(model)


@api_router.get("", response_model=list[EmbeddingModelRead])
def list_models(db_session: DbSession) -> list[EmbeddingModelRead]:
    return [EmbeddingModelRead.model_validate(m) for m in registry_service.get_all(db_session)]


@api_router.get("/{embedding_model_id}", response_model=EmbeddingModelRead)
def get_model(embedding_model_id: str, db_session: DbSession) -> EmbeddingModelRead:
    model = registry_service.get_or_raise(db_session, embedding_model_id=embedding_model_id)
    return EmbeddingModelRead.model_validate(model)


@api_router.put("/{embedding_model_id}", response_model=EmbeddingModelRead)
def update_model(
    embedding_model_id: str, model_in: EmbeddingModelUpdate, db_session: DbSession, request: Request
) -> EmbeddingModelRead:
    settings = _settings(request)
    model = registry_service.update_source(
        db_session,
        embedding_model_id=embedding_model_id,
        model_in=model_in,
        cache_dir=onnx_cache_dir(settings),
        timeout_s=settings.registration_timeout_s,
    )
    return EmbeddingModelRead.model_validate(model)


@api_router.delete("/{embedding_model_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_model(embedding_model_id: str, db_session: DbSession) -> Response:
    registry_service.delete(db_session, embedding_model_id=embedding_model_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def onnx_cache_dir(settings: Settings) -> Path:
    """Where replicas find ONNX exports (the local runtime's `<data dir>/onnx`)."""
    return settings.resolved_data_dir() / "onnx"


def _settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if settings is not None else Settings()
