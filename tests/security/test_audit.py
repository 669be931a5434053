"""Issue 9, Low: every control-plane write is audited (who, what, which object, result), refused
ones included, as one JSON log line and one row that admins read at `GET /v1/audit`.

The attack: a token holder makes a change, or probes with refused writes, and nothing says who
did what. Against a real server: each write below must come back from `/v1/audit` with its
principal, action, object and result, and as a `greenroom.audit` log line; never a body or a
token's value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from factories import HashEngine, add_embedding_model
from fastapi import FastAPI
from helpers import wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server

from greenroom.app import create_app
from greenroom.audit import service as audit_service
from greenroom.audit.schemas import AuditEntry, result_of
from greenroom.config import Settings
from greenroom.runtime.fake import FakeRuntime
from greenroom.store.db import Base, Store, utcnow
from greenroom.store.migrations import upgrade

TASKS = "/internal/inference-deployment"
Server = tuple[str, FastAPI]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("audit"),
        default_model_id="",
        worker_enabled=False,  # tasks stay pending: writes without a rollout
        admin_token=ADMIN_TOKEN,
    )
    app = create_app(settings, FakeRuntime(lambda _: HashEngine()))
    with running_server(app) as base_url:
        with app.state.store.session_scope() as db_session:
            add_embedding_model(db_session, "tiny")
        yield base_url, app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def create_token(base_url: str, name: str, *scopes: str) -> dict[str, Any]:
    body = {"name": name, "scopes": list(scopes)}
    response = httpx.post(f"{base_url}/v1/tokens", json=body, headers=ADMIN_HEADERS)
    assert response.status_code == 201, response.text
    return response.json()


def audit(base_url: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{base_url}/v1/audit", params=params, headers=ADMIN_HEADERS)
    assert response.status_code == 200, response.text
    return response.json()


def recorded(base_url: str, found: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The newest event that `found` accepts, waiting for it: a write is recorded once the app
    has answered it (after its own transaction committed), so just after the client saw it."""
    event: dict[str, Any] = {}

    def seen() -> bool:
        for candidate in audit(base_url, page_size=1000)["data"]:
            if found(candidate):
                event.update(candidate)
                return True
        return False

    wait_until_sync(seen, deadline_s=30, what="the audit event")
    return event


def test_a_deploy_tokens_writes_and_refusals_are_audited_with_who_what_and_result(
    server: Server,
) -> None:
    base_url, _ = server
    ci = create_token(base_url, "ci-deploy", "deploy")
    deploy = httpx.post(
        f"{base_url}{TASKS}/deploy",
        json={"embedding_model_id": "tiny"},
        headers=bearer(ci["token"]),
    )
    assert deploy.status_code == 200, deploy.text
    task_id = deploy.json()["id"]
    cancel = httpx.post(f"{base_url}{TASKS}/deploy/{task_id}/cancel", headers=bearer(ci["token"]))
    assert cancel.status_code == 200, cancel.text
    forbidden = httpx.delete(f"{base_url}/v1/tokens/{ci['id']}", headers=bearer(ci["token"]))
    assert forbidden.status_code == 403
    anonymous = httpx.post(f"{base_url}{TASKS}/deploy", json={"embedding_model_id": "tiny"})
    assert anonymous.status_code == 401

    by_ci = {"principal_id": ci["id"], "principal_name": "ci-deploy"}
    ok = recorded(
        base_url,
        lambda e: e["action"] == f"POST {TASKS}/deploy" and e["principal_id"] == ci["id"],
    )
    assert (ok["method"], ok["path"], ok["status_code"], ok["result"]) == (
        "POST",
        f"{TASKS}/deploy",
        200,
        "ok",
    )
    assert ok["principal_name"] == "ci-deploy" and ok["object"] == {}
    canceled = recorded(base_url, lambda e: e["action"].endswith("/cancel"))
    assert canceled["action"] == f"POST {TASKS}/deploy/{{task_id}}/cancel"
    assert canceled["object"] == {"task_id": task_id} and canceled["result"] == "ok"
    refused = recorded(base_url, lambda e: e["method"] == "DELETE" and e["status_code"] == 403)
    assert {key: refused[key] for key in by_ci} == by_ci
    assert refused["object"] == {"token_id": ci["id"]} and refused["result"] == "refused"
    nobody = recorded(base_url, lambda e: e["status_code"] == 401)
    assert nobody["principal_id"] is nobody["principal_name"] is None
    assert (nobody["action"], nobody["result"]) == (f"POST {TASKS}/deploy", "refused")
    assert nobody["client"] == "127.0.0.1"


def test_only_admins_read_the_audit_log(server: Server) -> None:
    base_url, _ = server
    for scopes in (["deploy"], ["read"], ["controller", "infer"]):
        token = create_token(base_url, "+".join(scopes), *scopes)["token"]
        response = httpx.get(f"{base_url}/v1/audit", headers=bearer(token))
        assert response.status_code == 403, scopes
        assert "admin" in response.json()["detail"]
    assert httpx.get(f"{base_url}/v1/audit").status_code == 401


def test_a_tokens_value_and_request_bodies_are_never_recorded(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    base_url, _ = server
    caplog.set_level(logging.INFO, logger="greenroom.audit")
    created = create_token(base_url, "secretive", "read")
    bad = httpx.post(
        f"{base_url}/v1/tokens",
        json={"name": "x", "scopes": ["root"], "note": "body-marker-7f3a"},
        headers=ADMIN_HEADERS,
    )
    assert bad.status_code == 422
    recorded(base_url, lambda e: e["status_code"] == 422 and e["action"] == "POST /v1/tokens")
    listed = json.dumps(audit(base_url, page_size=1000))
    logged = caplog.text
    for text in (listed, logged):
        assert created["token"] not in text and ADMIN_TOKEN not in text
        assert "body-marker-7f3a" not in text and "secretive" not in text


def test_a_body_over_the_limit_is_audited_as_refused(server: Server) -> None:
    base_url, _ = server
    big = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    headers = {**ADMIN_HEADERS, "Content-Type": "application/json"}
    response = httpx.post(f"{base_url}/v1/embedding-models", content=big, headers=headers)
    assert response.status_code == 413
    event = recorded(base_url, lambda e: e["status_code"] == 413)
    assert (event["action"], event["principal_name"], event["result"]) == (
        "POST /v1/embedding-models",
        "admin",
        "refused",
    )


def test_each_write_is_one_json_line_of_the_audit_logger(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    base_url, _ = server
    caplog.set_level(logging.INFO, logger="greenroom.audit")
    created = create_token(base_url, "logged", "read")
    revoked = httpx.delete(f"{base_url}/v1/tokens/{created['id']}", headers=ADMIN_HEADERS)
    assert revoked.status_code == 204
    event = recorded(base_url, lambda e: e["object"] == {"token_id": created["id"]})
    lines = [
        json.loads(r.getMessage())
        for r in caplog.records
        if r.name == "greenroom.audit" and created["id"] in r.getMessage()
    ]
    assert len(lines) == 1
    (line,) = lines
    assert line == {key: value for key, value in event.items() if key != "id"}
    assert line["principal_name"] == "admin" and line["action"] == "DELETE /v1/tokens/{token_id}"
    assert line["status_code"] == 204 and line["result"] == "ok"
    assert line["at"].endswith("Z")


def test_reads_and_embeddings_are_not_audited(server: Server) -> None:
    base_url, _ = server
    body = {"model": "nowhere", "input": "x"}
    assert httpx.post(f"{base_url}/v1/embeddings", json=body, headers=ADMIN_HEADERS).status_code
    assert httpx.get(f"{base_url}/v1/tokens", headers=ADMIN_HEADERS).status_code == 200
    assert httpx.head(f"{base_url}/v1/tokens", headers=ADMIN_HEADERS).status_code
    marker = httpx.post(f"{base_url}/v1/tokens/nowhere", headers=ADMIN_HEADERS)  # a 405
    assert marker.status_code == 405
    event = recorded(base_url, lambda e: e["path"] == "/v1/tokens/nowhere")
    assert (event["action"], event["result"]) == ("POST /v1/tokens/{token_id}", "refused")
    events = audit(base_url, page_size=1000)["data"]
    assert not [e for e in events if e["method"] in ("GET", "HEAD")]
    assert not [e for e in events if e["path"].startswith("/v1/embeddings")]


def test_the_audit_log_is_paged_newest_first_and_filtered(server: Server) -> None:
    base_url, _ = server
    start = utcnow() - timedelta(seconds=1)
    writer = create_token(base_url, "pager", "admin")
    for i in range(3):  # refused writes (404), of an authenticated principal
        httpx.delete(f"{base_url}/v1/tokens/nowhere-{i}", headers=bearer(writer["token"]))
    recorded(base_url, lambda e: e["principal_id"] == writer["id"])
    wait_until_sync(
        lambda: audit(base_url, principal_id=writer["id"])["pagination"]["total_results"] == 3,
        deadline_s=30,
        what="three events",
    )
    first = audit(base_url, principal_id=writer["id"], page_size=2)
    second = audit(base_url, principal_id=writer["id"], page_size=2, page=2)
    ids = [e["id"] for e in first["data"] + second["data"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 3
    assert first["pagination"] == {
        "page": 1,
        "page_size": 2,
        "current_page_size": 2,
        "total_pages": 2,
        "total_results": 3,
    }
    since = audit(base_url, since=start.isoformat(), page_size=1000)["data"]
    assert {e["id"] for e in since} >= set(ids)
    future = (utcnow() + timedelta(hours=1)).isoformat()
    assert audit(base_url, since=future)["data"] == []
    for params in ({"page_size": 1001}, {"page": 0}, {"page": 10**17}, {"since": "yesterday"}):
        response = httpx.get(f"{base_url}/v1/audit", params=params, headers=ADMIN_HEADERS)
        assert response.status_code == 422, params


def test_a_failure_to_record_is_logged_and_the_write_still_answers(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    base_url, _ = server

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the audit table is gone")

    monkeypatch.setattr(audit_service, "record", broken)
    created = create_token(base_url, "unrecorded", "read")  # 201, not a 500
    wait_until_sync(
        lambda: "the audit table is gone" in caplog.text, deadline_s=30, what="the error line"
    )
    monkeypatch.undo()
    events = audit(base_url, page_size=1000)["data"]
    assert all(e["principal_name"] != "unrecorded" for e in events)
    assert created["token"] not in caplog.text


def test_migration_0004_matches_the_models(tmp_path: Path) -> None:
    """`tokens.expires_at` and the `audit_events` table, as the models declare them."""
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url)
    store = Store(url)
    try:
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        store.dispose()
    assert not [d for d in differences if "audit_events" in str(d) or "'tokens'" in str(d)]


# ----- the service on both stores ----------------------------------------------------------------


def entry(principal_id: str | None = None, status_code: int = 200, **fields: Any) -> AuditEntry:
    values: dict[str, Any] = {
        "at": utcnow(),
        "principal_id": principal_id,
        "principal_name": principal_id and f"name-{principal_id}",
        "client": "127.0.0.1",
        "method": "POST",
        "path": "/v1/tokens",
        "action": "POST /v1/tokens",
        "object": {},
        "status_code": status_code,
        "result": result_of(status_code),
    }
    return AuditEntry(**{**values, **fields})


def test_events_are_paged_filtered_and_pruned_on_each_store(store: Store) -> None:
    hour_ago = utcnow() - timedelta(hours=1)
    with store.session_scope() as db_session:
        audit_service.record(db_session, entry=entry("a", at=hour_ago - timedelta(seconds=1)))
        for i in range(4):
            audit_service.record(db_session, entry=entry("b" if i % 2 else "a", status_code=403))
    with store.session_scope() as db_session:
        page = audit_service.get_page(db_session, page=1, page_size=2)
        assert page.total == 5 and page.total_pages == 3
        assert [e.id for e in page.items] == sorted((e.id for e in page.items), reverse=True)
        of_a = audit_service.get_page(db_session, principal_id="a")
        assert [e.principal_id for e in of_a.items] == ["a", "a", "a"]
        recent = audit_service.get_page(db_session, since=hour_ago.replace(tzinfo=None))
        assert recent.total == 4 and {e.result for e in recent.items} == {"refused"}
        newest = page.items[0].id
        assert audit_service.prune(db_session, keep=2) == 3
    with store.session_scope() as db_session:
        kept = audit_service.get_page(db_session).items
        assert [e.id for e in kept] == [newest, newest - 1]


def test_times_at_the_ends_of_the_calendar_are_clamped() -> None:
    east = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
    west = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
    assert audit_service.as_utc(east) == datetime.min.replace(tzinfo=UTC)
    assert audit_service.as_utc(west) == datetime.max.replace(tzinfo=UTC)
