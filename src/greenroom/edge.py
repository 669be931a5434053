"""The HTTP edge: what every request passes before the app reads a byte of its body.

`EdgeMiddleware`, pure ASGI in front of the app, does two things, in this order:

1. Authentication. Every path but the open ones (`OPEN_PATHS`: health, readiness, the API
   documents, the console's static files) needs a bearer token, with the scope that
   `greenroom.auth.policy` gives the route its method and path match (the app's own route
   matching, before any endpoint runs); a path no route matches needs a valid token, so its 404
   tells a stranger nothing. A refusal (401, 403) is answered here, in the API family's shape,
   without reading the body; the principal goes to `scope["state"]["principal"]`
   (`request.state.principal`), where `authorize` and the audit log read it.
2. The body limit: `max_request_bytes` on `/v1/embeddings`, 8 MiB on a migration's sample texts,
   `max_control_request_bytes` on every other route. A declared `Content-Length` over it is
   refused at once (413); a body without one (chunked) is counted as it streams in, and the
   read that crosses the limit raises `RequestBodyTooLarge` (413), so nothing over the limit
   is ever buffered.

Then it calls the app, or, for a route it has a shortcut for, that route's own ASGI endpoint
directly. `create_app` puts one edge in the app's middleware stack and one with the shortcut of
`POST /v1/embeddings` at the app's front door (`greenroom.app.GreenroomAPI`), where that route's
requests skip Starlette's middleware stack and FastAPI's routing alike.

Header sizes are the HTTP server's to bound: `UVICORN_LIMITS` for `greenroom serve` and the test
servers alike. The parser is httptools (llhttp, in C: a fraction of h11's cost per request, about
a sixth of the API process's CPU on a small embedding request), whose head buffer uvicorn leaves
unbounded, so `BoundedHttpToolsProtocol` bounds it: a request line and headers over
`MAX_HEADER_BYTES` get a 400 and the connection is closed, and a head still incomplete after that
many bytes (a header that never ends) is refused the same way, so at most one read of the socket
past the limit is ever buffered. It also gives each response a `HeadJoiningTransport`, which
sends the head uvicorn writes on its own with the body's first part.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from greenroom.auth import policy
from greenroom.auth.deps import authenticate, bearer_token, require_scope
from greenroom.auth.policy import required_scope
from greenroom.config import Settings
from greenroom.errors import GreenroomError, PayloadTooLargeError

# the policy's open routes, and what is not an API route: the API documents, the console
OPEN_PATHS = policy.OPEN_PATHS | {
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
    "/ui",
}
OPEN_PREFIXES = ("/ui/",)  # the console's static files
EMBEDDINGS_PATH = "/v1/embeddings"
# sample texts of a migration: up to 2,048 texts of 8 KiB a call (docs/api/migrations.md)
MIGRATION_SAMPLES_PATH = re.compile(r"/v1/migrations/[^/]+/[^/]+/samples")
MIGRATION_SAMPLES_MAX_BYTES = 8 * 1024 * 1024
# The request line and headers together: 400 past it. Tokens are 43 characters.
MAX_HEADER_BYTES = 16 * 1024
HEAD_TOO_LARGE = "Request line and headers are over 16 KiB."


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools turns it into a parser error (a 400)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request head bounded to `MAX_HEADER_BYTES`."""

    _head_bytes = 0  # of the request line and headers parsed so far
    _fed_in_head = 0  # bytes given to the parser since the head began
    _in_head = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes, self._fed_in_head, self._in_head = 0, 0, True

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not previous:
            # a new request: its task is created, not started, and writes through this
            self.cycle.transport = HeadJoiningTransport(self.transport)  # type: ignore[assignment]

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEADER_BYTES:
            raise HeadTooLarge(HEAD_TOO_LARGE)

    def data_received(self, data: bytes) -> None:
        started_in_head = self._in_head
        super().data_received(data)
        if started_in_head and self._in_head and not self.transport.is_closing():
            # a head still incomplete: llhttp buffers a header's pieces until it ends
            self._fed_in_head += len(data)
            if self._fed_in_head > MAX_HEADER_BYTES:
                self.logger.warning(HEAD_TOO_LARGE)
                self.send_400_response(HEAD_TOO_LARGE)


class HeadJoiningTransport:
    """A response's view of its connection: its first write (the head uvicorn writes at
    `http.response.start`) is held and sent with the next (the body's first part), so that a
    small response leaves in one write, one segment that wakes the client once. Held no longer
    than the event loop's next turn (a streamed response's first part may come later), and
    never joined to a part over `JOIN_MAX_BYTES` (no copy of a large body)."""

    JOIN_MAX_BYTES = 64 * 1024

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes) -> None:
        if self._first:
            self._first, self._held = False, data
            asyncio.get_running_loop().call_soon(self._flush)
            return
        held, self._held = self._held, None
        if held is not None and len(data) <= self.JOIN_MAX_BYTES:
            data = held + data
        elif held is not None:
            self._transport.write(held)
        self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


UVICORN_LIMITS: dict[str, Any] = {"http": BoundedHttpToolsProtocol}

ErrorRenderer = Callable[..., Response]  # `greenroom.app.render_error`


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def too_large_message(limit: int) -> str:
    return f"The request body is over this route's {size_text(limit)} limit; send a smaller one."


def size_text(size: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


class RequestBodyTooLarge(StarletteHTTPException):
    """Raised by the receive channel when a streamed body crosses its limit. An HTTPException,
    so that FastAPI's body parsing passes it on to the family's error handler unchanged."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=too_large_message(limit))


class EdgeMiddleware:
    """`shortcuts`: (method, path) of a static route -> a plain ASGI app that answers it, called
    here once the request is authenticated and within its limit, instead of the app behind (the
    route must also be the app's, for its scope and its OpenAPI entry). The hot path,
    `POST /v1/embeddings`, skips FastAPI's layers so."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        render_error: ErrorRenderer,
        shortcuts: Mapping[tuple[str, str], ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.render_error = render_error
        self.shortcuts = dict(shortcuts or {})

    def has_shortcut(self, scope: Scope) -> bool:
        return (scope["method"], scope["path"]) in self.shortcuts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.body_limit(path)
        shortcut = self.shortcuts.get((scope["method"], path))
        try:
            if not is_open(path):
                await self.authenticate(scope, template=path if shortcut else None)
            declared = declared_length(scope)
            if declared is not None and declared > limit:
                raise PayloadTooLargeError(too_large_message(limit))
        except GreenroomError as exc:
            await self.refuse(scope, receive, send, exc.status_code, exc.message, exc.headers)
            return
        await self.call_limited(scope, receive, send, limit, shortcut or self.app)

    def body_limit(self, path: str) -> int:
        if path == EMBEDDINGS_PATH:
            return self.settings.max_request_bytes
        if MIGRATION_SAMPLES_PATH.fullmatch(path):
            return MIGRATION_SAMPLES_MAX_BYTES
        return self.settings.max_control_request_bytes

    async def authenticate(self, scope: Scope, *, template: str | None = None) -> None:
        """The request's principal into `scope["state"]` (before the scope check: the audit log
        records who was refused too); 401 without a usable token, 403 when it lacks the scope
        of the route matched (`template` when the caller knows it)."""
        app = scope["app"]
        token = bearer_token(Headers(scope=scope).get("authorization"))
        principal = await authenticate(app.state.authenticator, token)
        scope.setdefault("state", {})["principal"] = principal
        if template is None:
            template, _ = match_route(app, scope)
        needed = required_scope(scope["method"], template) if template is not None else None
        if needed is not None and needed != policy.ANY_TOKEN:
            require_scope(principal, needed)

    async def call_limited(
        self, scope: Scope, receive: Receive, send: Send, limit: int, app: ASGIApp
    ) -> None:
        """Run `app` with the body counted as it is read; a crossing that the app's handlers
        did not answer (no FastAPI route read it) is answered here."""
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestBodyTooLarge(limit)
            return message

        noted = StartNoted(send)
        try:
            await app(scope, receive_limited, noted)
        except RequestBodyTooLarge as exc:
            if noted.started:
                raise
            await self.refuse(scope, receive, send, 413, str(exc.detail), None)

    async def refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status_code: int,
        message: str,
        headers: Mapping[str, str] | None,
    ) -> None:
        response = self.render_error(scope["path"], status_code, message, headers=headers)
        await response(scope, receive, send)


class StartNoted:
    """A `send` that notes whether the response has started: an error after that can no longer
    be answered, only raised."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


def declared_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    return int(value) if value is not None and value.isdigit() else None


def match_route(app: Any, scope: Scope) -> tuple[str | None, dict[str, Any]]:
    """The template and path parameters of the route the app's router will pick for this
    request: the first full match, else the first path match with another method (the router
    answers 405 there); `(None, {})` when no route matches."""
    partial: tuple[str | None, dict[str, Any]] | None = None
    for route in iter_route_contexts(app.routes):
        match, child = route.matches(scope)
        found = route.path_format, dict(child.get("path_params", {}))
        if match is Match.FULL:
            return found
        if match is Match.PARTIAL and partial is None:
            partial = found
    return partial or (None, {})
