"""`/v1/audit`: the control plane's writes, newest first (admin only; docs/api/auth.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from greenroom.audit import service as audit_service
from greenroom.audit.schemas import AuditEventRead, AuditPage
from greenroom.deps import DbSession
from greenroom.schemas import Pagination

api_router = APIRouter(prefix="/v1/audit", tags=["audit"])

MAX_PAGE = 1_000_000
Page = Annotated[int, Query(ge=1, le=MAX_PAGE)]
PageSize = Annotated[int, Query(ge=1, le=1000)]
PrincipalId = Annotated[
    str | None,
    Query(
        max_length=36, pattern=r"^[A-Za-z0-9-]+$", description="only the writes of this token id"
    ),
]
Since = Annotated[
    datetime | None, Query(description="only the writes from this time on (RFC 3339; UTC)")
]


@api_router.get("", response_model=AuditPage)
def list_events(
    db_session: DbSession,
    page: Page = 1,
    page_size: PageSize = 100,
    principal_id: PrincipalId = None,
    since: Since = None,
) -> AuditPage:
    """Every control-plane write, refused ones included, newest first; never a body."""
    found = audit_service.get_page(
        db_session, page=page, page_size=page_size, principal_id=principal_id, since=since
    )
    return AuditPage(
        data=[AuditEventRead.model_validate(event) for event in found.items],
        pagination=Pagination(
            page=found.page,
            page_size=found.page_size,
            current_page_size=len(found.items),
            total_pages=found.total_pages,
            total_results=found.total,
        ),
    )
