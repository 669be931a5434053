"""create_app(): the URL map, the error shapes, and the lifespan of every loop in the process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from greenroom import __version__
from greenroom.audit import views as audit_views
from greenroom.audit.middleware import AuditMiddleware
from greenroom.auth import views as auth_views
from greenroom.auth.deps import authorize
from greenroom.auth.service import Authenticator
from greenroom.bootstrap import StartupState, bootstrap, ensure_admin_token
from greenroom.config import Settings
from greenroom.deployments import views as deployments_views
from greenroom.edge import EdgeMiddleware
from greenroom.errors import GreenroomError, ModelNotFoundError
from greenroom.metrics import Metrics
from greenroom.notify import PostgresBridge
from greenroom.openapi import ErrorFamily, document_errors
from greenroom.ops import views as ops_views
from greenroom.registry import views as registry_views
from greenroom.registry.store import collect_quietly
from greenroom.rollout.runner import TaskRunner
from greenroom.runtime.base import RuntimeBackend
from greenroom.runtime.local import LocalRuntime
from greenroom.runtime.reconcile import Reconciler
from greenroom.runtime.targets import RuntimeTargets
from greenroom.serving import views as serving_views
from greenroom.serving.replicas import StoreReplicas
from greenroom.serving.router import Router
from greenroom.serving.sync import RouterSync
from greenroom.serving.views import is_openai_path, openai_error
from greenroom.signals import Signals
from greenroom.store.db import Store, ensure_private_dir
from greenroom.store.migrations import upgrade
from greenroom.tasks import views as tasks_views
from greenroom.worker.loop import Worker, default_worker_id
from greenroom.workloads import views as workloads_views

log = logging.getLogger("greenroom.app")
WORKER_STOP_GRACE_S = 5.0


def create_app(settings: Settings | None = None, runtime: RuntimeBackend | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ensure_private_dir(settings.resolved_data_dir())  # 0700: token hashes, configs, logs
        store = Store(settings.resolved_database_url())
        await asyncio.to_thread(upgrade, store.url)
        await asyncio.to_thread(ensure_admin_token, settings, store)
        # model copies that no model or revision names any more (a crash between a delete and
        # its collection leaves some behind)
        await asyncio.to_thread(collect_quietly, store, settings.resolved_data_dir())
        signals, metrics = Signals(), Metrics()
        bridge = PostgresBridge(store.url, signals) if store.is_postgres else None
        if bridge is not None:
            await bridge.start()  # other processes' changes wake this one (LISTEN/NOTIFY)
        default = runtime or make_runtime(settings, settings.runtime)
        # a revision runs on the backend its target names; the other one starts on first use
        # (only where the operator enabled it: GREENROOM_EXTRA_RUNTIMES)
        other = "ray" if settings.runtime == "local" else "local"
        factories = (
            {other: lambda: make_runtime(settings, other)}
            if other in settings.enabled_runtimes()
            else {}
        )
        backend = RuntimeTargets(settings.runtime, default, factories)
        if settings.supervisor:  # Ray: connect (or start a private Ray), adopt running apps
            await backend.open()
        # the router follows the runtime where this process supervises replicas, else the
        # supervisor's reports in the store
        reported = None if settings.supervisor else StoreReplicas()
        router = Router(backend if reported is None else reported, metrics, settings)
        metrics.watch(router, backend)
        sync = RouterSync(store, router, signals, replicas=reported)
        state = app.state
        state.settings, state.store, state.signals, state.metrics = (
            settings,
            store,
            signals,
            metrics,
        )
        state.runtime, state.runtimes = default, backend
        state.router, state.startup = router, StartupState()
        state.authenticator = Authenticator(store)
        loops: list[asyncio.Task[None]] = []

        def start(coroutine: Coroutine[Any, Any, None], name: str) -> None:
            loops.append(asyncio.create_task(coroutine, name=name))

        if settings.supervisor:
            reconciler = Reconciler(store, backend, signals, lost_after_s=settings.lost_after_s)
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
            if bridge is not None:
                await bridge.stop()
            store.dispose()

    app = FastAPI(
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
        auth_views,
        audit_views,
    ):
        app.include_router(views.api_router)
    install_error_handlers(app)
    document_errors(app, error_family)
    # authentication, then the body limit, before any body is read (greenroom.edge)
    app.add_middleware(EdgeMiddleware, settings=settings, render_error=render_error)
    app.add_middleware(AuditMiddleware)  # added last: outermost, it sees every other's answer
    return app


def make_runtime(settings: Settings, target: str) -> RuntimeBackend:
    """The runtime backend of a target: `local` processes, or Ray Serve (the `ray` extra)."""
    if target == "ray":
        from greenroom.runtime.ray import RayRuntime

        return RayRuntime(settings)
    return LocalRuntime(settings)


def install_error_handlers(app: FastAPI) -> None:
    """Each API family answers errors in its own shape; `render_error` picks it by path."""

    @app.exception_handler(GreenroomError)
    async def greenroom_error(request: Request, exc: GreenroomError) -> Response:
        code = "model_not_found" if isinstance(exc, ModelNotFoundError) else None
        return render_error(
            request.url.path,
            exc.status_code,
            exc.message,
            headers=exc.headers,
            code=code,
            param="model" if code else None,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if error_family(request.url.path) == "detail":
            return await http_exception_handler(request, exc)
        return render_error(request.url.path, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        if error_family(request.url.path) == "detail":
            return await request_validation_exception_handler(request, exc)
        message = "The request is invalid: " + str(exc.errors()[:1])
        return render_error(request.url.path, 400, message)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        message = "Internal error; the server log has the details."
        return render_error(request.url.path, 500, message)


WORKLOADS_PATH_PREFIX = "/api/v1/workloads"
WORKLOADS_FORBIDDEN = "You do not have sufficient permissions."


def error_family(path: str) -> ErrorFamily:
    """OpenAI's envelope on `/v1/embeddings` and `/v1/models` (api/embeddings.md), `{"code",
    "message"}` on the workloads API (api/workloads.md), `{"detail"}` on every other API."""
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
    code: str | None = None,
    param: str | None = None,
) -> Response:
    """An error in the shape of the API family `path` belongs to; `code` and `param` are the
    OpenAI envelope's (a 401 there is always `invalid_api_key`)."""
    family = error_family(path)
    if family == "openai":
        return openai_error(status_code, message, code=code, param=param, headers=headers)
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
