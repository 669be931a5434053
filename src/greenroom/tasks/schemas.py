"""What the Deployment Tasks API accepts and returns (docs/api/tasks.md); names are the
contract's. `TaskMetadata` is a task's `metadata`, typed: the rollout reads and writes its
attributes, and it is stored and shown as the JSON object the API has always shown."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Protocol, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from greenroom.schemas import (
    SERVED_NAME_PATTERN,
    TEXT_PATTERN,
    ConfigOverrides,
    Strategy,
    UtcDateTime,
)
from greenroom.tasks.models import Task
from greenroom.tasks.states import TaskStatus


class ConfigVersion(Protocol):
    """What a deploy task records of the deployment config version it deploys."""

    @property
    def workspace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def entity_version(self) -> int: ...
    @property
    def executor_config(self) -> dict[str, Any]: ...


class TaskKind(StrEnum):
    DEPLOY = "deploy"
    DELETE = "delete"
    PROMOTE = "promote"  # an embedding migration's staged revision becomes live
    FINISH = "finish"  # after an adapted promotion: the served name answers with raw vectors
    ABORT = "abort"  # withdraw the staged revision, or bring the old model back


PromotionMode = Literal["raw", "adapted"]


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


class StepStatus(StrEnum):
    """Where one step of a task stands (the glossary's words)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"

    def is_finished(self) -> bool:
        return self in (StepStatus.DONE, StepStatus.SKIPPED)


class StepRecord(BaseModel):
    """One step as `metadata.steps` shows it; times are RFC 3339 strings, as stored."""

    name: str
    status: StepStatus = StepStatus.PENDING
    started_at: str | None = None
    finished_at: str | None = None
    duration_ms: int | None = None
    message: str | None = None

    @classmethod
    def pending(cls, name: str) -> Self:
        return cls(
            name=name,
            status=StepStatus.PENDING,
            started_at=None,
            finished_at=None,
            duration_ms=None,
            message=None,
        )


class Compatibility(BaseModel):
    """The compatibility gate's verdict: blue's and green's probe vectors compared."""

    mean_cosine: float | None
    threshold: float
    reindex_required: bool


class TaskMetadata(BaseModel):
    """A task's `metadata`. Every key is optional and only the keys set are stored or shown, so
    a task's JSON has exactly the keys its life gave it (a fresh deploy: `deployment_target`,
    `initiated_by`, `workspace`, `config`, `config_version`, `allow_embedding_space_change`,
    `strategy`).

    Deploy: `strategy` (`green` or `staged`), `deployment_revision_id` (the deployments API's
    version it rolls out), `rollback_of`, `revision_id`, `previous_revision_id`, `deployment_id`,
    `compatibility`, `result`; a staged deploy also `replaced_staged_revision_id` (the staged
    revision it replaced). Delete: `deletion_type`, `reason`, `revision_id` (what was live),
    `staged_revision_id` (what was staged). Promote: `mode`, `allow_embedding_space_change`,
    `revision_id` (the staged revision it makes live), `previous_revision_id` (the live one it
    retires), `deployment_id`, `compatibility` (raw) or `adapter_id` (adapted). Finish:
    `revision_id` (the live revision), `adapter_id`. Abort: `abort_of` (`staged` or `adapted`),
    then `revision_id` (the staged revision withdrawn), or the keys of a rollback's deploy
    (`rollback_of`: the old revision brought back). Every kind: `steps`; `revision_id` names the
    revision whose deployment version's history records the steps.

    Stored but not shown (`HIDDEN`): the principal's id and scopes, which the version the
    snapshot step creates records, the config overrides a deploy request gave, which become
    a config version only when the task runs (`config_version` is shown from then on), and the
    replica ports a promotion's `start_live` saw before it restarted the replicas.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    deployment_target: str | None = None
    initiated_by: str | None = None
    workspace: str | None = None
    config: str | None = None
    config_version: int | None = None
    allow_embedding_space_change: bool | None = None
    deployment_revision_id: str | None = None
    rollback_of: str | None = None
    revision_id: str | None = None
    previous_revision_id: str | None = None
    deployment_id: str | None = None
    deletion_type: str | None = None
    reason: str | None = None
    steps: list[StepRecord] | None = None
    compatibility: Compatibility | None = None
    result: str | None = None
    principal_id: str | None = None
    principal_groups: list[str] | None = None
    config_overrides: dict[str, Any] | None = None
    strategy: Strategy | None = None
    mode: PromotionMode | None = None
    abort_of: Literal["staged", "adapted"] | None = None
    staged_revision_id: str | None = None
    replaced_staged_revision_id: str | None = None
    adapter_id: str | None = None
    replica_ports_before: list[int] | None = None

    HIDDEN: ClassVar[frozenset[str]] = frozenset(
        {"principal_id", "principal_groups", "config_overrides", "replica_ports_before"}
    )

    @classmethod
    def of(cls, stored: dict[str, Any] | None) -> Self:
        return cls.model_validate(stored or {})

    def stored(self) -> dict[str, Any]:
        """The JSON object kept in the task's `metadata` column: every key set."""
        return self.model_dump(mode="json", exclude_unset=True)

    def shown(self) -> dict[str, Any]:
        """The API's `metadata`: what is stored, less the keys only the worker reads."""
        return self.model_dump(mode="json", exclude_unset=True, exclude=set(self.HIDDEN))


class ModelDeploymentRequest(BaseModel):
    embedding_model_id: ServedName
    id: ClientTaskId | None = None
    config: ConfigOverrides | None = Field(
        default=None,
        description="flat overrides, stored as a new config version when the task runs",
    )
    allow_embedding_space_change: bool = False
    strategy: Strategy = Field(
        default="green",
        description="`staged`: bring the new revision up beside the live one without traffic "
        "(an embedding migration's first stage)",
    )


class ModelDeletionRequest(BaseModel):
    embedding_model_id: ServedName
    id: ClientTaskId | None = None
    reason: str | None = Field(default=None, max_length=1000, pattern=TEXT_PATTERN)


class RollbackRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    embedding_model_id: ServedName
    revision_id: str | None = Field(default=None, min_length=1, max_length=36, pattern=TEXT_PATTERN)
    allow_embedding_space_change: bool = Field(
        default=False, description="the earlier revision's vectors may differ from the live ones"
    )


class PromoteRequest(BaseModel):
    """Make the staged revision live: `raw` (the served name answers in the new space) or
    `adapted` (the new model's vectors mapped into the old space by the fitted adapter)."""

    embedding_model_id: ServedName
    id: ClientTaskId | None = None
    mode: PromotionMode
    allow_embedding_space_change: bool = Field(
        default=False,
        description="raw only: let vectors that are not comparable with the live ones take over",
    )


class FinishRequest(BaseModel):
    """After an adapted promotion: the served name answers with the new model's raw vectors."""

    embedding_model_id: ServedName
    id: ClientTaskId | None = None


class AbortRequest(BaseModel):
    """Withdraw the staged revision, or, after an adapted promotion, bring the old model back."""

    embedding_model_id: ServedName
    id: ClientTaskId | None = None


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
            metadata=TaskMetadata.of(task.task_metadata).shown(),
        )


class ModelDeploymentResponse(TaskResponse):
    pass


class ModelDeletionResponse(TaskResponse):
    pass
