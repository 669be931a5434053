"""What the migration API accepts and returns (docs/api/migrations.md, names are the
contract's), what the router sync follows of each migration (`MigrationFollow`), and the shadow
summary each API process writes (`ShadowSummaryData`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from greenroom.migrations.states import MigrationStage
from greenroom.schemas import TEXT_PATTERN, UtcDateTime

MAX_SAMPLES_PER_CALL = 2048
MAX_SAMPLE_CHARS = 8192
MAX_LATENCIES = 512  # latencies per side a summary carries: the most recent ones
Latency = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


# ----- what the router sync follows ---------------------------------------------------------------


@dataclass(frozen=True)
class AdapterRow:
    """An adapter as a router applies it: `parameters` (npz bytes) map `revision_id`'s space
    into `target_embedding_space`, then `target_normalize` says whether to L2-normalise."""

    id: str
    revision_id: str
    kind: str
    parameters: bytes
    target_embedding_space: str
    target_normalize: bool


@dataclass(frozen=True)
class MigrationFollow:
    """A served name in a migration (stage staged or adapted), as the routers follow it.
    `adapter` is set only under `adapted`: the active adapter into the old revision's space."""

    served_name: str
    stage: MigrationStage
    staged_revision_id: str | None
    old_revision_id: str | None
    shadow_fraction: float
    adapter: AdapterRow | None


# ----- the shadow summary one API process writes, and the merged report -----------------------


class ShadowSummaryData(BaseModel):
    """One process's shadow summary of a served name (the `shadow_summaries.summary` JSON)."""

    staged_revision_id: str = Field(max_length=36)
    requests: int = Field(default=0, ge=0)
    inputs: int = Field(default=0, ge=0)
    dropped: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    live_latency_ms: list[Latency] = Field(default_factory=list)
    staged_latency_ms: list[Latency] = Field(default_factory=list)
    pairs: int = Field(default=0, ge=0)
    window: int = Field(default=0, ge=0)
    mean_cosine: float | None = Field(default=None, allow_inf_nan=False)
    neighbour_overlap_at_10: float | None = Field(default=None, allow_inf_nan=False)

    @field_validator("live_latency_ms", "staged_latency_ms", mode="before")
    @classmethod
    def most_recent(cls, values: object) -> object:
        """Only the most recent latencies are kept (a summary stays small)."""
        return values[-MAX_LATENCIES:] if isinstance(values, list) else values


class ShadowLatency(BaseModel):
    live_p50: float | None
    live_p99: float | None
    staged_p50: float | None
    staged_p99: float | None


class ShadowReport(BaseModel):
    """The shadow traffic of a staged revision, merged over the API processes that reported."""

    fraction: float
    requests: int
    inputs: int
    dropped: int
    errors: int
    latency_ms: ShadowLatency
    mean_cosine: float | None
    neighbour_overlap_at_10: float | None
    window: int
    processes: int


# ----- GET /v1/migrations/{workspace}/{name} ----------------------------------------------------


class LiveState(BaseModel):
    revision_id: str
    embedding_space: str | None = Field(
        description="the space of the revision's vectors; null only when its weights cannot be read"
    )


class StagedState(LiveState):
    phase: str


class AdapterState(BaseModel):
    """An adapter's held-out evaluation (the answer of `POST …/adapter` too)."""

    kind: str
    pairs: int
    held_out: int
    mean_cosine: float | None
    neighbour_overlap_at_10: float | None
    fitted_at: UtcDateTime


class Thresholds(BaseModel):
    adapter_mean_cosine: float
    adapter_neighbour_overlap_at_10: float


class MigrationState(BaseModel):
    served_name: str
    stage: MigrationStage
    live: LiveState | None
    staged: StagedState | None
    shadow: ShadowReport | None
    adapter: AdapterState | None
    samples: int
    thresholds: Thresholds


# ----- PUT …/shadow, POST …/samples ---------------------------------------------------------------


class ShadowFractionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)


class ShadowFractionResponse(BaseModel):
    served_name: str
    fraction: float


SampleText = Annotated[str, Field(min_length=1, max_length=MAX_SAMPLE_CHARS, pattern=TEXT_PATTERN)]


class SamplesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[SampleText] = Field(min_length=1, max_length=MAX_SAMPLES_PER_CALL)


class SamplesResponse(BaseModel):
    served_name: str
    samples: int = Field(description="the sample texts kept for the served name now")
    added: int = Field(description="the texts this call stored")
