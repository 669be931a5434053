"""`/healthz`, `/readyz` and `/metrics`."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from greenroom.bootstrap import StartupState

api_router = APIRouter(tags=["operations"])
log = logging.getLogger("greenroom.ops")
# `/readyz` is open: it says in which stage start-up is, never why (exception text, paths,
# addresses); the log has the details.
STARTUP_FAILED = "The default model could not be deployed; the server log says why."
STORE_UNREACHABLE = "The store is unreachable; the server log says why."
UNREADABLE = "cannot be served: its model files cannot be read; the server log says why."


@api_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@api_router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 once start-up is done and every live served name has a ready replica."""
    state = request.app.state
    if reason := await asyncio.to_thread(state.startup.not_ready_reason, state.store):
        if getattr(state, "not_ready_logged", None) != reason:  # a line per change, not probe
            state.not_ready_logged = reason
            log.warning("not ready: %s", reason)
        public = public_reason(state.startup)
        return JSONResponse({"status": "not ready", "reason": public}, status_code=503)
    if not state.sync.followed_once:  # until then the router knows of no live name
        return JSONResponse(
            {"status": "not ready", "reason": "Reading what is live from the store."},
            status_code=503,
        )
    if unservable := sorted(state.sync.unservable):
        return JSONResponse(
            {"status": "not ready", "reason": f"'{unservable[0]}' {UNREADABLE}"},
            status_code=503,
        )
    router = state.router
    for name, route in router.live_routes().items():
        if not router.ready_replicas(route.revision_id):
            return JSONResponse(
                {"status": "not ready", "reason": f"'{name}' has no ready replica."},
                status_code=503,
            )
    return JSONResponse({"status": "ready", "models": sorted(router.live_routes())})


def public_reason(startup: StartupState) -> str:
    """What `/readyz` may say of an unfinished start-up: its stage, in our own words."""
    if startup.error:
        return STARTUP_FAILED
    if startup.pending:  # our own sentences: "Starting.", "Registering the default model …"
        return startup.pending
    if startup.task_id:
        return (
            f"The default model '{startup.model}' is being deployed, or the store is "
            "unreachable; the server log says which."
        )
    return STORE_UNREACHABLE


@api_router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
