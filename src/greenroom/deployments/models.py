"""Deployment configs and deployments: both versioned, one row per version."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from greenroom.schemas import served_name, split_served_name
from greenroom.store.db import Base, utcnow


def new_id() -> str:
    return str(uuid.uuid4())


class DeploymentConfig(Base):
    """One version of the serving settings of a model (`workspace/name`, version)."""

    __tablename__ = "deployment_configs"
    __table_args__ = (UniqueConstraint("workspace", "name", "entity_version"),)

    pk: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), default=new_id)  # stable across versions
    workspace: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    entity_version: Mapped[int]
    project: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(String(1000))
    engine: Mapped[str] = mapped_column(String(16), default="onnx")
    model_name: Mapped[str] = mapped_column(String(255))  # the embedding model id
    model_revision: Mapped[str | None] = mapped_column(String(64))  # its content hash
    executor_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Deployment(Base):
    """One version of a deployment; every version is one revision (`revision_id`)."""

    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("workspace", "name", "entity_version"),
        Index("ix_deployments_workspace_name", "workspace", "name"),
    )

    pk: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    # stable: the workloadId; indexed, as the workloads API looks versions up by it
    id: Mapped[str] = mapped_column(String(36), default=new_id, index=True)
    revision_id: Mapped[str] = mapped_column(String(36), default=new_id, unique=True)
    workspace: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    entity_version: Mapped[int]
    project: Mapped[str | None] = mapped_column(String(255))
    config: Mapped[str] = mapped_column(String(255))
    config_version: Mapped[int]
    status: Mapped[str] = mapped_column(String(16), default="UNKNOWN")
    status_message: Mapped[str | None] = mapped_column(String(1000))
    status_history: Mapped[list[Any]] = mapped_column(default=list)
    model_provider_id: Mapped[str | None] = mapped_column(String(255))
    auth_context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def served_name(self) -> str:
        return served_name(self.workspace, self.name)


__all__ = ["Deployment", "DeploymentConfig", "served_name", "split_served_name"]
