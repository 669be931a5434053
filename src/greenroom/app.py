"""create_app(): the URL map and the error shapes; its lifespan runs the parts greenroom.compose
builds for `greenroom serve`."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import (
    http_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from greenroom import __version__, console
from greenroom.audit import views as audit_views
from greenroom.audit.middleware import AuditMiddleware
from greenroom.auth import views as auth_views
from greenroom.auth.deps import authorize
from greenroom.compose import Parts, build_parts
from greenroom.config import Settings
from greenroom.deployments import views as deployments_views
from greenroom.edge import EMBEDDINGS_PATH, EdgeMiddleware, StartNoted
from greenroom.errors import INTERNAL_ERROR, GreenroomError
from greenroom.migrations import views as migrations_views
from greenroom.openapi import ErrorFamily, document_errors
from greenroom.ops import views as ops_views
from greenroom.registry import views as registry_views
from greenroom.runtime.base import RuntimeBackend
from greenroom.serving import views as serving_views
from greenroom.serving.views import is_openai_path, openai_error, openai_error_of
from greenroom.tasks import views as tasks_views
from greenroom.workloads import views as workloads_views

log = logging.getLogger("greenroom.app")


def create_app(settings: Settings | None = None, runtime: RuntimeBackend | None = None) -> FastAPI:
    """The API; its lifespan runs the parts of `greenroom serve` (greenroom.compose).
    `runtime` replaces the default target's backend (tests)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        parts = build_parts(settings, runtime)
        publish(app, parts)
        try:
            await parts.start()
        except BaseException:
            await parts.stop()
            raise
        try:
            yield
        finally:
            await parts.stop()

    app = GreenroomAPI(
        title="greenroom",
        version=__version__,
        description="Green deployments and an OpenAI-compatible endpoint for embedding models.",
        lifespan=lifespan,
        # Every route needs a token, with the scope `greenroom.auth.policy` gives its path (as
        # declared: each router carries its own prefix, `include_router` adds none). The edge
        # middleware checks it before the body is read; `authorize` reads what it found.
        dependencies=[Depends(authorize)],
    )
    for views in (
        serving_views,
        ops_views,
        registry_views,
        tasks_views,
        deployments_views,
        workloads_views,
        migrations_views,
        auth_views,
        audit_views,
    ):
        app.include_router(views.api_router)
    app.mount(console.PATH, console.ConsoleFiles(), name="console")
    install_error_handlers(app)
    document_errors(app, error_family)
    # authentication, then the body limit, before any body is read (greenroom.edge)
    app.add_middleware(EdgeMiddleware, settings=settings, render_error=render_error)
    app.add_middleware(AuditMiddleware)  # added last: outermost, it sees every other's answer
    app.front_door = EdgeMiddleware(
        app.router,  # never called: every request the front door takes has a shortcut
        settings=settings,
        render_error=render_error,
        shortcuts={("POST", EMBEDDINGS_PATH): serving_views.embeddings_endpoint},
    )
    return app


class GreenroomAPI(FastAPI):
    """FastAPI with a front door for the hot path: a request for one of `front_door`'s
    shortcut routes (`POST /v1/embeddings`) goes from the server straight to that edge, which
    authenticates it, bounds its body and calls the route's endpoint, past Starlette's
    middleware stack (its error and telemetry wrappers, and the audit log, which does not
    record the data plane); every other request takes the whole stack. An error the edge does
    not answer is answered here as the stack would, a 500 in the family's shape."""

    front_door: EdgeMiddleware | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        door = self.front_door
        if door is None or scope["type"] != "http" or not door.has_shortcut(scope):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        noted = StartNoted(send)
        try:
            await door(scope, receive, noted)
        except Exception:
            log.exception("unhandled error on %s", scope["path"])
            if noted.started:
                raise
            await render_error(scope["path"], 500, INTERNAL_ERROR)(scope, receive, send)


def publish(app: FastAPI, parts: Parts) -> None:
    """Put on `app.state` what the views and the edge read."""
    serving = parts.serving
    assert serving is not None
    state = app.state
    state.settings, state.store, state.signals, state.metrics = (
        parts.settings,
        parts.store,
        parts.signals,
        parts.metrics,
    )
    state.runtime, state.runtimes = serving.runtime, serving.runtimes
    state.router, state.startup, state.sync = serving.router, serving.startup, serving.sync
    state.authenticator = serving.authenticator
    state.supervisors = serving.supervisors


def install_error_handlers(app: FastAPI) -> None:
    """Each API family answers errors in its own shape; `render_error` picks it by path."""

    @app.exception_handler(GreenroomError)
    async def greenroom_error(request: Request, exc: GreenroomError) -> Response:
        if error_family(request.url.path) == "openai":
            return openai_error_of(exc)
        return render_error(request.url.path, exc.status_code, exc.message, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if error_family(request.url.path) == "detail":
            return await http_exception_handler(request, exc)
        return render_error(request.url.path, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if error_family(request.url.path) == "detail":
            return JSONResponse({"detail": shown_errors(exc.errors())}, status_code=422)
        message = "The request is invalid: " + str(exc.errors()[:1])
        return render_error(request.url.path, 400, message)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return render_error(request.url.path, 500, INTERNAL_ERROR)


def shown_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's 422 errors, each echoing its `input` only when that input is JSON-safe: a NaN
    or a lone surrogate in a body made the error itself a 500 while it was rendered."""
    return [
        error
        if "input" not in error or _json_safe(error["input"])
        else {key: value for key, value in error.items() if key != "input"}
        for error in jsonable_encoder(errors)
    ]


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return False
    return True


WORKLOADS_PATH_PREFIX = "/api/v1/workloads"
WORKLOADS_FORBIDDEN = "You do not have sufficient permissions."


def error_family(path: str) -> ErrorFamily:
    """OpenAI's envelope on `/v1/embeddings` and `/v1/models` (docs/api/embeddings.md), `{"code",
    "message"}` on the workloads API (docs/api/workloads.md), `{"detail"}` on every other API."""
    if is_openai_path(path):
        return "openai"
    if path.startswith(WORKLOADS_PATH_PREFIX):
        return "workloads"
    return "detail"


def render_error(
    path: str,
    status_code: int,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An error in the shape of the API family `path` belongs to (in OpenAI's envelope a 401 is
    always `invalid_api_key`)."""
    family = error_family(path)
    if family == "openai":
        return openai_error(status_code, message, headers=headers)
    if family == "workloads":
        return workloads_error(status_code, message, headers=headers)
    return JSONResponse({"detail": message}, status_code=status_code, headers=headers)


def workloads_error(
    status_code: int, message: str, *, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """`{"code", "message", "details"?}`; a 403 says the contract's sentence, ours as details."""
    body: dict[str, object] = {"code": status_code, "message": message}
    if status_code == 403:
        body = {"code": 403, "message": WORKLOADS_FORBIDDEN, "details": message}
    return JSONResponse(body, status_code=status_code, headers=headers)
