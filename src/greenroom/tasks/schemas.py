"""What the Deployment Tasks API accepts and returns (api/tasks.md); names are the contract's."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from greenroom.deployments.schemas import (
    SERVED_NAME_PATTERN,
    TEXT_PATTERN,
    ConfigOverrides,
    UtcDateTime,
)
from greenroom.tasks.models import Task
from greenroom.tasks.states import TaskStatus


class TaskKind(StrEnum):
    DEPLOY = "deploy"
    DELETE = "delete"


ServedName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=511,
        pattern=SERVED_NAME_PATTERN,
        validation_alias=AliasChoices("embedding_model_id", "model_id"),
        description="a registered embedding model's id, or `workspace/name` of a deployment",
    ),
]
# Used verbatim as the task's id (deploy and delete share one id space): an idempotency key. It
# must fit in a URL path segment, so no `/`.
ClientTaskId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^/\x00]+$")]


class ModelDeploymentRequest(BaseModel):
    embedding_model_id: ServedName
    id: ClientTaskId | None = None
    config: ConfigOverrides | None = Field(
        default=None, description="flat overrides, stored as a new config version"
    )
    allow_embedding_space_change: bool = False


class ModelDeletionRequest(BaseModel):
    embedding_model_id: ServedName
    id: ClientTaskId | None = None
    reason: str | None = Field(default=None, max_length=1000, pattern=TEXT_PATTERN)


class TaskResponse(BaseModel):
    """A task as the API shows it; `detail` is left out while there is none."""

    id: str
    task_id: str
    embedding_model_id: str
    status: TaskStatus
    created_at: UtcDateTime
    updated_at: UtcDateTime
    detail: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    # No return annotation: with one, pydantic would publish it as the response's schema.
    @model_serializer(mode="wrap")
    def _without_empty_detail(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        if data.get("detail") is None:
            data.pop("detail", None)
        return data

    @classmethod
    def from_task(cls, task: Task) -> Self:
        return cls(
            id=task.id,
            task_id=task.id,
            embedding_model_id=task.embedding_model_id,
            status=TaskStatus(task.status),
            created_at=task.created_at,
            updated_at=task.updated_at,
            detail=task.detail,
            metadata=task.task_metadata,
        )


class ModelDeploymentResponse(TaskResponse):
    pass


class ModelDeletionResponse(TaskResponse):
    pass
