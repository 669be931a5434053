"""The migration state API (docs/api/migrations.md): `/v1/migrations/{workspace}/{name}`.

Thin views: parse, call one flow, shape the response. Scopes come from the policy's default
rule: `read` for GET, `deploy` for the others. Errors are `{"detail": "..."}`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from greenroom.auth.deps import CurrentPrincipal
from greenroom.config import Settings
from greenroom.deps import DbSession
from greenroom.errors import ServiceUnavailableError
from greenroom.migrations import flows as migrations_flows
from greenroom.migrations.flows import Embedder
from greenroom.migrations.schemas import (
    AdapterState,
    MigrationState,
    SamplesRequest,
    SamplesResponse,
    ShadowFractionRequest,
    ShadowFractionResponse,
)
from greenroom.schemas import TEXT_PATTERN, served_name
from greenroom.store.db import Store

api_router = APIRouter(tags=["migrations"])

BASE = "/v1/migrations/{workspace}/{name}"
UNKNOWN: dict[int | str, dict[str, Any]] = {404: {}}
FIT_ERRORS: dict[int | str, dict[str, Any]] = {404: {}, 409: {}, 429: {}, 503: {}}

# Looked up as given (an unknown one is the contract's 404), bounded like what is stored.
Workspace = Annotated[str, Path(min_length=1, max_length=255, pattern=TEXT_PATTERN)]
Name = Annotated[str, Path(min_length=1, max_length=255, pattern=TEXT_PATTERN)]


@api_router.get(BASE, response_model=MigrationState, responses=UNKNOWN)
def get_migration(
    workspace: Workspace, name: Name, db_session: DbSession, request: Request
) -> MigrationState:
    """The stage, the live and staged revisions, the shadow report and the adapter."""
    return migrations_flows.migration_state(
        db_session, served_name=served_name(workspace, name), settings=_settings(request)
    )


@api_router.put(f"{BASE}/shadow", response_model=ShadowFractionResponse, responses=UNKNOWN)
def put_shadow_fraction(
    workspace: Workspace, name: Name, body: ShadowFractionRequest, db_session: DbSession
) -> ShadowFractionResponse:
    """The share of live requests that every API process shadows to the staged revision."""
    migration = migrations_flows.set_shadow_fraction(
        db_session, served_name=served_name(workspace, name), fraction=body.fraction
    )
    return ShadowFractionResponse(
        served_name=migration.served_name, fraction=migration.shadow_fraction
    )


@api_router.post(f"{BASE}/samples", response_model=SamplesResponse, responses=UNKNOWN)
def post_samples(
    workspace: Workspace, name: Name, body: SamplesRequest, db_session: DbSession
) -> SamplesResponse:
    """Store sample texts an adapter is fitted from (the oldest beyond 20,000 are dropped)."""
    name_served = served_name(workspace, name)
    kept = migrations_flows.add_samples(db_session, served_name=name_served, texts=body.texts)
    return SamplesResponse(served_name=name_served, samples=kept, added=len(body.texts))


@api_router.post(f"{BASE}/adapter", response_model=AdapterState, responses=FIT_ERRORS)
async def post_adapter(
    workspace: Workspace, name: Name, request: Request, principal: CurrentPrincipal
) -> AdapterState:
    """Fit an adapter now, in this process, and answer its held-out evaluation."""
    return await migrations_flows.fit_adapter(
        _store(request),
        served_name=served_name(workspace, name),
        embedder=_embedder(request),
        settings=_settings(request),
        principal=principal.id,
    )


def _settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if settings is not None else Settings()


def _store(request: Request) -> Store:
    return request.app.state.store


def _embedder(request: Request) -> Embedder:
    router = getattr(request.app.state, "router", None)
    if router is None:
        raise ServiceUnavailableError("This process serves no embeddings: it cannot fit")
    return router
