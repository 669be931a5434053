"""The ASGI middleware that records every control-plane write (docs/api/auth.md, audit).

A write is any request but GET and HEAD, outside `/v1/embeddings` (the data plane). It is
recorded once the app has answered it, refused ones included (401, 403, 413, 422, ...): who
(the principal the authentication middleware put in `scope["state"]["principal"]`, null
without a valid token), what (the method, the path, the route's template and path parameters)
and how it ended (the status code sent, ok/refused/failed). Never its body, query or headers.
It runs outermost, so that it sees the answers of the other middlewares too; the row is written
after the app is done (the request's own transaction has committed by then: on SQLite an
earlier insert would wait for it), in a thread, and a failure to record is only logged.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from greenroom.audit.schemas import MAX_ID_CHARS, MAX_PATH_CHARS, AuditEntry, result_of
from greenroom.audit.service import AuditLog
from greenroom.auth.policy import READ_METHODS
from greenroom.auth.service import Principal
from greenroom.edge import EMBEDDINGS_PATH, match_route
from greenroom.store.db import Store, utcnow

log = logging.getLogger("greenroom.audit")


def is_audited(method: str, path: str) -> bool:
    data_plane = path == EMBEDDINGS_PATH or path.startswith(EMBEDDINGS_PATH + "/")
    return method not in READ_METHODS and not data_plane


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._audit_log: AuditLog | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_audited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        at = utcnow()
        state = scope.setdefault("state", {})  # shared with the middlewares and views below
        status_code: int | None = None

        async def send_noting_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_noting_status)
            failed = False
        finally:
            try:
                await self._record(scope, _entry(scope, state, at, status_code, failed))
            except Exception as exc:
                log.error("could not record the audit event of %r: %s", scope["path"][:200], exc)

    async def _record(self, scope: Scope, entry: AuditEntry) -> None:
        store: Store | None = getattr(scope["app"].state, "store", None)
        if store is None:  # before start-up: a line, no row
            log.info(entry.log_line())
            return
        if self._audit_log is None or self._audit_log.store is not store:
            self._audit_log = AuditLog(store)
        await asyncio.to_thread(self._audit_log.record, entry)


def _entry(
    scope: Scope, state: dict[str, Any], at: datetime, status_code: int | None, failed: bool
) -> AuditEntry:
    principal = state.get("principal")
    if not isinstance(principal, Principal):
        principal = None
    method, path = _text(scope["method"], 16), _text(scope["path"], MAX_PATH_CHARS)
    template, params = _route(scope)
    client = scope.get("client")
    code = status_code if status_code is not None else 500
    return AuditEntry(
        at=at,
        principal_id=principal.id if principal else None,
        principal_name=principal.name if principal else None,
        client=_text(client[0], 64) if client else None,
        method=method,
        path=path,
        action=_text(f"{method} {template or path}", MAX_PATH_CHARS),
        object={str(key): _text(value, MAX_ID_CHARS) for key, value in params.items()},
        status_code=code,
        result=result_of(code, failed=failed or status_code is None),
    )


def _text(value: object, limit: int) -> str:
    """`value` as text a row can hold: bounded, NUL spelt out (PostgreSQL refuses NUL, and a
    row that cannot be written must not be a way to leave no trace)."""
    return str(value).replace("\x00", "\\x00")[:limit]


def _route(scope: Scope) -> tuple[str | None, dict[str, Any]]:
    """The template and path parameters of the route that answered (the router leaves them in
    the scope), or of the one the router would have picked (a refusal before routing)."""
    template = getattr(scope.get("route"), "path_format", None)
    if template is not None and "path_params" in scope:
        return template, dict(scope["path_params"])
    return match_route(scope["app"], scope)
