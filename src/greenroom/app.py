"""create_app(): the URL map, the error shapes, and the lifespan of router and runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from greenroom import __version__
from greenroom.config import Settings
from greenroom.errors import GreenroomError, ModelNotFoundError, OverloadedError
from greenroom.metrics import Metrics
from greenroom.ops import views as ops_views
from greenroom.runtime.base import RuntimeBackend
from greenroom.runtime.local import LocalRuntime
from greenroom.serving import views as serving_views
from greenroom.serving.router import Router
from greenroom.serving.startup import StartupState, serve_default_model
from greenroom.serving.views import is_openai_path, openai_error

log = logging.getLogger("greenroom.app")


def create_app(settings: Settings | None = None, runtime: RuntimeBackend | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = runtime or LocalRuntime(settings)
        metrics = Metrics()
        router = Router(backend, metrics, settings)
        metrics.watch(router, backend)
        app.state.settings = settings
        app.state.runtime, app.state.router, app.state.metrics = backend, router, metrics
        app.state.startup = StartupState()
        startup = None
        if settings.default_model_id:
            startup = asyncio.create_task(
                serve_default_model(settings, backend, router, app.state.startup)
            )
        try:
            yield
        finally:
            if startup is not None:
                startup.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await startup
            await router.close()
            await backend.close()

    app = FastAPI(
        title="greenroom",
        version=__version__,
        description="Green deployments and an OpenAI-compatible endpoint for embedding models.",
        lifespan=lifespan,
    )
    app.include_router(serving_views.api_router)
    app.include_router(ops_views.api_router)
    install_error_handlers(app)
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Each API family answers errors in its own shape; `/v1/embeddings` in OpenAI's."""

    @app.exception_handler(GreenroomError)
    async def greenroom_error(request: Request, exc: GreenroomError) -> Response:
        headers = {"Retry-After": "1"} if isinstance(exc, OverloadedError) else None
        if is_openai_path(request.url.path):
            code = "model_not_found" if isinstance(exc, ModelNotFoundError) else None
            param = "model" if code else None
            return openai_error(
                exc.status_code, exc.message, code=code, param=param, headers=headers
            )
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if is_openai_path(request.url.path):
            return openai_error(exc.status_code, str(exc.detail))
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if is_openai_path(request.url.path):
            return openai_error(400, "The request is invalid: " + str(exc.errors()[:1]))
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        message = "Internal error; the server log has the details."
        if is_openai_path(request.url.path):
            return openai_error(500, message)
        return JSONResponse({"detail": message}, status_code=500)
