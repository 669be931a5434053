"""create_app(): the URL map, the error shapes, and the lifespan of every loop in the process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from greenroom import __version__
from greenroom.bootstrap import StartupState, bootstrap
from greenroom.config import Settings
from greenroom.db import Store
from greenroom.errors import GreenroomError, ModelNotFoundError, OverloadedError
from greenroom.metrics import Metrics
from greenroom.migrations import upgrade
from greenroom.ops import views as ops_views
from greenroom.registry import views as registry_views
from greenroom.rollout.runner import TaskRunner
from greenroom.runtime.base import RuntimeBackend
from greenroom.runtime.local import LocalRuntime
from greenroom.runtime.reconcile import Reconciler
from greenroom.serving import views as serving_views
from greenroom.serving.router import Router
from greenroom.serving.sync import RouterSync
from greenroom.serving.views import is_openai_path, openai_error
from greenroom.signals import Signals
from greenroom.tasks import views as tasks_views
from greenroom.worker.loop import Worker, default_worker_id

log = logging.getLogger("greenroom.app")
WORKER_STOP_GRACE_S = 5.0


def create_app(settings: Settings | None = None, runtime: RuntimeBackend | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.resolved_data_dir().mkdir(parents=True, exist_ok=True)
        store = Store(settings.resolved_database_url())
        await asyncio.to_thread(upgrade, store.url)
        signals, metrics = Signals(), Metrics()
        backend = runtime or LocalRuntime(settings)
        router = Router(backend, metrics, settings)
        metrics.watch(router, backend)
        sync = RouterSync(store, router, signals)
        state = app.state
        state.settings, state.store, state.signals, state.metrics = (
            settings,
            store,
            signals,
            metrics,
        )
        state.runtime, state.router, state.startup = backend, router, StartupState()
        loops: list[asyncio.Task[None]] = []

        def start(coroutine: Coroutine[Any, Any, None], name: str) -> None:
            loops.append(asyncio.create_task(coroutine, name=name))

        reconciler = Reconciler(
            store, backend, signals, target=settings.runtime, lost_after_s=settings.lost_after_s
        )
        start(reconciler.run(), "reconcile")
        start(sync.run(), "router sync")
        worker = None
        if settings.worker_enabled:
            runner = TaskRunner(store, signals, settings, metrics, worker_id=default_worker_id())
            worker = Worker(
                store,
                runner,
                worker_id=runner.worker_id,
                signals=signals,
                metrics=metrics,
                concurrency=settings.worker_concurrency,
                lease_s=settings.lease_s,
            )
            start(worker.run(), "worker")
        if settings.default_model_id:
            start(bootstrap(settings, store, signals, state.startup), "bootstrap")
        else:
            state.startup.pending = None
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop(WORKER_STOP_GRACE_S)
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(sync.forget_report)
            await router.close()
            await backend.close()
            store.dispose()

    app = FastAPI(
        title="greenroom",
        version=__version__,
        description="Green deployments and an OpenAI-compatible endpoint for embedding models.",
        lifespan=lifespan,
    )
    for views in (serving_views, ops_views, registry_views, tasks_views):
        app.include_router(views.api_router)
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
