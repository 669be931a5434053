"""The embedding model table."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from greenroom.store.db import Base, utcnow


class EmbeddingModel(Base):
    """A registered model: where its weights are and what it produces."""

    __tablename__ = "embedding_models"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    source: Mapped[str] = mapped_column(String(4096))
    description: Mapped[str | None] = mapped_column(String(1000))
    path: Mapped[str] = mapped_column(String(4096))  # the resolved model directory
    content_hash: Mapped[str] = mapped_column(String(64))
    dimension: Mapped[int]
    max_seq_length: Mapped[int]
    pooling: Mapped[str] = mapped_column(String(32))
    normalize: Mapped[bool]
    allow_dimensions: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
