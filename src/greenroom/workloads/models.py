"""Revisions (a snapshot of what runs, its desired replicas, what was reported) and the
live-revision pointer of each served name."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from greenroom.store.db import Base, utcnow


def new_replica_secret() -> str:
    return secrets.token_hex(32)


class Revision(Base):
    """One revision. The worker writes `desired_replicas`; the runtime reports `ready_replicas`
    and `replicas` (each replica's id, state, endpoint and restarts)."""

    __tablename__ = "revisions"
    __table_args__ = (Index("ix_revisions_desired", "desired_replicas"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # = deployment.revision_id
    deployment_id: Mapped[str] = mapped_column(String(36), index=True)
    served_name: Mapped[str] = mapped_column(String(511))
    embedding_model_id: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(4096))
    model_path: Mapped[str] = mapped_column(String(4096))
    content_hash: Mapped[str] = mapped_column(String(64))
    engine: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the executor config snapshot
    runtime: Mapped[str] = mapped_column(String(16), default="local")
    # "normal", or "low" while staged: its replicas then yield the CPU to the live revision's
    # (a higher `nice` locally, half the CPUs on Ray); promotion restarts them at "normal".
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")
    phase: Mapped[str] = mapped_column(String(16), default="Creating")
    phase_message: Mapped[str | None] = mapped_column(String(1000))
    phase_updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    desired_replicas: Mapped[int] = mapped_column(default=0)
    ready_replicas: Mapped[int] = mapped_column(default=0)
    replicas: Mapped[list[Any]] = mapped_column(default=list)
    reported_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]
    # Authenticates every connection to the revision's replicas (the replica protocol); never
    # shown by any API, never in argv or a replica's environment.
    replica_secret: Mapped[str] = mapped_column(String(64), default=new_replica_secret)

    def snapshot(self) -> dict[str, Any]:
        """What makes two revisions the same deployment: weights and serving settings."""
        return {
            "content_hash": self.content_hash,
            "engine": self.engine,
            "config": self.config,
            "runtime": self.runtime,
        }


class LiveRevision(Base):
    """Which revision serves a name now; routers follow this pointer."""

    __tablename__ = "live_revisions"

    served_name: Mapped[str] = mapped_column(String(511), primary_key=True)
    revision_id: Mapped[str] = mapped_column(String(36))
    previous_revision_id: Mapped[str | None] = mapped_column(String(36))
    deployment_id: Mapped[str] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
