"""Audit events: record a write (one JSON log line and one row), read them a page at a time.

Plain functions led by `db_session` that never commit, and `AuditLog`, the recorder of the
request path (blocking: the middleware runs it in a thread). The table keeps the latest
`RETAINED_EVENTS` rows (refused writes need no token, so an unbounded table would be a disk an
anonymous client can fill); the log file keeps every line.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from greenroom.audit.models import AuditEvent
from greenroom.audit.schemas import AuditEntry
from greenroom.pagination import Page
from greenroom.store.db import Store

log = logging.getLogger("greenroom.audit")
RETAINED_EVENTS = 1_000_000
PRUNE_EVERY = 1_000  # writes recorded by a process between two prunings


def record(db_session: Session, *, entry: AuditEntry) -> AuditEvent:
    event = AuditEvent(**entry.model_dump())
    db_session.add(event)
    db_session.flush()
    return event


def prune(db_session: Session, *, keep: int = RETAINED_EVENTS) -> int:
    """Delete all but the latest `keep` events (by id); how many were deleted."""
    newest = db_session.scalar(select(func.max(AuditEvent.id)))
    if newest is None or newest <= keep:
        return 0
    result = db_session.execute(delete(AuditEvent).where(AuditEvent.id <= newest - keep))
    return result.rowcount or 0  # type: ignore[attr-defined]


def get_page(
    db_session: Session,
    *,
    page: int = 1,
    page_size: int = 100,
    principal_id: str | None = None,
    since: datetime | None = None,
) -> Page[AuditEvent]:
    """Events newest first, of one principal and from `since` on (a time without a zone is
    UTC) when given."""
    query = select(AuditEvent)
    if principal_id is not None:
        query = query.where(AuditEvent.principal_id == principal_id)
    if since is not None:
        query = query.where(AuditEvent.at >= as_utc(since))
    total = db_session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = db_session.scalars(
        query.order_by(AuditEvent.id.desc()).offset((page - 1) * page_size).limit(page_size)
    )
    return Page(items=list(rows), page=page, page_size=page_size, total=total)


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC (a time without a zone is UTC); clamped to the representable range."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # within a day of year 1 or 9999
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


class AuditLog:
    """Records the writes of one process into one store: the log line first, then the row; a
    row that cannot be written is logged, never raised."""

    def __init__(self, store: Store, *, prune_every: int = PRUNE_EVERY) -> None:
        self.store = store
        self.prune_every = prune_every
        self._recorded = 0
        self._lock = threading.Lock()

    def record(self, entry: AuditEntry) -> None:
        log.info(entry.log_line())
        try:
            with self.store.session_scope() as db_session:
                record(db_session, entry=entry)
                if self._due_for_pruning():
                    prune(db_session)
        except Exception as exc:
            log.error("could not store the audit event of %s: %s", entry.action, exc)

    def _due_for_pruning(self) -> bool:
        with self._lock:
            self._recorded += 1
            return self._recorded % self.prune_every == 0
