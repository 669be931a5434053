"""Deployment config schemas (api/deployments.md): the serving settings of a model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

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
