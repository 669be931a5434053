"""Read the routers' reports: what every router that is still alive serves.

Each router's sync (`greenroom.serving.sync`) writes one `RouterReport` row per pass, with a
heartbeat. The rollout asks `routers_agree` whether every router that reported recently satisfies
a condition (serves green, has nothing in flight to blue, has prepared the staged revision or
loaded the adapter: `serves`, `staged_of`, `adapter_of`). A router whose heartbeat is older than
`ROUTER_FRESH_S` is gone: it no longer holds anything up.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from greenroom.serving.models import RouterReport
from greenroom.store.db import utcnow

ROUTER_FRESH_S = 10.0  # a router that has not reported for this long is gone


def fresh_reports(db_session: Session, *, fresh_s: float = ROUTER_FRESH_S) -> list[RouterReport]:
    """The reports of the routers whose heartbeat is at most `fresh_s` seconds old."""
    fresh_since = utcnow() - timedelta(seconds=fresh_s)
    return list(
        db_session.scalars(select(RouterReport).where(RouterReport.heartbeat_at >= fresh_since))
    )


def routers_agree(
    db_session: Session,
    *,
    condition: Callable[[RouterReport], bool],
    fresh_s: float = ROUTER_FRESH_S,
) -> bool:
    """True when every router with a fresh heartbeat satisfies `condition` (stale ones are gone;
    with no fresh router at all, nothing disagrees)."""
    return all(condition(report) for report in fresh_reports(db_session, fresh_s=fresh_s))


def serves(report: RouterReport, revision_id: str) -> bool:
    """Whether the router serves the revision for some name: live, or staged and prepared."""
    live = report.live or {}
    return revision_id in live.values() or any(
        _pinned_entry(report, name).get("staged") == revision_id for name in report.pinned or {}
    )


def staged_of(report: RouterReport, served_name: str) -> str | None:
    """The staged revision the router has prepared for the name (None when none)."""
    staged = _pinned_entry(report, served_name).get("staged")
    return staged if isinstance(staged, str) else None


def adapter_of(report: RouterReport, served_name: str) -> str | None:
    """The adapter the router applies to the name (None when none)."""
    adapter = _pinned_entry(report, served_name).get("adapter")
    return adapter if isinstance(adapter, str) else None


def _pinned_entry(report: RouterReport, served_name: str) -> dict[str, Any]:
    entry = (report.pinned or {}).get(served_name)
    return entry if isinstance(entry, dict) else {}
