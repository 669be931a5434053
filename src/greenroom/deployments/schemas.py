"""The deployments API's schemas (docs/api/deployments.md): deployment configs (the serving
settings of a model), deployment versions and their status, and what the deployments domain
takes from others as plain values (`RegisteredModel`, `LivePointer`)."""

from __future__ import annotations

from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from greenroom.config import Engine, Quantization, RuntimeTarget
from greenroom.deployments.models import Deployment, DeploymentConfig
from greenroom.schemas import (
    ADDITIONAL_ENVS,
    CACHE_MIB,
    DOWNSCALE_DELAY_S,
    GPU,
    MAX_BATCH_SIZE,
    MAX_BATCH_TOKENS,
    MAX_QUEUE,
    MAX_REPLICAS,
    MAX_VERSION,
    MIN_REPLICAS,
    REPLICAS,
    RUNTIME,
    TARGET_ONGOING_REQUESTS,
    TEXT_PATTERN,
    THREADS,
    UPSCALE_DELAY_S,
    AdditionalEnvs,
    Description,
    Name,
    Pagination,
    Project,
    Strategy,
    UtcDateTime,
    shown_envs,
)


class RegisteredModel(Protocol):
    """What a config needs of a registered embedding model (the registry's row fits)."""

    @property
    def id(self) -> str: ...
    @property
    def content_hash(self) -> str: ...


class LivePointer(Protocol):
    """What a deployment read shows of its served name's live-revision pointer (the workloads
    domain's row fits)."""

    @property
    def revision_id(self) -> str: ...
    @property
    def previous_revision_id(self) -> str | None: ...


# ----- the deployments API (docs/api/deployments.md) ---------------------------------------------

StatusMessage = Annotated[str, Field(max_length=1000, pattern=TEXT_PATTERN)]
ModelProviderId = Annotated[str, Field(max_length=255, pattern=TEXT_PATTERN)]
ConfigVersion = Annotated[int, Field(ge=1, le=MAX_VERSION)]
DeploymentStatusName = Literal[
    "UNKNOWN", "CREATED", "PENDING", "READY", "ERROR", "DELETING", "DELETED", "LOST"
]


class ModelSpec(BaseModel):
    """What a config serves: a registered embedding model. `model_revision` is filled in with
    the model's content hash; a caller that gives one pins it (another hash is refused)."""

    model_type: Literal["embed"] = "embed"
    model_name: Name
    model_revision: str | None = Field(default=None, max_length=64, pattern=TEXT_PATTERN)


class ModelSpecUpdate(BaseModel):
    """A model spec in a new config version: a field left out is kept."""

    model_type: Literal["embed"] = "embed"
    model_name: Name | None = None
    model_revision: str | None = Field(default=None, max_length=64, pattern=TEXT_PATTERN)


class ExecutorConfigUpdate(BaseModel):
    """Executor settings for a new config version: a key left out is kept, a key given as null
    goes back to its default. The bounds are ExecutorConfig's."""

    model_config = ConfigDict(extra="forbid")

    gpu: Annotated[int | None, GPU] = None
    replicas: Annotated[int | None, REPLICAS] = None
    quantization: Quantization | None = None
    max_batch_size: Annotated[int | None, MAX_BATCH_SIZE] = None
    max_batch_tokens: Annotated[int | None, MAX_BATCH_TOKENS] = None
    max_queue: Annotated[int | None, MAX_QUEUE] = None
    threads: Annotated[int | None, THREADS] = None
    runtime: Annotated[RuntimeTarget | None, RUNTIME] = None
    additional_envs: Annotated[AdditionalEnvs | None, ADDITIONAL_ENVS] = None
    cache_mib: Annotated[int | None, CACHE_MIB] = None
    min_replicas: Annotated[int | None, MIN_REPLICAS] = None
    max_replicas: Annotated[int | None, MAX_REPLICAS] = None
    target_ongoing_requests: Annotated[float | None, TARGET_ONGOING_REQUESTS] = None
    upscale_delay_s: Annotated[float | None, UPSCALE_DELAY_S] = None
    downscale_delay_s: Annotated[float | None, DOWNSCALE_DELAY_S] = None


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
    cache_mib: int = 0
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0


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


class DeploymentConfigPage(BaseModel):
    data: list[DeploymentConfigRead]
    pagination: Pagination
    sort: str
    filter: dict[str, str]


class DeploymentCreate(BaseModel):
    name: Name
    config: Name
    config_version: ConfigVersion | None = None
    project: Project | None = None


class DeploymentUpdate(BaseModel):
    config: Name
    config_version: ConfigVersion | None = None
    strategy: Strategy = Field(
        default="green",
        description="`staged`: the new version comes up beside the live one without traffic "
        "(an embedding migration); `green` switches to it",
    )


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


def config_read(config: DeploymentConfig, *, reveal_envs: bool = False) -> DeploymentConfigRead:
    """A config version as the API shows it; `additional_envs` values only with `reveal_envs`
    (a caller with the `deploy` scope)."""
    executor_config = dict(config.executor_config)
    executor_config["additional_envs"] = shown_envs(
        executor_config.get("additional_envs") or {}, reveal=reveal_envs
    )
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
        # constructed, not validated: a name stored before the ASCII rule still reads
        model_spec=ModelSpec.model_construct(
            model_name=config.model_name, model_revision=config.model_revision
        ),
        executor_config=ExecutorConfigRead.model_validate(executor_config),
    )


def deployment_read(deployment: Deployment, live: LivePointer | None) -> DeploymentRead:
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
