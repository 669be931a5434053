"""The tokens API over HTTP (docs/api/auth.md): admin only, the secret shown once, revocation at
once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import api_app
from fastapi.testclient import TestClient

from greenroom.auth import service as auth_service
from greenroom.auth import views as auth_views
from greenroom.config import Settings
from greenroom.store.db import Store

BASE = "/v1/tokens"
ADMIN_SECRET = "views-admin-secret"


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    """The tokens API behind real authentication, with an admin token in the store."""
    with store.session_scope() as db_session:
        auth_service.create_admin(db_session, secret=ADMIN_SECRET)
    app = api_app(store, Settings(data_dir=tmp_path), auth_views.api_router, principal=None)
    with TestClient(app, headers=bearer(ADMIN_SECRET)) as test_client:
        yield test_client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def create(client: TestClient, name: str, *scopes: str) -> dict:
    response = client.post(BASE, json={"name": name, "scopes": list(scopes)})
    assert response.status_code == 201, response.text
    return response.json()


def test_create_shows_the_token_once(client: TestClient) -> None:
    created = create(client, "ci", "deploy", "infer")
    assert set(created) == {"id", "name", "scopes", "expires_at", "token"}
    assert created["expires_at"] is None
    assert (created["name"], created["scopes"]) == ("ci", ["deploy", "infer"])
    assert len(created["token"]) == 43
    listed = client.get(BASE).json()
    assert created["token"] not in str(listed)
    (row,) = [t for t in listed if t["id"] == created["id"]]
    assert set(row) == {
        "id",
        "name",
        "scopes",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    }
    assert row["created_at"].endswith("Z") and row["revoked_at"] is None


def test_a_new_token_works_at_once_and_records_its_use(client: TestClient) -> None:
    created = create(client, "ops", "admin")
    assert client.get(BASE, headers=bearer(created["token"])).status_code == 200
    (row,) = [t for t in client.get(BASE).json() if t["id"] == created["id"]]
    assert row["last_used_at"] is not None


def test_list_is_oldest_first(client: TestClient) -> None:
    names = [create(client, name, "read")["name"] for name in ("a", "b", "c")]
    assert [t["name"] for t in client.get(BASE).json()] == ["admin", *names]


def test_revoke_takes_effect_at_once(client: TestClient) -> None:
    created = create(client, "ops", "admin")
    assert client.get(BASE, headers=bearer(created["token"])).status_code == 200  # cached
    assert client.delete(f"{BASE}/{created['id']}").status_code == 204
    response = client.get(BASE, headers=bearer(created["token"]))
    assert response.status_code == 401
    assert response.json() == {"detail": "The token is unknown or revoked."}
    (row,) = [t for t in client.get(BASE).json() if t["id"] == created["id"]]
    assert row["revoked_at"] is not None
    assert client.delete(f"{BASE}/{created['id']}").status_code == 204  # idempotent


def test_revoke_an_unknown_token(client: TestClient) -> None:
    response = client.delete(f"{BASE}/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "Token 'nope' not found"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x"},
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["root"]},
        {"name": "", "scopes": ["read"]},
        {"name": "x", "scopes": ["read"], "token": "chosen"},
    ],
)
def test_create_with_a_bad_body(client: TestClient, body: dict) -> None:
    response = client.post(BASE, json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


@pytest.mark.parametrize("scopes", [["deploy"], ["controller", "read", "infer"]])
def test_only_admin_tokens_may_use_the_tokens_api(client: TestClient, scopes: list[str]) -> None:
    token = create(client, "not-admin", *scopes)["token"]
    for method, path in (("GET", BASE), ("POST", BASE), ("DELETE", f"{BASE}/x")):
        response = client.request(method, path, headers=bearer(token), json={})
        assert response.status_code == 403
        assert response.json() == {"detail": "The token 'not-admin' lacks the `admin` scope."}


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic YWRtaW46YWRtaW4=", "Bearer"])
def test_no_valid_token_is_a_401(client: TestClient, authorization: str | None) -> None:
    client.headers.pop("Authorization")
    headers = {"Authorization": authorization} if authorization else {}
    response = client.get(BASE, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert set(response.json()) == {"detail"}


@pytest.mark.parametrize("scopes", [["read"], ["infer"], ["controller", "deploy"], ["admin"]])
def test_any_valid_token_reads_its_own_id_name_and_scopes(
    client: TestClient, scopes: list[str]
) -> None:
    created = create(client, "console", *scopes)
    response = client.get(f"{BASE}/self", headers=bearer(created["token"]))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": created["id"],
        "name": "console",
        "scopes": scopes,  # as granted, not the scopes they imply
        "expires_at": None,
    }


def test_own_token_needs_a_valid_token(client: TestClient) -> None:
    created = create(client, "gone", "read")
    assert client.delete(f"{BASE}/{created['id']}").status_code == 204
    for headers in ({"Authorization": ""}, bearer("nope"), bearer(created["token"])):
        response = client.get(f"{BASE}/self", headers=headers)
        assert response.status_code == 401
        assert set(response.json()) == {"detail"}
