"""What the model registry API accepts and returns (`/v1/embedding-models`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from greenroom.schemas import NAME_PATTERN, Description, UtcDateTime

EmbeddingModelId = Annotated[str, Field(min_length=1, max_length=255, pattern=NAME_PATTERN)]
Source = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4096,
        pattern=r"^[^\x00-\x1f\x7f]+$",  # no NUL or other control characters
        description="a local model directory or `package:<import name>` (a top-level name of "
        "an installed package shipping a `model` folder or being one; it is never imported)",
    ),
]


class EmbeddingModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: EmbeddingModelId
    source: Source
    description: Description | None = None
    allow_dimensions: bool = Field(
        default=False, description="whether `/v1/embeddings` may shorten vectors (`dimensions`)"
    )


class EmbeddingModelUpdate(BaseModel):
    """New weights for the same id; a field left out keeps its value."""

    model_config = ConfigDict(extra="forbid")

    source: Source
    description: Description | None = None
    allow_dimensions: bool | None = None


class EmbeddingModelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    source: str
    description: str | None
    path: str
    content_hash: str
    dimension: int
    max_seq_length: int
    pooling: str
    normalize: bool
    allow_dimensions: bool
    created_at: UtcDateTime
    updated_at: UtcDateTime
