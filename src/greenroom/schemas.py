"""Pydantic types every API family shares: timestamps, names, free text, the pagination block,
and the allow-list of what a replica's environment may hold (a config's `additional_envs`).

Plain values only: this module imports no domain and no engine package, so any of them may
import it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)

from greenroom.config import Engine, Quantization, RuntimeTarget, default_threads


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# A datetime that serialises as RFC 3339 in UTC with a `Z` (every API response uses it).
UtcDateTime = Annotated[
    datetime,
    PlainSerializer(_rfc3339, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

# A name (deployment, config, workspace, model id, each part of a project or served name):
# ASCII letters, digits, `_`, `-` and `.`, but not `.` or `..` (no homoglyphs, nothing a path
# could read as a parent). Written without look-arounds, which pydantic's regex engine lacks.
NAME_PART = r"(?:\.*[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.{3,})"
NAME_PATTERN = rf"^{NAME_PART}$"
PROJECT_PATTERN = rf"^{NAME_PART}(?:/{NAME_PART})*$"
SERVED_NAME_PATTERN = rf"^(?:{NAME_PART}/)?{NAME_PART}$"  # `name` or `workspace/name`
# How a deploy brings its revision in: `green` switches to it, `staged` brings it up beside the
# live one without traffic (an embedding migration, docs/api/migrations.md).
Strategy = Literal["green", "staged"]
Name = Annotated[str, Field(min_length=1, max_length=255, pattern=NAME_PATTERN)]
Project = Annotated[str, Field(min_length=1, max_length=255, pattern=PROJECT_PATTERN)]
# Free text: bounded, and without NUL, which PostgreSQL cannot store (a 500 otherwise).
TEXT_PATTERN = r"^[^\x00]*$"
Description = Annotated[str, Field(max_length=1000, pattern=TEXT_PATTERN)]
# Versions are 32-bit in the store: larger numbers are refused before any query.
MAX_VERSION = 2**31 - 1


class Pagination(BaseModel):
    page: int
    page_size: int
    current_page_size: int
    total_pages: int
    total_results: int


# ----- a replica's environment: an explicit minimum plus these allow-listed variables ---------
ENV_NAME_PATTERN = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
MAX_ENV_VARS = 32
MAX_ENV_VALUE_CHARS = 1024
MASKED_VALUE = "***"


def env_problem(name: str, value: str, allowed: frozenset[str]) -> str | None:
    """Why `name=value` may not be set in a replica's environment (one sentence), or None."""
    if not ENV_NAME_PATTERN.fullmatch(name) or name not in allowed:
        return (
            f"The environment variable '{name[:128]}' is not allowed in additional_envs; "
            f"allowed: {', '.join(sorted(allowed))} (an operator may add names with "
            "GREENROOM_EXTRA_ENV_NAMES)."
        )
    if len(value) > MAX_ENV_VALUE_CHARS or "\0" in value:
        return (
            f"The value of '{name}' must be at most {MAX_ENV_VALUE_CHARS} characters "
            "without NUL bytes."
        )
    return None


def shown_envs(envs: Mapping[str, str], *, reveal: bool) -> dict[str, str]:
    """`additional_envs` as a caller sees them: the values only with the `deploy` scope."""
    return dict(envs) if reveal else dict.fromkeys(envs, MASKED_VALUE)


# ----- served names: `name` in workspace `default`, `workspace/name` elsewhere ------------------


def embedding_space(
    embedding_model_id: str, content_hash: str, dimension: int, *, normalized: bool
) -> str:
    """The name of a revision's vector space, as `x-embedding-space` shows it:
    `<model id>@<first 12 of its content hash>/<dimension>/<l2 | none>`."""
    norm = "l2" if normalized else "none"
    return f"{embedding_model_id}@{content_hash[:12]}/{dimension}/{norm}"


def served_name(workspace: str, name: str) -> str:
    """`name` in workspace `default`, `workspace/name` elsewhere."""
    return name if workspace == "default" else f"{workspace}/{name}"


def split_served_name(served: str) -> tuple[str, str]:
    """(workspace, name) of a served name: a name without a workspace is in `default`."""
    workspace, _, name = served.rpartition("/")
    return (workspace or "default"), name


# ----- executor settings (a deployment config's; the Tasks API's overrides too): each bound
# is written once, here, and every model that carries the setting (ExecutorConfig,
# ExecutorConfigUpdate, ConfigOverrides) annotates its field with it.

GPU = Field(ge=0, le=16, description="GPUs per replica; 0 runs on the CPU")
REPLICAS = Field(ge=1, le=64, description="replicas of a revision")
MAX_BATCH_SIZE = Field(ge=1, le=2048, description="inputs per engine batch")
MAX_BATCH_TOKENS = Field(ge=1, le=1_048_576, description="padded tokens per engine batch")
MAX_QUEUE = Field(ge=1, le=65_536, description="inputs waiting per served name")
THREADS = Field(ge=1, le=256, description="engine threads per replica")
CACHE_MIB = Field(
    ge=0,
    le=65_536,
    description="MiB of exact embedding cache per revision in each API process (keyed by the "
    "token ids: a hit is the revision's own vector); 0: off",
)
# Replicas that follow the load (issue 13): with min_replicas and max_replicas both given, the
# count moves between them; without them `replicas` is a fixed count. Ray Serve's defaults.
MIN_REPLICAS = Field(ge=1, le=64, description="autoscaling: the fewest replicas")
MAX_REPLICAS = Field(ge=1, le=64, description="autoscaling: the most replicas")
TARGET_ONGOING_REQUESTS = Field(
    gt=0, le=1024, description="autoscaling: requests in flight per replica to aim at"
)
UPSCALE_DELAY_S = Field(ge=0, le=3600, description="autoscaling: load above target this long")
DOWNSCALE_DELAY_S = Field(ge=0, le=86_400, description="autoscaling: load below target this long")
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
    cache_mib: Annotated[int, CACHE_MIB] = 0
    min_replicas: Annotated[int | None, MIN_REPLICAS] = None
    max_replicas: Annotated[int | None, MAX_REPLICAS] = None
    target_ongoing_requests: Annotated[float, TARGET_ONGOING_REQUESTS] = 2.0
    upscale_delay_s: Annotated[float, UPSCALE_DELAY_S] = 30.0
    downscale_delay_s: Annotated[float, DOWNSCALE_DELAY_S] = 600.0

    @model_validator(mode="after")
    def _a_whole_range(self) -> ExecutorConfig:
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("give min_replicas and max_replicas together, or neither")
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise ValueError("min_replicas must not be above max_replicas")
        return self


class ServingSettings(ExecutorConfig):
    """An executor config together with the engine: everything a revision needs to serve."""

    engine: Engine = "onnx"


class ConfigOverrides(BaseModel):
    """Flat overrides of a deployment config (docs/api/tasks.md `config`): `engine` is the config's
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
    cache_mib: Annotated[int | None, CACHE_MIB] = None
    min_replicas: Annotated[int | None, MIN_REPLICAS] = None
    max_replicas: Annotated[int | None, MAX_REPLICAS] = None
    target_ongoing_requests: Annotated[float | None, TARGET_ONGOING_REQUESTS] = None
    upscale_delay_s: Annotated[float | None, UPSCALE_DELAY_S] = None
    downscale_delay_s: Annotated[float | None, DOWNSCALE_DELAY_S] = None

    def as_dict(self) -> dict[str, Any]:
        """The overrides the caller gave, nulls included (they reset a key to its default)."""
        return self.model_dump(mode="json", exclude_unset=True)


OVERRIDE_KEYS = frozenset(ConfigOverrides.model_fields)
