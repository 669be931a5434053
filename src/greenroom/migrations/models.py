"""The tables of embedding migrations: one row per served name that is or was in a migration,
the sample texts an adapter is fitted from, each router's shadow summary, and the adapters."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from greenroom.store.db import Base, utcnow


def new_adapter_id() -> str:
    return str(uuid.uuid4())


class Migration(Base):
    """Where a served name's migration stands. `stage` is written by `states.transition()`
    only; `staged_revision_id` is set while a revision is staged, `old_revision_id` under
    `adapted` (the revision whose space the served name still answers in). The row outlives
    the migration (stage `none`), keeping the shadow fraction the caller chose."""

    __tablename__ = "migrations"

    served_name: Mapped[str] = mapped_column(String(511), primary_key=True)
    stage: Mapped[str] = mapped_column(String(16), default="none")
    staged_revision_id: Mapped[str | None] = mapped_column(String(36))
    old_revision_id: Mapped[str | None] = mapped_column(String(36))
    shadow_fraction: Mapped[float] = mapped_column(Float, default=0.05)
    stage_updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class MigrationSample(Base):
    """One sample text of a served name: embedded by both revisions when an adapter is fitted,
    in any API process. The newest `service.MAX_SAMPLES` are kept (by id: oldest first)."""

    __tablename__ = "migration_samples"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    served_name: Mapped[str] = mapped_column(String(511), index=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ShadowSummary(Base):
    """What one API process's router measured of a served name's shadow traffic (the JSON of
    `schemas.ShadowSummaryData`); `service.shadow_report` merges the fresh ones."""

    __tablename__ = "shadow_summaries"

    served_name: Mapped[str] = mapped_column(String(511), primary_key=True)
    router_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Adapter(Base):
    """A fitted map from `revision_id`'s space (the staged, then promoted, revision) into
    `target_revision_id`'s (the live revision when it was fitted). `parameters` are the npz
    bytes of `adapters.FittedAdapter.to_bytes()`; at most one adapter of a name is not
    retired."""

    __tablename__ = "adapters"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_adapter_id)
    served_name: Mapped[str] = mapped_column(String(511), index=True)
    revision_id: Mapped[str] = mapped_column(String(36))
    target_revision_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(16))
    parameters: Mapped[bytes] = mapped_column(LargeBinary)
    evaluation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    target_embedding_space: Mapped[str] = mapped_column(String(300))
    target_normalize: Mapped[bool] = mapped_column(Boolean)
    fitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None]
