"""The Deployment Tasks API over HTTP (docs/api/tasks.md): paths, shapes, status codes, errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from factories import (
    ADMIN_PRINCIPAL,
    RecordingSignals,
    add_deployment,
    add_embedding_model,
    api_app,
)
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from greenroom.config import Settings
from greenroom.deployments import flows as deployments_flows
from greenroom.signals import Topic
from greenroom.store.db import Store
from greenroom.tasks import service as tasks_service
from greenroom.tasks import views as tasks_views
from greenroom.tasks.models import Task

BASE = "/internal/inference-deployment"
RESPONSE_FIELDS = {"id", "task_id", "embedding_model_id", "status", "created_at", "updated_at"}


@pytest.fixture
def signals() -> RecordingSignals:
    return RecordingSignals()


@pytest.fixture
def client(store: Store, tmp_path: Path, signals: RecordingSignals) -> Iterator[TestClient]:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "embed-deploy-123")
    settings = Settings(data_dir=tmp_path, runtime="ray")
    app = api_app(store, settings, tasks_views.api_router, signals=signals)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def post(client: TestClient, path: str, body: object, status: int = 200) -> dict:
    response = client.post(BASE + path, json=body)
    assert response.status_code == status, response.text
    return response.json()


def get(client: TestClient, path: str, status: int = 200) -> dict:
    response = client.get(BASE + path)
    assert response.status_code == status, response.text
    return response.json()


def assert_rfc3339_utc(value: str) -> None:
    assert value.endswith("Z")
    assert datetime.fromisoformat(value).utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_deploy_answers_a_pending_task(client: TestClient, signals: RecordingSignals) -> None:
    task = post(client, "/deploy", {"embedding_model_id": "embed-deploy-123"})
    assert set(task) == RESPONSE_FIELDS | {"metadata"}  # no `detail` while there is none
    assert task["id"] == task["task_id"] and task["id"].startswith("deploy-")
    assert (task["embedding_model_id"], task["status"]) == ("embed-deploy-123", "pending")
    assert_rfc3339_utc(task["created_at"])
    assert_rfc3339_utc(task["updated_at"])
    assert task["metadata"]["deployment_target"] == "ray"
    assert task["metadata"]["initiated_by"] == "admin"
    assert signals.notified == [Topic.TASKS]


def test_deploy_accepts_model_id_and_config_overrides(client: TestClient) -> None:
    body = {"model_id": "embed-deploy-123", "config": {"replicas": 2, "max_batch_size": 16}}
    task = post(client, "/deploy", body)
    assert task["embedding_model_id"] == "embed-deploy-123"
    # Issue 10: the overrides become config version 2 only when the task runs; until then the
    # metadata names no version (it used to show 2 at once) and keeps the overrides to itself.
    assert "config_version" not in task["metadata"]
    assert "config_overrides" not in task["metadata"]
    assert get(client, f"/deploy/{task['id']}") == task


def test_a_deploy_through_the_api_records_the_token(client: TestClient, store: Store) -> None:
    """The admin token's id and scopes are kept for the version the rollout creates (issue 10:
    one principal record), its name is `initiated_by`; the API shows only the name."""
    task = post(client, "/deploy", {"embedding_model_id": "embed-deploy-123"})
    assert task["metadata"]["initiated_by"] == "admin"
    assert "principal_id" not in task["metadata"]
    with store.session_scope() as db_session:
        row = db_session.get(Task, task["id"])
        assert row is not None
        assert row.task_metadata["principal_id"] == ADMIN_PRINCIPAL.id
        assert row.task_metadata["principal_groups"] == sorted(ADMIN_PRINCIPAL.scopes)


def test_deploy_with_a_client_id_is_idempotent(client: TestClient) -> None:
    first = post(client, "/deploy", {"embedding_model_id": "embed-deploy-123", "id": "deploy-42"})
    again = post(
        client,
        "/deploy",
        {"model_id": "embed-deploy-123", "id": "deploy-42", "allow_embedding_space_change": False},
    )
    assert first == again
    assert first["id"] == "deploy-42"
    conflict = post(
        client,
        "/deploy",
        {"embedding_model_id": "embed-deploy-123", "id": "deploy-42", "config": {"replicas": 2}},
        409,
    )
    assert conflict == {"detail": "Task `deploy-42` already exists with a different request"}


def test_deploy_of_an_unknown_model(client: TestClient) -> None:
    assert post(client, "/deploy", {"embedding_model_id": "nope"}, 404) == {
        "detail": "Embedding model `nope` is not found"
    }


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"embedding_model_id": ""},
        {"embedding_model_id": "embed-deploy-123", "config": {"gpu": 1}},
        {"embedding_model_id": "embed-deploy-123", "config": {"replicas": 0}},
        {"embedding_model_id": "embed-deploy-123", "config": {"engine": "tensorrt"}},
        {"embedding_model_id": "embed-deploy-123", "id": "a/b"},
        {"embedding_model_id": "embed-deploy-123", "allow_embedding_space_change": "maybe"},
    ],
)
def test_deploy_with_a_bad_body(client: TestClient, body: dict) -> None:
    detail = post(client, "/deploy", body, 422)["detail"]
    assert isinstance(detail, list) and detail


@pytest.mark.parametrize(
    "body",
    [
        {"embedding_model_id": "embed-deploy-123", "config": {"max_queue": 10**30}},
        {"embedding_model_id": "embed-deploy-123", "config": {"max_batch_tokens": 1_048_577}},
        {"embedding_model_id": "embed-deploy-123", "config": {"threads": 257}},
        {"embedding_model_id": ".."},
        {"embedding_model_id": "embed-deploy-12３"},
    ],
)
def test_deploy_bounds_and_names(client: TestClient, body: dict) -> None:
    post(client, "/deploy", body, 422)


def test_a_runtime_the_server_does_not_enable_is_422(store: Store, tmp_path: Path) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
    app = api_app(store, Settings(data_dir=tmp_path, runtime="local"), tasks_views.api_router)
    with TestClient(app) as local_only:
        body = {"embedding_model_id": "m1", "config": {"runtime": "ray"}}
        detail = post(local_only, "/deploy", body, 422)["detail"]
        assert "The runtime 'ray' is not enabled on this server" in detail
        # the server's own runtime is always enabled
        body = {"embedding_model_id": "m1", "config": {"runtime": "local"}}
        assert post(local_only, "/deploy", body)["metadata"]["deployment_target"] == "local"


def test_store_failures_are_500_with_the_contract_text(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: object, **__: object) -> Task:
        raise OperationalError("INSERT INTO tasks", {}, Exception("disk full"))

    monkeypatch.setattr(tasks_service, "_new_task", fail)
    body = {"embedding_model_id": "embed-deploy-123"}
    assert post(client, "/deploy", body, 500) == {
        "detail": "Failed to create and send model deployment task"
    }
    assert post(client, "/delete", body, 500) == {
        "detail": "Failed to create and send model deletion task"
    }


def test_get_deploy_task(client: TestClient) -> None:
    task = post(client, "/deploy", {"embedding_model_id": "embed-deploy-123"})
    assert get(client, f"/deploy/{task['id']}") == task
    assert get(client, "/deploy/deploy-x", 404) == {
        "detail": "Deployment task with ID `deploy-x` is not found"
    }
    deletion = post(client, "/delete", {"embedding_model_id": "embed-deploy-123"})
    assert get(client, f"/deploy/{deletion['id']}", 404) == {
        "detail": f"Deployment task with ID `{deletion['id']}` is not found"
    }


def test_deploy_status_is_the_latest_deploy_task(client: TestClient) -> None:
    body = {"embedding_model_id": "embed-deploy-123"}
    tasks = [post(client, "/deploy", body) for _ in range(3)]
    post(client, "/delete", body)
    assert get(client, "/deploy-status/embed-deploy-123")["id"] == tasks[-1]["id"]
    assert get(client, "/deploy-status/other", 404) == {
        "detail": "Deployment task with embedding model ID `other` is not found"
    }


def test_deploy_and_status_of_a_workspace_deployment(client: TestClient, store: Store) -> None:
    with store.session_scope() as db_session:
        deployments_flows.create_config(
            db_session, workspace="team", name="cfg", model_name="embed-deploy-123"
        )
        add_deployment(db_session, workspace="team", name="search", config="cfg")
    task = post(client, "/deploy", {"embedding_model_id": "team/search"})
    assert (task["metadata"]["workspace"], task["metadata"]["config"]) == ("team", "cfg")
    assert get(client, "/deploy-status/team/search")["id"] == task["id"]


def test_delete_answers_a_pending_deletion_task(
    client: TestClient, signals: RecordingSignals
) -> None:
    task = post(client, "/delete", {"model_id": "embed-deploy-123", "reason": "retired"})
    assert task["id"] == task["task_id"] and task["id"].startswith("delete-")
    assert task["status"] == "pending"
    assert task["metadata"] == {
        "deletion_type": "manual",
        "reason": "retired",
        "initiated_by": "admin",
    }
    assert signals.notified == [Topic.TASKS]


def test_delete_errors(client: TestClient) -> None:
    assert post(client, "/delete", {"embedding_model_id": "nope"}, 404) == {
        "detail": "Embedding model `nope` is not found"
    }
    too_long = {"embedding_model_id": "embed-deploy-123", "reason": "x" * 1001}
    assert isinstance(post(client, "/delete", too_long, 422)["detail"], list)
    post(client, "/delete", {"embedding_model_id": "embed-deploy-123", "id": "job-7"})
    assert post(client, "/deploy", {"embedding_model_id": "embed-deploy-123", "id": "job-7"}, 409)


def test_get_delete_task_and_status(client: TestClient) -> None:
    task = post(client, "/delete", {"embedding_model_id": "embed-deploy-123", "id": "del-1"})
    assert get(client, "/delete/del-1") == task
    assert get(client, "/delete-status/embed-deploy-123") == task
    deploy = post(client, "/deploy", {"embedding_model_id": "embed-deploy-123"})
    assert get(client, f"/delete/{deploy['id']}", 404) == {
        "detail": f"Deletion task with ID `{deploy['id']}` is not found"
    }
    assert get(client, "/delete-status/other", 404) == {
        "detail": "Deletion task with embedding model ID `other` is not found"
    }


@pytest.mark.parametrize("kind", ["deploy", "delete"])
def test_cancel(client: TestClient, signals: RecordingSignals, kind: str) -> None:
    task = post(client, f"/{kind}", {"embedding_model_id": "embed-deploy-123"})
    canceled = post(client, f"/{kind}/{task['id']}/cancel", None)
    assert (canceled["id"], canceled["status"]) == (task["id"], "canceled")
    assert get(client, f"/{kind}/{task['id']}")["status"] == "canceled"
    assert signals.notified == [Topic.TASKS, Topic.TASKS]
    assert post(client, f"/{kind}/{task['id']}/cancel", None, 409) == {
        "detail": f"Task `{task['id']}` is canceled and cannot be canceled"
    }
    label = "Deployment" if kind == "deploy" else "Deletion"
    assert post(client, f"/{kind}/nope/cancel", None, 404) == {
        "detail": f"{label} task with ID `nope` is not found"
    }


def test_a_failed_task_shows_its_detail(client: TestClient, store: Store) -> None:
    task = post(client, "/deploy", {"embedding_model_id": "embed-deploy-123"})
    with store.session_scope() as db_session:
        row = db_session.get(Task, task["id"])
        assert row is not None
        row.status, row.detail = "processing", None
        db_session.flush()
        row.status, row.detail = "failed", "Green did not become ready."
    failed = get(client, f"/deploy/{task['id']}")
    assert (failed["status"], failed["detail"]) == ("failed", "Green did not become ready.")
    assert post(client, f"/deploy/{task['id']}/cancel", None, 409) == {
        "detail": f"Task `{task['id']}` is failed and cannot be canceled"
    }


def test_views_work_without_signals(store: Store, tmp_path: Path) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
    app = api_app(store, Settings(data_dir=tmp_path), tasks_views.api_router)
    with TestClient(app) as test_client:
        task = post(test_client, "/deploy", {"embedding_model_id": "m1"})
    assert task["metadata"]["deployment_target"] == "local"


def test_nul_bytes_are_422_not_a_store_error(client: TestClient) -> None:
    """PostgreSQL cannot store NUL: each of these was a 500 there (issue 9 item 9)."""
    for body in (
        {"embedding_model_id": "embed-deploy-123", "id": "a\u0000b"},
        {"embedding_model_id": "embed-deploy-123\u0000"},
    ):
        post(client, "/deploy", body, 422)
    post(client, "/delete", {"embedding_model_id": "embed-deploy-123", "reason": "\u0000"}, 422)
    body = {"embedding_model_id": "embed-deploy-123", "revision_id": "a\u0000b"}
    post(client, "/rollback", body, 422)
    for path in (
        "/deploy/a%00b",
        "/delete/a%00b",
        "/deploy-status/a%00b",
        "/tasks?embedding_model_id=%00",
    ):
        get(client, path, 422)
    get(client, f"/deploy/{'x' * 256}", 422)
