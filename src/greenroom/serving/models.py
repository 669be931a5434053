"""What each router reports: the router sync writes it, the rollout reads it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from greenroom.store.db import Base, utcnow


class RouterReport(Base):
    """A router's view: the live revision per name it serves and batches in flight per revision
    (staged revisions included), and per name in a migration the staged revision it has prepared
    and the adapter it has loaded (`pinned`).

    The rollout's drain waits until every router with a fresh heartbeat serves green and has
    nothing in flight to blue; a staged deploy and a promotion wait on `pinned`
    (`serving.reports.staged_of`, `adapter_of`).
    """

    __tablename__ = "router_reports"

    router_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    live: Mapped[dict[str, Any]] = mapped_column(default=dict)  # served name -> revision id
    in_flight: Mapped[dict[str, Any]] = mapped_column(default=dict)  # revision id -> count
    # served name -> {"staged": revision id | None, "adapter": adapter id | None}
    pinned: Mapped[dict[str, Any]] = mapped_column(default=dict)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
