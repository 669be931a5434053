"""The live-revision pointer per served name, and what each router reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from greenroom.db import Base, utcnow


class LiveRevision(Base):
    """Which revision serves a name now; routers follow this pointer."""

    __tablename__ = "live_revisions"

    served_name: Mapped[str] = mapped_column(String(511), primary_key=True)
    revision_id: Mapped[str] = mapped_column(String(36))
    previous_revision_id: Mapped[str | None] = mapped_column(String(36))
    deployment_id: Mapped[str] = mapped_column(String(36))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RouterReport(Base):
    """A router's view: the live revision per name it serves and batches in flight per revision.

    The rollout's drain waits until every router with a fresh heartbeat serves green and has
    nothing in flight to blue.
    """

    __tablename__ = "router_reports"

    router_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    live: Mapped[dict[str, Any]] = mapped_column(default=dict)  # served name -> revision id
    in_flight: Mapped[dict[str, Any]] = mapped_column(default=dict)  # revision id -> count
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
