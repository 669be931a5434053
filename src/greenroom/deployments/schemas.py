"""Deployment config schemas (api/deployments.md): the serving settings of a model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from greenroom.config import Engine, Quantization, RuntimeTarget, default_threads


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
