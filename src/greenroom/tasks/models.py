"""The task table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from greenroom.store.db import Base, utcnow


class Task(Base):
    """A deploy or delete of one served name. `request` is the normalised request body (the
    idempotency comparison); `task_metadata` is the API's `metadata`, steps included."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_model_created", "embedding_model_id", "created_at"),
        Index("ix_tasks_status", "status"),
        # The claim's tests of a candidate's name ("a task of this name is processing", "an
        # older one is pending"): without it each reads every pending task (bench/control_plane).
        Index("ix_tasks_model_status_created", "embedding_model_id", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # deploy | delete
    embedding_model_id: Mapped[str] = mapped_column(String(511))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    detail: Mapped[str | None] = mapped_column(String(1500))
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    task_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
