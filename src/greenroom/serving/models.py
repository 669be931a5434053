"""What each router reports, and what it served: the router sync writes both; the rollout reads
the reports, `GET /v1/traffic` the traffic summaries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, String
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


class TrafficSummary(Base):
    """What one router served in one 10-s bucket (`serving.traffic`): per (served name,
    revision) the bucket's counts, as JSON entries. The router sync rewrites the buckets that
    changed every `traffic_summary_interval_s` and deletes rows past the hour;
    `serving.traffic.traffic_history` merges every router's rows of a window."""

    __tablename__ = "traffic_summaries"

    router_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket_start: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, autoincrement=False, index=True
    )
    # [{"served_name", "revision_id", "requests", "errors", "inputs", "latency_counts",
    #   "latency_sum_ms", "batch_counts", "batches", "queue_depth_max"}, …]
    series: Mapped[list[Any]] = mapped_column(default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
