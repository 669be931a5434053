"""Every route of the app needs a token with its scope (docs/api/auth.md), in its family's error
shape.

The routes are enumerated from the app itself, so a route added later is covered without a
change here: it answers 401 without a token and 403 with the strongest token that lacks its
scope, and is reached with a token of exactly that scope. The expected scope is the contract's,
written out here independently of `greenroom.auth.policy`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from factories import HashEngine, add_embedding_model, api_app
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from servers import ADMIN_HEADERS, ADMIN_TOKEN

from greenroom.app import create_app
from greenroom.auth import service as auth_service
from greenroom.auth.schemas import TokenCreate
from greenroom.auth.scopes import Scope, effective_scopes
from greenroom.config import Settings
from greenroom.runtime.fake import FakeRuntime
from greenroom.store.db import Store
from greenroom.tasks import views as tasks_views

OPEN_ROUTES = {"/healthz", "/readyz"}
DOCS = ["/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"]
WORKLOADS = "/api/v1/workloads/inferences"


ANY = "any valid token"  # `GET /v1/tokens/self`: a token is needed, whatever its scopes


def contract_scope(method: str, path: str) -> Scope | str | None:
    """docs/api/auth.md: which scope a route needs."""
    if path in OPEN_ROUTES:
        return None
    if (method, path) == ("GET", "/v1/tokens/self"):
        return ANY
    if path.startswith(("/v1/embeddings", "/v1/models")):
        return Scope.INFER
    if path.startswith(("/v1/tokens", "/v1/audit")):
        return Scope.ADMIN
    if method == "POST" and re.search(r"/deployments/\{name\}/status$", path):
        return Scope.CONTROLLER
    return Scope.READ if method == "GET" else Scope.DEPLOY


def app_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path template) of every API route, through included routers."""
    return sorted(
        (method, route.path_format)
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute)
        for method in route.methods or ()
    )


ROUTES = app_routes(create_app(Settings(default_model_id="")))
GUARDED = [(m, p) for m, p in ROUTES if contract_scope(m, p) is not None]
SCOPED = [(m, p) for m, p in GUARDED if contract_scope(m, p) != ANY]
# The strongest token without the scope a route needs: every other scope but admin.
LACKING = {
    needed: [s for s in Scope if s is not Scope.ADMIN and needed not in effective_scopes([s])]
    for needed in Scope
}


def url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "dummy", path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, TestClient]]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("routes"),
        default_model_id="",
        worker_enabled=False,
        admin_token=ADMIN_TOKEN,
    )
    app = create_app(settings, FakeRuntime(lambda spec: HashEngine()))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client


@pytest.fixture(scope="module")
def tokens(server: tuple[FastAPI, TestClient]) -> dict[str, str]:
    """Secrets by the comma-joined scopes they hold: one per exact scope, one per LACKING set."""
    _, client = server
    wanted = {(s,) for s in Scope} | {tuple(scopes) for scopes in LACKING.values()}
    secrets = {}
    for scopes in wanted:
        body = {"name": "+".join(scopes), "scopes": list(scopes)}
        response = client.post("/v1/tokens", json=body, headers=ADMIN_HEADERS)
        assert response.status_code == 201, response.text
        secrets[",".join(scopes)] = response.json()["token"]
    return secrets


def call(client: TestClient, method: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.request(method, url(path), headers=headers)


def assert_family_shape(path: str, response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    if path.startswith(("/v1/embeddings", "/v1/models")):
        error_type = "authentication_error" if status == 401 else "permission_error"
        code = "invalid_api_key" if status == 401 else None
        assert set(body) == {"error"}
        assert body["error"]["message"]
        assert (body["error"]["type"], body["error"]["code"], body["error"]["param"]) == (
            error_type,
            code,
            None,
        )
    elif path.startswith(WORKLOADS):
        assert body["code"] == status and body["message"]
        if status == 403:
            assert body["message"] == "You do not have sufficient permissions."
    else:
        assert set(body) == {"detail"} and isinstance(body["detail"], str)
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_routes_are_enumerated() -> None:
    assert ("POST", "/v1/embeddings") in GUARDED
    assert ("POST", "/internal/inference-deployment/deploy") in GUARDED
    assert ("DELETE", "/v1/tokens/{token_id}") in GUARDED
    assert {p for m, p in ROUTES if contract_scope(m, p) is None} == OPEN_ROUTES


def test_routes_carry_their_whole_path() -> None:
    """The policy reads a request's route (`scope["route"]`, the route as declared): routers
    carry their prefix themselves, `include_router` adds none."""
    app = create_app(Settings(default_model_id=""))
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute):
            assert route.original_route.path_format == route.path_format


@pytest.mark.parametrize(("method", "path"), GUARDED, ids=[f"{m} {p}" for m, p in GUARDED])
def test_every_route_needs_a_token(
    server: tuple[FastAPI, TestClient], tokens: dict[str, str], method: str, path: str
) -> None:
    _, client = server
    assert_family_shape(path, call(client, method, path, None), 401)
    assert_family_shape(path, call(client, method, path, "not-a-token"), 401)


@pytest.mark.parametrize(("method", "path"), GUARDED, ids=[f"{m} {p}" for m, p in GUARDED])
def test_every_route_refuses_before_it_reads_the_body(
    server: tuple[FastAPI, TestClient], tokens: dict[str, str], method: str, path: str
) -> None:
    """A body that would not parse: the refusal comes first (no 422 or 400 for the body)."""
    _, client = server
    needed = contract_scope(method, path)
    assert needed is not None
    refusals: list[tuple[dict[str, str], int]] = [({}, 401)]
    if needed != ANY:
        lacking = {"Authorization": f"Bearer {tokens[','.join(LACKING[Scope(needed)])]}"}
        refusals.append((lacking, 403))
    for headers, status in refusals:
        headers = {**headers, "content-type": "application/json"}
        response = client.request(method, url(path), content=b"{not json", headers=headers)
        assert_family_shape(path, response, status)


@pytest.mark.parametrize(("method", "path"), SCOPED, ids=[f"{m} {p}" for m, p in SCOPED])
def test_every_route_refuses_a_token_without_its_scope(
    server: tuple[FastAPI, TestClient], tokens: dict[str, str], method: str, path: str
) -> None:
    _, client = server
    needed = contract_scope(method, path)
    assert needed is not None
    lacking = tokens[",".join(LACKING[Scope(needed)])]
    assert_family_shape(path, call(client, method, path, lacking), 403)


@pytest.mark.parametrize(("method", "path"), GUARDED, ids=[f"{m} {p}" for m, p in GUARDED])
def test_every_route_admits_a_token_with_exactly_its_scope(
    server: tuple[FastAPI, TestClient], tokens: dict[str, str], method: str, path: str
) -> None:
    _, client = server
    needed = contract_scope(method, path)
    assert needed is not None
    for scope in Scope if needed == ANY else [needed]:
        response = call(client, method, path, tokens[scope])
        assert response.status_code not in (401, 403), response.text
    assert call(client, method, path, ADMIN_TOKEN).status_code not in (401, 403)


@pytest.mark.parametrize("path", sorted(OPEN_ROUTES) + DOCS)
def test_the_open_routes_need_no_token(server: tuple[FastAPI, TestClient], path: str) -> None:
    _, client = server
    assert client.get(path).status_code in (200, 503)  # /readyz: 503 while not ready


def test_a_route_mounted_later_is_authenticated_too(
    server: tuple[FastAPI, TestClient], tokens: dict[str, str]
) -> None:
    app, client = server
    path = f"{WORKLOADS}/{{workloadId}}/probe"

    @app.get(path)
    async def probe(workloadId: str) -> dict[str, str]:
        return {"workloadId": workloadId}

    assert_family_shape(path, call(client, "GET", path, None), 401)
    forbidden = call(client, "GET", path, tokens[Scope.INFER])
    assert_family_shape(path, forbidden, 403)
    assert forbidden.json()["details"] == "The token 'infer' lacks the `read` scope."
    assert call(client, "GET", path, tokens[Scope.READ]).json() == {"workloadId": "dummy"}


def test_the_openapi_schema_documents_bearer_auth(server: tuple[FastAPI, TestClient]) -> None:
    _, client = server
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_tasks_record_the_principal_that_asked(store: Store, tmp_path: Path) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        _, secret = auth_service.create(
            db_session, token_in=TokenCreate(name="ci-pipeline", scopes=[Scope.DEPLOY])
        )
    app = api_app(store, Settings(data_dir=tmp_path), tasks_views.api_router, principal=None)
    base = "/internal/inference-deployment"
    with TestClient(app, headers={"Authorization": f"Bearer {secret}"}) as client:
        body = {"embedding_model_id": "m1"}
        deploy = client.post(f"{base}/deploy", json=body).json()
        delete = client.post(f"{base}/delete", json=body).json()
    assert deploy["metadata"]["initiated_by"] == "ci-pipeline"
    assert delete["metadata"]["initiated_by"] == "ci-pipeline"
