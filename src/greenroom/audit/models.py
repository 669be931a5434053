"""The audit table: one row per control-plane write, accepted or refused; never a body."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from greenroom.store.db import Base, utcnow


class AuditEvent(Base):
    """Who (`principal_*`, null when no valid token came), what (`action`: the method and route
    template, `object`: the path's ids) and how it ended (`status_code`, `result`)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)  # the order of writes
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)  # when the request came
    principal_id: Mapped[str | None] = mapped_column(String(36), index=True)
    principal_name: Mapped[str | None] = mapped_column(String(255))
    client: Mapped[str | None] = mapped_column(String(64))  # the peer's address
    method: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(1024))
    action: Mapped[str] = mapped_column(String(1024))
    object: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status_code: Mapped[int]
    result: Mapped[str] = mapped_column(String(16))  # ok, refused, failed
