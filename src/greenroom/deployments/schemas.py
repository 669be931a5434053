"""Deployment config schemas (api/deployments.md): the serving settings of a model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from greenroom.config import Engine, Quantization, RuntimeTarget, default_threads
from greenroom.deployments.models import Deployment, DeploymentConfig
from greenroom.serving.models import LiveRevision


class ExecutorConfig(BaseModel):
    """How a revision runs and batches; defaults are the contract's."""

    model_config = ConfigDict(extra="forbid")

    gpu: int = Field(default=0, ge=0)
    replicas: int = Field(default=1, ge=1, le=64)
    quantization: Quantization = "none"
    max_batch_size: int = Field(default=32, ge=1, le=2048)
    max_batch_tokens: int = Field(default=8192, ge=1)
    max_queue: int = Field(default=1024, ge=1)
    threads: int = Field(default_factory=default_threads, ge=1, le=256)
    runtime: RuntimeTarget | None = None
    additional_envs: dict[str, str] = Field(default_factory=dict)


class ServingSettings(ExecutorConfig):
    """An executor config together with the engine: everything a revision needs to serve."""

    engine: Engine = "onnx"


class ConfigOverrides(BaseModel):
    """Flat overrides of a deployment config (api/tasks.md `config`): `engine` is the config's
    own field, the others live in its executor config. The bounds are ExecutorConfig's (a test
    keeps them equal). A key given as null goes back to its default; a key left out is kept."""

    model_config = ConfigDict(extra="forbid")

    engine: Engine | None = None
    quantization: Quantization | None = None
    replicas: int | None = Field(default=None, ge=1, le=64)
    max_batch_size: int | None = Field(default=None, ge=1, le=2048)
    max_batch_tokens: int | None = Field(default=None, ge=1)
    max_queue: int | None = Field(default=None, ge=1)
    threads: int | None = Field(default=None, ge=1, le=256)
    runtime: RuntimeTarget | None = None

    def as_dict(self) -> dict[str, Any]:
        """The overrides the caller gave, nulls included (they reset a key to its default)."""
        return self.model_dump(mode="json", exclude_unset=True)


OVERRIDE_KEYS = frozenset(ConfigOverrides.model_fields)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# A datetime that serialises as RFC 3339 in UTC with a `Z` (every API response uses it).
UtcDateTime = Annotated[
    datetime,
    PlainSerializer(_rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


# ----- the deployments API (api/deployments.md) --------------------------------------------------

NAME_PATTERN = r"^[\w\-.]+$"
PROJECT_PATTERN = r"^[\w\-./]+$"
Name = Annotated[str, Field(min_length=1, max_length=255, pattern=NAME_PATTERN)]
Project = Annotated[str, Field(min_length=1, max_length=255, pattern=PROJECT_PATTERN)]
Description = Annotated[str, Field(max_length=1000)]
StatusMessage = Annotated[str, Field(max_length=1000)]
ModelProviderId = Annotated[str, Field(max_length=255)]
DeploymentStatusName = Literal[
    "UNKNOWN", "CREATED", "PENDING", "READY", "ERROR", "DELETING", "DELETED", "LOST"
]


class ModelSpec(BaseModel):
    """What a config serves: a registered embedding model. `model_revision` is filled in with
    the model's content hash; a caller that gives one pins it (another hash is refused)."""

    model_type: Literal["embed"] = "embed"
    model_name: Name
    model_revision: str | None = Field(default=None, max_length=64)


class ModelSpecUpdate(BaseModel):
    """A model spec in a new config version: a field left out is kept."""

    model_type: Literal["embed"] = "embed"
    model_name: Name | None = None
    model_revision: str | None = Field(default=None, max_length=64)


class ExecutorConfigUpdate(BaseModel):
    """Executor settings for a new config version: a key left out is kept, a key given as null
    goes back to its default. The bounds are ExecutorConfig's (a test keeps them equal)."""

    model_config = ConfigDict(extra="forbid")

    gpu: int | None = Field(default=None, ge=0)
    replicas: int | None = Field(default=None, ge=1, le=64)
    quantization: Quantization | None = None
    max_batch_size: int | None = Field(default=None, ge=1, le=2048)
    max_batch_tokens: int | None = Field(default=None, ge=1)
    max_queue: int | None = Field(default=None, ge=1)
    threads: int | None = Field(default=None, ge=1, le=256)
    runtime: RuntimeTarget | None = None
    additional_envs: dict[str, str] | None = None


class ExecutorConfigRead(BaseModel):
    """A stored executor config; `threads` is null when unset: the cores of the machine that
    runs the revision."""

    gpu: int
    replicas: int
    quantization: Quantization
    max_batch_size: int
    max_batch_tokens: int
    max_queue: int
    threads: int | None = None
    runtime: RuntimeTarget | None = None
    additional_envs: dict[str, str] = Field(default_factory=dict)


class DeploymentConfigCreate(BaseModel):
    name: Name
    project: Project | None = None
    description: Description | None = None
    engine: Engine = "onnx"
    model_spec: ModelSpec
    executor_config: ExecutorConfigUpdate = Field(default_factory=ExecutorConfigUpdate)


class DeploymentConfigUpdate(BaseModel):
    """A new version: the latest with the fields given applied (a field left out is kept)."""

    project: Project | None = None
    description: Description | None = None
    engine: Engine | None = None
    model_spec: ModelSpecUpdate | None = None
    executor_config: ExecutorConfigUpdate | None = None


class DeploymentConfigRead(BaseModel):
    id: str
    name: str
    workspace: str
    project: str | None
    description: str | None
    entity_version: int
    created_at: UtcDateTime
    updated_at: UtcDateTime
    engine: Engine
    model_spec: ModelSpec
    executor_config: ExecutorConfigRead


class Pagination(BaseModel):
    page: int
    page_size: int
    current_page_size: int
    total_pages: int
    total_results: int


class DeploymentConfigPage(BaseModel):
    data: list[DeploymentConfigRead]
    pagination: Pagination
    sort: str
    filter: dict[str, str]


class DeploymentCreate(BaseModel):
    name: Name
    config: Name
    config_version: int | None = Field(default=None, ge=1)
    project: Project | None = None


class DeploymentUpdate(BaseModel):
    config: Name
    config_version: int | None = Field(default=None, ge=1)


class DeploymentStatusUpdate(BaseModel):
    status: DeploymentStatusName
    status_message: StatusMessage | None = None
    model_provider_id: ModelProviderId | None = None


class StatusHistoryEntry(BaseModel):
    timestamp: UtcDateTime
    status: str
    status_message: str | None = None


class AuthContext(BaseModel):
    """Who created a deployment version."""

    principal_id: str | None = None
    principal_email: str | None = None
    principal_groups: list[str] = Field(default_factory=list)
    principal_on_behalf_of: str | None = None
    principal_on_behalf_of_groups: list[str] = Field(default_factory=list)
    principal_on_behalf_of_email: str | None = None


class Endpoint(BaseModel):
    """Where a deployment's embeddings are served: POST `url` with `"model": model`."""

    url: str = "/v1/embeddings"
    model: str


class DeploymentRead(BaseModel):
    id: str
    revision_id: str
    name: str
    workspace: str
    project: str | None
    created_at: UtcDateTime
    updated_at: UtcDateTime
    entity_version: int
    config: str
    config_version: int
    status: DeploymentStatusName
    status_message: str | None
    status_history: list[StatusHistoryEntry]
    model_provider_id: str | None
    auth_context: AuthContext
    live_revision_id: str | None
    previous_revision_id: str | None
    endpoint: Endpoint


class DeploymentPage(BaseModel):
    data: list[DeploymentRead]
    pagination: Pagination
    sort: str
    filter: dict[str, str]


def config_read(config: DeploymentConfig) -> DeploymentConfigRead:
    return DeploymentConfigRead(
        id=config.id,
        name=config.name,
        workspace=config.workspace,
        project=config.project,
        description=config.description,
        entity_version=config.entity_version,
        created_at=config.created_at,
        updated_at=config.updated_at,
        engine=config.engine,  # type: ignore[arg-type]
        model_spec=ModelSpec(model_name=config.model_name, model_revision=config.model_revision),
        executor_config=ExecutorConfigRead.model_validate(config.executor_config),
    )


def deployment_read(deployment: Deployment, live: LiveRevision | None) -> DeploymentRead:
    """A version as the API shows it; `live` is the served name's live-revision pointer."""
    return DeploymentRead(
        id=deployment.id,
        revision_id=deployment.revision_id,
        name=deployment.name,
        workspace=deployment.workspace,
        project=deployment.project,
        created_at=deployment.created_at,
        updated_at=deployment.updated_at,
        entity_version=deployment.entity_version,
        config=deployment.config,
        config_version=deployment.config_version,
        status=deployment.status,  # type: ignore[arg-type]
        status_message=deployment.status_message,
        status_history=[
            StatusHistoryEntry.model_validate(entry) for entry in deployment.status_history or []
        ],
        model_provider_id=deployment.model_provider_id,
        auth_context=AuthContext.model_validate(deployment.auth_context or {}),
        live_revision_id=live.revision_id if live else None,
        previous_revision_id=live.previous_revision_id if live else None,
        endpoint=Endpoint(model=deployment.served_name),
    )
