"""`/healthz`, `/readyz` and `/metrics`."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

api_router = APIRouter(tags=["operations"])


@api_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process runs."""
    return {"status": "ok"}


@api_router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 once start-up is done and every live served name has a ready replica."""
    state = request.app.state
    if reason := await asyncio.to_thread(state.startup.not_ready_reason, state.store):
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)
    router = state.router
    for name, route in router.live_routes().items():
        if not router.ready_replicas(route.revision_id):
            return JSONResponse(
                {"status": "not ready", "reason": f"'{name}' has no ready replica."},
                status_code=503,
            )
    return JSONResponse({"status": "ready", "models": sorted(router.live_routes())})


@api_router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
