"""Deployment config schemas (api/deployments.md): the serving settings of a model."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from greenroom.config import Engine, Quantization, RuntimeTarget, default_threads
from greenroom.deployments.models import Deployment, DeploymentConfig
from greenroom.runtime.environment import ENV_NAME_PATTERN, MAX_ENV_VALUE_CHARS, MAX_ENV_VARS
from greenroom.workloads.models import LiveRevision

# ----- executor settings: each bound is written once, here, and every model that carries the
# setting (ExecutorConfig, ExecutorConfigUpdate, ConfigOverrides) annotates its field with it.

GPU = Field(ge=0, le=16, description="GPUs per replica; 0 runs on the CPU")
REPLICAS = Field(ge=1, le=64, description="replicas of a revision")
MAX_BATCH_SIZE = Field(ge=1, le=2048, description="inputs per engine batch")
MAX_BATCH_TOKENS = Field(ge=1, le=1_048_576, description="padded tokens per engine batch")
MAX_QUEUE = Field(ge=1, le=65_536, description="inputs waiting per served name")
THREADS = Field(ge=1, le=256, description="engine threads per replica")
EnvName = Annotated[str, Field(pattern=rf"^{ENV_NAME_PATTERN.pattern}$")]
EnvValue = Annotated[str, Field(max_length=MAX_ENV_VALUE_CHARS)]
ADDITIONAL_ENVS = Field(
    max_length=MAX_ENV_VARS,
    description="replica environment variables; names from the server's allow-list "
    "(thread, BLAS, ONNX Runtime and CUDA device variables, and GREENROOM_EXTRA_ENV_NAMES); "
    "values are shown as *** to callers without the deploy scope",
)
RUNTIME = Field(
    description="where the revision runs; absent: the server's default. Another runtime must "
    "be enabled by the operator (GREENROOM_EXTRA_RUNTIMES)"
)
AdditionalEnvs = dict[EnvName, EnvValue]
MASKED_VALUE = "***"


class ExecutorConfig(BaseModel):
    """How a revision runs and batches; defaults are the contract's."""

    model_config = ConfigDict(extra="forbid")

    gpu: Annotated[int, GPU] = 0
    replicas: Annotated[int, REPLICAS] = 1
    quantization: Quantization = "none"
    max_batch_size: Annotated[int, MAX_BATCH_SIZE] = 32
    max_batch_tokens: Annotated[int, MAX_BATCH_TOKENS] = 8192
    max_queue: Annotated[int, MAX_QUEUE] = 1024
    threads: Annotated[int, THREADS] = Field(default_factory=default_threads)
    runtime: Annotated[RuntimeTarget | None, RUNTIME] = None
    additional_envs: Annotated[AdditionalEnvs, ADDITIONAL_ENVS] = Field(default_factory=dict)


class ServingSettings(ExecutorConfig):
    """An executor config together with the engine: everything a revision needs to serve."""

    engine: Engine = "onnx"


class ConfigOverrides(BaseModel):
    """Flat overrides of a deployment config (api/tasks.md `config`): `engine` is the config's
    own field, the others live in its executor config, with ExecutorConfig's bounds. A key
    given as null goes back to its default; a key left out is kept."""

    model_config = ConfigDict(extra="forbid")

    engine: Engine | None = None
    quantization: Quantization | None = None
    replicas: Annotated[int | None, REPLICAS] = None
    max_batch_size: Annotated[int | None, MAX_BATCH_SIZE] = None
    max_batch_tokens: Annotated[int | None, MAX_BATCH_TOKENS] = None
    max_queue: Annotated[int | None, MAX_QUEUE] = None
    threads: Annotated[int | None, THREADS] = None
    runtime: Annotated[RuntimeTarget | None, RUNTIME] = None

    def as_dict(self) -> dict[str, Any]:
        """The overrides the caller gave, nulls included (they reset a key to its default)."""
        return self.model_dump(mode="json", exclude_unset=True)


OVERRIDE_KEYS = frozenset(ConfigOverrides.model_fields)


def shown_envs(envs: Mapping[str, str], *, reveal: bool) -> dict[str, str]:
    """`additional_envs` as a caller sees them: the values only with the `deploy` scope."""
    return dict(envs) if reveal else dict.fromkeys(envs, MASKED_VALUE)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# A datetime that serialises as RFC 3339 in UTC with a `Z` (every API response uses it).
UtcDateTime = Annotated[
    datetime,
    PlainSerializer(_rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


# ----- the deployments API (api/deployments.md) --------------------------------------------------

# A name (deployment, config, workspace, model id, each part of a project or served name):
# ASCII letters, digits, `_`, `-` and `.`, but not `.` or `..` (no homoglyphs, nothing a path
# could read as a parent). Written without look-arounds, which pydantic's regex engine lacks.
NAME_PART = r"(?:\.*[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.{3,})"
NAME_PATTERN = rf"^{NAME_PART}$"
PROJECT_PATTERN = rf"^{NAME_PART}(?:/{NAME_PART})*$"
SERVED_NAME_PATTERN = rf"^(?:{NAME_PART}/)?{NAME_PART}$"  # `name` or `workspace/name`
Name = Annotated[str, Field(min_length=1, max_length=255, pattern=NAME_PATTERN)]
Project = Annotated[str, Field(min_length=1, max_length=255, pattern=PROJECT_PATTERN)]
# Free text: bounded, and without NUL, which PostgreSQL cannot store (a 500 otherwise).
TEXT_PATTERN = r"^[^\x00]*$"
Description = Annotated[str, Field(max_length=1000, pattern=TEXT_PATTERN)]
StatusMessage = Annotated[str, Field(max_length=1000, pattern=TEXT_PATTERN)]
ModelProviderId = Annotated[str, Field(max_length=255, pattern=TEXT_PATTERN)]
# Versions are 32-bit in the store: larger numbers are refused before any query.
MAX_VERSION = 2**31 - 1
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
    config_version: ConfigVersion | None = None
    project: Project | None = None


class DeploymentUpdate(BaseModel):
    config: Name
    config_version: ConfigVersion | None = None


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
