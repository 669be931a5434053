"""What the audit API returns (`GET /v1/audit`, docs/api/auth.md), and what a recorded write is."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from greenroom.schemas import Pagination, UtcDateTime

MAX_PATH_CHARS = 1024  # of a recorded path (and action); longer ones are cut
MAX_ID_CHARS = 255  # of each recorded path parameter


class AuditResult(StrEnum):
    OK = "ok"  # answered below 400
    REFUSED = "refused"  # 4xx: no token, lacking scope, invalid, not found, conflict, too large
    FAILED = "failed"  # 5xx, or the request ended in an error


class AuditEntry(BaseModel):
    """One control-plane write as recorded: never its body, its query or a header."""

    model_config = ConfigDict(from_attributes=True)

    at: UtcDateTime = Field(description="when the request came")
    principal_id: str | None = Field(description="the token's id; null without a valid token")
    principal_name: str | None
    client: str | None = Field(description="the peer's address")
    method: str
    path: Annotated[str, Field(max_length=MAX_PATH_CHARS)]
    action: Annotated[
        str, Field(max_length=MAX_PATH_CHARS, description="the method and the route's template")
    ]
    object: dict[str, Any] = Field(description="the path's parameters: what the write targets")
    status_code: int
    result: AuditResult

    def log_line(self) -> str:
        """The entry as one JSON line (control characters of a path escaped)."""
        return self.model_dump_json()


class AuditEventRead(AuditEntry):
    id: int = Field(description="the order of writes: greater is newer")


class AuditPage(BaseModel):
    """A page of events, newest first."""

    data: list[AuditEventRead]
    pagination: Pagination


def result_of(status_code: int, *, failed: bool = False) -> AuditResult:
    if failed or status_code >= 500:
        return AuditResult.FAILED
    return AuditResult.REFUSED if status_code >= 400 else AuditResult.OK
