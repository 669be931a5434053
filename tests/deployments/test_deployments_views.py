"""The deployments API over HTTP (docs/api/deployments.md): paths, fields, defaults, limits, status
codes and error texts, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from factories import (
    ADMIN_PRINCIPAL,
    FAKE_CONTENT_HASH,
    RecordingSignals,
    add_embedding_model,
    api_app,
)
from fastapi.testclient import TestClient
from sqlalchemy import select

from greenroom.auth.scopes import Scope, effective_scopes
from greenroom.auth.service import Principal
from greenroom.config import Settings
from greenroom.deployments import views as deployments_views
from greenroom.deployments.models import Deployment
from greenroom.signals import Topic
from greenroom.store.db import Store
from greenroom.tasks.models import Task
from greenroom.workloads.models import LiveRevision, Revision

WS = "team-a"
BASE = f"/apis/models/v2/workspaces/{WS}"
CONFIG_FIELDS = {
    "id",
    "name",
    "workspace",
    "project",
    "description",
    "entity_version",
    "created_at",
    "updated_at",
    "engine",
    "model_spec",
    "executor_config",
}
SCALING_AND_CACHE_DEFAULTS = {  # issue 13: replicas that follow the load, the exact cache
    "cache_mib": 0,
    "min_replicas": None,
    "max_replicas": None,
    "target_ongoing_requests": 2.0,
    "upscale_delay_s": 30.0,
    "downscale_delay_s": 600.0,
}
EXECUTOR_FIELDS = {
    *SCALING_AND_CACHE_DEFAULTS,
    "gpu",
    "replicas",
    "quantization",
    "max_batch_size",
    "max_batch_tokens",
    "max_queue",
    "threads",
    "runtime",
    "additional_envs",
}
DEPLOYMENT_FIELDS = {
    "id",
    "revision_id",
    "name",
    "workspace",
    "project",
    "created_at",
    "updated_at",
    "entity_version",
    "config",
    "config_version",
    "status",
    "status_message",
    "status_history",
    "model_provider_id",
    "auth_context",
    "live_revision_id",
    "previous_revision_id",
    "endpoint",
}
AUTH_CONTEXT_FIELDS = {
    "principal_id",
    "principal_email",
    "principal_groups",
    "principal_on_behalf_of",
    "principal_on_behalf_of_groups",
    "principal_on_behalf_of_email",
}
DELETING = "Deployment is marked for deletion (DELETING). Only transition to DELETED is allowed."
INVALID_VERSION = "Invalid version '{}': must be a positive integer"


@pytest.fixture
def signals() -> RecordingSignals:
    return RecordingSignals()


@pytest.fixture
def client(store: Store, tmp_path: Path, signals: RecordingSignals) -> Iterator[TestClient]:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        add_embedding_model(db_session, "m2", content_hash="cd" * 32)
    settings = Settings(data_dir=tmp_path, runtime="local", extra_runtimes="ray")
    app = api_app(store, settings, deployments_views.api_router, signals=signals)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def call(client: TestClient, method: str, path: str, status: int, **kwargs: Any) -> Any:
    response = client.request(method, BASE + path, **kwargs)
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def create_config(client: TestClient, name: str = "c1", **fields: Any) -> dict[str, Any]:
    body = {"name": name, "model_spec": {"model_name": "m1"}, **fields}
    return call(client, "POST", "/deployment-configs", 201, json=body)


def create_deployment(
    client: TestClient, name: str = "d1", config: str = "c1", **fields: Any
) -> dict[str, Any]:
    return call(
        client, "POST", "/deployments", 201, json={"name": name, "config": config, **fields}
    )


def tasks(store: Store) -> list[Task]:
    with store.session_scope() as db_session:
        return list(db_session.scalars(select(Task).order_by(Task.created_at)))


def finish_tasks(store: Store) -> None:
    """As if a worker had run every task (their effects are set by hand in the tests)."""
    with store.session_scope() as db_session:
        for task in db_session.scalars(select(Task)):
            task.status = "done"


def assert_rfc3339_utc(value: str) -> None:
    assert value.endswith("Z")
    assert datetime.fromisoformat(value).utcoffset().total_seconds() == 0  # type: ignore[union-attr]


# ----- deployment configs ------------------------------------------------------------------------


def test_create_config_fills_the_contract_defaults(client: TestClient) -> None:
    config = create_config(client)
    assert set(config) == CONFIG_FIELDS
    assert set(config["executor_config"]) == EXECUTOR_FIELDS
    assert (config["name"], config["workspace"], config["entity_version"]) == ("c1", WS, 1)
    assert (config["project"], config["description"], config["engine"]) == (None, None, "onnx")
    assert config["model_spec"] == {
        "model_type": "embed",
        "model_name": "m1",
        "model_revision": FAKE_CONTENT_HASH,
    }
    assert config["executor_config"] == {
        "gpu": 0,
        "replicas": 1,
        "quantization": "none",
        "max_batch_size": 32,
        "max_batch_tokens": 8192,
        "max_queue": 1024,
        "threads": None,  # the cores of the machine that runs it
        "runtime": None,
        "additional_envs": {},
        **SCALING_AND_CACHE_DEFAULTS,
    }
    assert_rfc3339_utc(config["created_at"])
    assert_rfc3339_utc(config["updated_at"])


def test_create_config_with_every_field(client: TestClient) -> None:
    executor = {
        "gpu": 1,
        "replicas": 2,
        "quantization": "int8",
        "max_batch_size": 16,
        "max_batch_tokens": 4096,
        "max_queue": 10,
        "threads": 3,
        "runtime": "ray",
        "additional_envs": {"OMP_NUM_THREADS": "1"},
        "cache_mib": 64,
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 3.0,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": 60.0,
    }
    config = create_config(
        client,
        project="p/q.r",
        description="fast",
        engine="torch",
        executor_config=executor,
        model_spec={"model_type": "embed", "model_name": "m1", "model_revision": FAKE_CONTENT_HASH},
    )
    assert (config["project"], config["description"], config["engine"]) == (
        "p/q.r",
        "fast",
        "torch",
    )
    assert config["executor_config"] == executor


def test_create_config_conflict_and_unknown_model(client: TestClient) -> None:
    create_config(client)
    body = {"name": "c1", "model_spec": {"model_name": "m1"}}
    assert call(client, "POST", "/deployment-configs", 409, json=body) == {
        "detail": f"Deployment config '{WS}/c1' already exists"
    }
    body = {"name": "c2", "model_spec": {"model_name": "nope"}}
    assert call(client, "POST", "/deployment-configs", 400, json=body) == {
        "detail": "Embedding model 'nope' is not registered"
    }
    body = {"name": "c2", "model_spec": {"model_name": "m1", "model_revision": "00"}}
    detail = call(client, "POST", "/deployment-configs", 400, json=body)["detail"]
    assert detail == f"Embedding model 'm1' has content hash {FAKE_CONTENT_HASH}, not 00"


@pytest.mark.parametrize(
    "body",
    [
        {"model_spec": {"model_name": "m1"}},
        {"name": "c1"},
        {"name": "c1", "model_spec": {}},
        {"name": "a b", "model_spec": {"model_name": "m1"}},
        {"name": "x" * 256, "model_spec": {"model_name": "m1"}},
        {"name": "c1", "project": "a b", "model_spec": {"model_name": "m1"}},
        {"name": "c1", "project": "p" * 256, "model_spec": {"model_name": "m1"}},
        {"name": "c1", "description": "d" * 1001, "model_spec": {"model_name": "m1"}},
        {"name": "c1", "engine": "tensorrt", "model_spec": {"model_name": "m1"}},
        {"name": "c1", "model_spec": {"model_name": "m1", "model_type": "chat"}},
        {"name": "c1", "model_spec": {"model_name": "m1"}, "executor_config": {"replicas": 0}},
        {"name": "c1", "model_spec": {"model_name": "m1"}, "executor_config": {"gpu": -1}},
        {"name": "c1", "model_spec": {"model_name": "m1"}, "executor_config": {"nope": 1}},
        {"name": "c1", "model_spec": {"model_name": "m1"}, "executor_config": {"runtime": "k8s"}},
    ],
)
def test_create_config_with_a_bad_body(client: TestClient, body: dict[str, Any]) -> None:
    detail = call(client, "POST", "/deployment-configs", 422, json=body)["detail"]
    assert isinstance(detail, list) and detail


def test_names_in_paths_are_checked(client: TestClient) -> None:
    assert client.get("/apis/models/v2/workspaces/a b/deployments").status_code == 422
    assert client.get(f"/apis/models/v2/workspaces/{'w' * 256}/deployments").status_code == 422
    assert client.get(BASE + "/deployments/a%20b").status_code == 422
    assert client.get(BASE + "/deployment-configs/a%20b").status_code == 422


def test_get_config_and_its_versions(client: TestClient) -> None:
    first = create_config(client)
    second = call(client, "POST", "/deployment-configs/c1", 201, json={"engine": "torch"})
    assert call(client, "GET", "/deployment-configs/c1", 200) == second
    versions = call(client, "GET", "/deployment-configs/c1/versions", 200)
    assert [v["entity_version"] for v in versions] == [2, 1]
    assert call(client, "GET", "/deployment-configs/c1/versions/1", 200) == first
    assert call(client, "GET", "/deployment-configs/x", 404) == {
        "detail": f"Deployment config '{WS}/x' not found"
    }
    assert call(client, "GET", "/deployment-configs/x/versions", 200) == []
    assert call(client, "GET", "/deployment-configs/c1/versions/3", 404) == {
        "detail": f"Deployment config '{WS}/c1' version 3 not found"
    }
    for bad in ("abc", "0", "-1", "1.5"):
        assert call(client, "GET", f"/deployment-configs/c1/versions/{bad}", 400) == {
            "detail": INVALID_VERSION.format(bad)
        }


def test_update_config_makes_a_new_version_from_the_latest(client: TestClient) -> None:
    first = create_config(
        client, project="p", description="d", executor_config={"replicas": 2, "threads": 4}
    )
    body = {
        "description": "faster",
        "engine": "torch",
        "model_spec": {"model_name": "m2"},
        "executor_config": {"max_batch_size": 8, "threads": None},
    }
    second = call(client, "POST", "/deployment-configs/c1", 201, json=body)
    assert (second["id"], second["entity_version"]) == (first["id"], 2)
    assert (second["project"], second["description"], second["engine"]) == ("p", "faster", "torch")
    assert second["model_spec"]["model_name"] == "m2"
    assert second["model_spec"]["model_revision"] == "cd" * 32
    executor = second["executor_config"]
    assert (executor["replicas"], executor["max_batch_size"], executor["threads"]) == (2, 8, None)
    third = call(client, "POST", "/deployment-configs/c1", 201, json={})
    assert third["entity_version"] == 3
    assert third["executor_config"] == executor


def test_update_config_errors(client: TestClient) -> None:
    create_config(client)
    body = {"model_spec": {"model_name": "nope"}}
    assert call(client, "POST", "/deployment-configs/c1", 400, json=body) == {
        "detail": "Embedding model 'nope' is not registered"
    }
    for bad in ({"executor_config": {"replicas": 0}}, {"engine": "x"}, {"project": "a b"}):
        call(client, "POST", "/deployment-configs/c1", 422, json=bad)
    assert call(client, "POST", "/deployment-configs/x", 404, json={}) == {
        "detail": f"Deployment config '{WS}/x' not found"
    }


def test_list_configs_pages_the_latest_versions(client: TestClient) -> None:
    for name in ("a", "b", "c"):
        create_config(client, name, project="p" if name != "c" else "q")
    call(client, "POST", "/deployment-configs/b", 201, json={"description": "v2"})
    page = call(client, "GET", "/deployment-configs?page_size=2&sort=-name", 200)
    assert [c["name"] for c in page["data"]] == ["c", "b"]
    assert page["data"][1]["entity_version"] == 2
    assert page["pagination"] == {
        "page": 1,
        "page_size": 2,
        "current_page_size": 2,
        "total_pages": 2,
        "total_results": 3,
    }
    assert (page["sort"], page["filter"]) == ("-name", {})
    second = call(client, "GET", "/deployment-configs?page_size=2&page=2&sort=-name", 200)
    assert [c["name"] for c in second["data"]] == ["a"]
    filtered = call(client, "GET", "/deployment-configs?project=p&model_name=m1", 200)
    assert [c["name"] for c in filtered["data"]] == ["a", "b"]
    assert filtered["filter"] == {"project": "p", "model_name": "m1"}
    other = call(client, "GET", "/deployment-configs", 200)
    assert other["pagination"]["total_results"] == 3


@pytest.mark.parametrize(
    "query", ["page=0", "page_size=0", "page_size=1001", "sort=nope", "sort=--name", "name=a%20b"]
)
def test_list_configs_with_a_bad_query(client: TestClient, query: str) -> None:
    call(client, "GET", f"/deployment-configs?{query}", 422)


def test_delete_config_and_config_version(client: TestClient) -> None:
    create_config(client)
    call(client, "POST", "/deployment-configs/c1", 201, json={"engine": "torch"})
    assert call(client, "DELETE", "/deployment-configs/c1/versions/2", 204) is None
    assert call(client, "GET", "/deployment-configs/c1", 200)["entity_version"] == 1
    call(client, "DELETE", "/deployment-configs/c1/versions/2", 404)
    call(client, "DELETE", "/deployment-configs/c1/versions/x", 400)
    assert call(client, "DELETE", "/deployment-configs/c1", 204) is None
    assert call(client, "DELETE", "/deployment-configs/c1", 404) == {
        "detail": f"Deployment config '{WS}/c1' not found"
    }


def test_delete_config_is_refused_while_a_deployment_uses_it(
    client: TestClient, store: Store
) -> None:
    create_config(client)
    call(client, "POST", "/deployment-configs/c1", 201, json={"engine": "torch"})
    create_deployment(client, config_version=1)
    expected = f"Deployment config '{WS}/c1' is used by deployment '{WS}/d1' (CREATED); "
    assert call(client, "DELETE", "/deployment-configs/c1", 409) == {
        "detail": expected + "delete the deployment first"
    }
    assert call(client, "DELETE", "/deployment-configs/c1/versions/1", 409)["detail"].startswith(
        f"Deployment config '{WS}/c1' version 1 is used by deployment '{WS}/d1'"
    )
    call(client, "DELETE", "/deployment-configs/c1/versions/2", 204)  # not used
    finish_tasks(store)  # nothing of d1 runs: a controller may report it DELETED
    call(client, "POST", "/deployments/d1/status", 200, json={"status": "DELETED"})
    call(client, "DELETE", "/deployment-configs/c1", 204)


# ----- deployments: create, read -----------------------------------------------------------------


def test_create_deployment_answers_version_1_created_and_queues_a_deploy_task(
    client: TestClient, store: Store, signals: RecordingSignals
) -> None:
    create_config(client)
    deployment = create_deployment(client, project="search/prod")
    assert set(deployment) == DEPLOYMENT_FIELDS
    assert (deployment["name"], deployment["workspace"], deployment["project"]) == (
        "d1",
        WS,
        "search/prod",
    )
    assert (deployment["entity_version"], deployment["config"], deployment["config_version"]) == (
        1,
        "c1",
        1,
    )
    assert (deployment["status"], deployment["status_message"]) == ("CREATED", "Deployment created")
    [entry] = deployment["status_history"]
    assert (entry["status"], entry["status_message"]) == ("CREATED", "Deployment created")
    assert_rfc3339_utc(entry["timestamp"])
    assert_rfc3339_utc(deployment["created_at"])
    assert set(deployment["auth_context"]) == AUTH_CONTEXT_FIELDS
    assert deployment["auth_context"]["principal_id"] == ADMIN_PRINCIPAL.id
    assert deployment["model_provider_id"] is None
    assert deployment["live_revision_id"] is None and deployment["previous_revision_id"] is None
    assert deployment["endpoint"] == {"url": "/v1/embeddings", "model": f"{WS}/d1"}

    [task] = tasks(store)
    assert (task.kind, task.embedding_model_id, task.status) == ("deploy", f"{WS}/d1", "pending")
    assert task.task_metadata == {
        "deployment_target": "local",
        "initiated_by": "admin",
        "workspace": WS,
        "config": "c1",
        "config_version": 1,
        "deployment_revision_id": deployment["revision_id"],
        "allow_embedding_space_change": False,
    }
    assert signals.notified == [Topic.TASKS]


def test_a_deployment_in_workspace_default_is_served_under_its_name(
    client: TestClient, store: Store
) -> None:
    body = {"name": "m1", "config": "m1"}
    response = client.post("/apis/models/v2/workspaces/default/deployments", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["endpoint"] == {"url": "/v1/embeddings", "model": "m1"}
    assert [task.embedding_model_id for task in tasks(store)] == ["m1"]


def test_create_deployment_takes_the_config_runtime_as_target(
    client: TestClient, store: Store
) -> None:
    create_config(client, executor_config={"runtime": "ray"})
    create_deployment(client)
    assert tasks(store)[0].task_metadata["deployment_target"] == "ray"


def test_create_deployment_errors(client: TestClient, store: Store) -> None:
    create_config(client)
    create_deployment(client)
    assert call(client, "POST", "/deployments", 409, json={"name": "d1", "config": "c1"}) == {
        "detail": f"Deployment with workspace '{WS}' and name 'd1' already exists"
    }
    assert call(client, "POST", "/deployments", 400, json={"name": "d2", "config": "nope"}) == {
        "detail": f"Deployment config '{WS}/nope' does not exist"
    }
    body = {"name": "d2", "config": "c1", "config_version": 5}
    assert call(client, "POST", "/deployments", 400, json=body) == {
        "detail": f"Deployment config '{WS}/c1' version 5 does not exist"
    }
    assert len(tasks(store)) == 1  # nothing queued for the refused ones


@pytest.mark.parametrize(
    "body",
    [
        {"config": "c1"},
        {"name": "d1"},
        {"name": "a b", "config": "c1"},
        {"name": "n" * 256, "config": "c1"},
        {"name": "d1", "config": "c1", "config_version": 0},
        {"name": "d1", "config": "c1", "project": "a b"},
        {"name": "d1", "config": "c1", "project": "p" * 256},
    ],
)
def test_create_deployment_with_a_bad_body(client: TestClient, body: dict[str, Any]) -> None:
    create_config(client)
    call(client, "POST", "/deployments", 422, json=body)


def test_get_deployment_its_versions_and_one_version(client: TestClient) -> None:
    create_config(client)
    first = create_deployment(client)
    second = call(client, "POST", "/deployments/d1", 201, json={"config": "c1"})
    assert call(client, "GET", "/deployments/d1", 200) == second
    versions = call(client, "GET", "/deployments/d1/versions", 200)
    assert [v["entity_version"] for v in versions] == [2, 1]
    assert call(client, "GET", "/deployments/d1/versions/1", 200) == first
    assert call(client, "GET", "/deployments/nope", 404) == {
        "detail": f"Deployment '{WS}/nope' not found"
    }
    assert call(client, "GET", "/deployments/nope/versions", 200) == []
    assert call(client, "GET", "/deployments/d1/versions/9", 404) == {
        "detail": f"Deployment '{WS}/d1' version 9 not found"
    }
    for bad in ("x", "0", "-2"):
        assert call(client, "GET", f"/deployments/d1/versions/{bad}", 400) == {
            "detail": INVALID_VERSION.format(bad)
        }


def test_live_and_previous_revision_come_from_the_live_pointer(
    client: TestClient, store: Store
) -> None:
    create_config(client)
    deployment = create_deployment(client)
    with store.session_scope() as db_session:
        db_session.add(
            LiveRevision(
                served_name=f"{WS}/d1",
                revision_id=deployment["revision_id"],
                previous_revision_id="r0",
                deployment_id=deployment["id"],
            )
        )
    read = call(client, "GET", "/deployments/d1", 200)
    assert (read["live_revision_id"], read["previous_revision_id"]) == (
        deployment["revision_id"],
        "r0",
    )
    listed = call(client, "GET", "/deployments", 200)["data"][0]
    assert listed["live_revision_id"] == deployment["revision_id"]


# ----- deployments: new versions -----------------------------------------------------------------


def test_new_version_is_pending_and_queues_a_deploy_task(client: TestClient, store: Store) -> None:
    create_config(client)
    call(client, "POST", "/deployment-configs/c1", 201, json={"engine": "torch"})
    first = create_deployment(client, project="p", config_version=1)
    second = call(client, "POST", "/deployments/d1", 201, json={"config": "c1"})
    assert (second["id"], second["entity_version"], second["project"]) == (first["id"], 2, "p")
    assert second["revision_id"] != first["revision_id"]
    assert (second["config"], second["config_version"]) == ("c1", 2)
    assert (second["status"], second["status_message"]) == ("PENDING", "Deployment update pending")
    assert [e["status"] for e in second["status_history"]] == ["PENDING"]
    assert call(client, "GET", "/deployments/d1/versions/1", 200)["status"] == "CREATED"
    queued = tasks(store)[-1]
    assert queued.kind == "deploy"
    assert queued.task_metadata["deployment_revision_id"] == second["revision_id"]
    assert queued.task_metadata["config_version"] == 2


def test_new_version_errors(client: TestClient) -> None:
    create_config(client)
    create_deployment(client)
    assert call(client, "POST", "/deployments/d1", 400, json={"config": "nope"}) == {
        "detail": f"Deployment config '{WS}/nope' does not exist"
    }
    call(client, "POST", "/deployments/d1", 422, json={})
    call(client, "POST", "/deployments/d1", 422, json={"config": "c1", "config_version": -1})
    assert call(client, "POST", "/deployments/nope", 404, json={"config": "c1"}) == {
        "detail": f"Deployment '{WS}/nope' not found"
    }


# ----- status ------------------------------------------------------------------------------------


def test_status_update_follows_the_history_rules(client: TestClient) -> None:
    create_config(client)
    create_deployment(client)
    body = {"status": "READY", "status_message": "up", "model_provider_id": "prov-1"}
    ready = call(client, "POST", "/deployments/d1/status", 200, json=body)
    assert (ready["status"], ready["status_message"], ready["model_provider_id"]) == (
        "READY",
        "up",
        "prov-1",
    )
    assert [e["status"] for e in ready["status_history"]] == ["CREATED", "READY"]
    again = call(client, "POST", "/deployments/d1/status", 200, json=body)
    assert again == ready  # nothing changed: nothing written
    lost = call(client, "POST", "/deployments/d1/status?version=1", 200, json={"status": "LOST"})
    assert [(e["status"], e["status_message"]) for e in lost["status_history"]] == [
        ("CREATED", "Deployment created"),
        ("READY", "up"),
        ("LOST", None),
    ]


def test_status_update_errors(client: TestClient, store: Store) -> None:
    create_config(client)
    create_deployment(client)
    ready = {"status": "READY"}
    assert call(client, "POST", "/deployments/d1/status?version=x", 400, json=ready) == {
        "detail": INVALID_VERSION.format("x")
    }
    assert call(client, "POST", "/deployments/nope/status", 404, json=ready) == {
        "detail": f"Deployment '{WS}/nope' not found"
    }
    call(client, "POST", "/deployments/d1/status?version=7", 404, json=ready)
    detail = call(client, "POST", "/deployments/d1/status", 409, json={"status": "DELETING"})
    assert "still runs or is about to" in detail["detail"]  # its deploy task is pending
    finish_tasks(store)
    call(client, "POST", "/deployments/d1/status", 200, json={"status": "DELETING"})
    assert call(client, "POST", "/deployments/d1/status", 409, json=ready) == {"detail": DELETING}
    deleted = call(client, "POST", "/deployments/d1/status", 200, json={"status": "DELETED"})
    assert deleted["status"] == "DELETED"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": "RUNNING"},
        {"status": "READY", "status_message": "m" * 1001},
        {"status": "READY", "model_provider_id": "p" * 256},
    ],
)
def test_status_update_with_a_bad_body(client: TestClient, body: dict[str, Any]) -> None:
    create_config(client)
    create_deployment(client)
    call(client, "POST", "/deployments/d1/status", 422, json=body)


# ----- list --------------------------------------------------------------------------------------


def test_list_deployments_latest_of_each_with_pages_sort_and_filters(client: TestClient) -> None:
    create_config(client)
    create_config(client, "c2")
    for name in ("a", "b", "c"):
        create_deployment(client, name, project="p" if name != "c" else "q")
    call(client, "POST", "/deployments/b", 201, json={"config": "c2"})
    call(client, "POST", "/deployments/c/status", 200, json={"status": "READY"})

    everything = call(client, "GET", "/deployments", 200)
    assert [(d["name"], d["entity_version"]) for d in everything["data"]] == [
        ("a", 1),
        ("c", 1),
        ("b", 2),
    ]  # created_at of each latest version
    assert (everything["sort"], everything["filter"]) == ("created_at", {})
    assert everything["pagination"] == {
        "page": 1,
        "page_size": 100,
        "current_page_size": 3,
        "total_pages": 1,
        "total_results": 3,
    }
    page = call(client, "GET", "/deployments?sort=-name&page_size=2&page=2", 200)
    assert [d["name"] for d in page["data"]] == ["a"]
    assert page["pagination"] == {
        "page": 2,
        "page_size": 2,
        "current_page_size": 1,
        "total_pages": 2,
        "total_results": 3,
    }
    assert call(client, "GET", "/deployments?page=5", 200)["data"] == []

    def names(query: str) -> list[str]:
        return [d["name"] for d in call(client, "GET", f"/deployments?{query}", 200)["data"]]

    assert names("status=READY") == ["c"]
    assert names("status=CREATED") == ["a"]  # b's latest version is PENDING
    assert names("config=c2") == ["b"]
    assert names("config=c1&sort=name") == ["a", "c"]
    assert names("project=p&sort=-created_at") == ["b", "a"]
    assert names("name=b") == ["b"]
    filtered = call(client, "GET", "/deployments?status=READY&project=q", 200)
    assert filtered["filter"] == {"status": "READY", "project": "q"}


def test_list_deployments_all_versions(client: TestClient) -> None:
    create_config(client)
    create_deployment(client, "a")
    call(client, "POST", "/deployments/a", 201, json={"config": "c1"})
    create_deployment(client, "b")
    page = call(client, "GET", "/deployments?all_versions=true&sort=entity_version", 200)
    assert [(d["name"], d["entity_version"]) for d in page["data"]] == [
        ("a", 1),
        ("b", 1),
        ("a", 2),
    ]
    assert page["pagination"]["total_results"] == 3
    created = call(client, "GET", "/deployments?all_versions=true&status=CREATED", 200)
    assert [d["name"] for d in created["data"]] == ["a", "b"]


def test_list_deployments_is_per_workspace(client: TestClient) -> None:
    create_config(client)
    create_deployment(client)
    other = client.get("/apis/models/v2/workspaces/other/deployments")
    assert other.status_code == 200 and other.json()["data"] == []


@pytest.mark.parametrize(
    "query",
    ["page=0", "page_size=0", "page_size=1001", "sort=nope", "status=RUNNING", "all_versions=x"],
)
def test_list_deployments_with_a_bad_query(client: TestClient, query: str) -> None:
    call(client, "GET", f"/deployments?{query}", 422)


# ----- delete ------------------------------------------------------------------------------------


def mark_deleted_by_the_delete_task(store: Store, name: str = "d1") -> None:
    """What the delete task's last step does (the latest version DELETED), and the task done."""
    from greenroom.deployments.states import DeploymentStatus, set_status

    finish_tasks(store)
    with store.session_scope() as db_session:
        latest = db_session.scalars(
            select(Deployment)
            .where(Deployment.workspace == WS, Deployment.name == name)
            .order_by(Deployment.entity_version.desc())
        ).first()
        assert latest is not None
        set_status(latest, DeploymentStatus.DELETED, "Deployment deleted")


def test_delete_marks_deleting_queues_a_delete_task_then_204_frees_the_name(
    client: TestClient, store: Store, signals: RecordingSignals
) -> None:
    create_config(client)
    first = create_deployment(client)
    finish_tasks(store)
    deleting = call(client, "DELETE", "/deployments/d1", 202)
    assert set(deleting) == DEPLOYMENT_FIELDS
    assert (deleting["status"], deleting["status_message"]) == (
        "DELETING",
        "Deployment is being deleted",
    )
    task = tasks(store)[-1]
    assert (task.kind, task.embedding_model_id, task.status) == ("delete", f"{WS}/d1", "pending")
    assert task.task_metadata["deletion_type"] == "manual"
    assert signals.notified == [Topic.TASKS, Topic.TASKS]

    again = call(client, "DELETE", "/deployments/d1", 202)  # the delete task is under way
    assert again["status"] == "DELETING"
    assert [t.kind for t in tasks(store)] == ["deploy", "delete"]

    mark_deleted_by_the_delete_task(store)
    assert call(client, "GET", "/deployments/d1", 200)["status"] == "DELETED"
    assert call(client, "DELETE", "/deployments/d1", 204) is None
    call(client, "GET", "/deployments/d1", 404)
    assert call(client, "GET", "/deployments/d1/versions", 200) == []
    call(client, "DELETE", "/deployments/d1", 404)
    reborn = create_deployment(client)
    assert reborn["entity_version"] == 1 and reborn["id"] != first["id"]


def test_delete_of_every_version_marks_old_ones_deleted_at_once(
    client: TestClient, store: Store
) -> None:
    create_config(client)
    create_deployment(client)
    call(client, "POST", "/deployments/d1", 201, json={"config": "c1"})
    finish_tasks(store)
    call(client, "DELETE", "/deployments/d1", 202)
    statuses = [v["status"] for v in call(client, "GET", "/deployments/d1/versions", 200)]
    assert statuses == ["DELETING", "DELETED"]  # nothing of version 1 runs
    mark_deleted_by_the_delete_task(store)
    call(client, "DELETE", "/deployments/d1", 204)


def test_delete_settles_versions_left_deleting_once_nothing_runs(
    client: TestClient, store: Store
) -> None:
    create_config(client)
    create_deployment(client)
    call(client, "DELETE", "/deployments/d1", 202)
    finish_tasks(store)  # the delete task ended, the version still says DELETING
    call(client, "DELETE", "/deployments/d1", 204)


def test_delete_a_version_that_is_not_live(client: TestClient, store: Store) -> None:
    create_config(client)
    create_deployment(client)
    call(client, "POST", "/deployments/d1", 201, json={"config": "c1"})
    finish_tasks(store)
    deleted = call(client, "DELETE", "/deployments/d1/versions/1", 202)
    assert (deleted["entity_version"], deleted["status"]) == (1, "DELETED")
    assert [t.kind for t in tasks(store)] == ["deploy", "deploy"]  # nothing to stop: no task
    assert call(client, "DELETE", "/deployments/d1/versions/1", 204) is None
    versions = call(client, "GET", "/deployments/d1/versions", 200)
    assert [(v["entity_version"], v["status"]) for v in versions] == [(2, "PENDING")]
    call(client, "DELETE", "/deployments/d1/versions/1", 404)
    call(client, "DELETE", "/deployments/d1/versions/x", 400)


def test_delete_the_live_version_queues_the_delete_task(client: TestClient, store: Store) -> None:
    create_config(client)
    deployment = create_deployment(client)
    finish_tasks(store)
    with store.session_scope() as db_session:
        db_session.add(
            LiveRevision(
                served_name=f"{WS}/d1",
                revision_id=deployment["revision_id"],
                deployment_id=deployment["id"],
            )
        )
    assert call(client, "DELETE", "/deployments/d1/versions/1", 202)["status"] == "DELETING"
    task = tasks(store)[-1]
    assert task.kind == "delete"
    assert task.task_metadata["deployment_revision_id"] == deployment["revision_id"]


def test_a_version_with_replicas_is_deleting_until_they_stop(
    client: TestClient, store: Store
) -> None:
    create_config(client)
    deployment = create_deployment(client)
    call(client, "POST", "/deployments/d1", 201, json={"config": "c1"})
    finish_tasks(store)
    with store.session_scope() as db_session:
        db_session.add(
            Revision(
                id=deployment["revision_id"],
                deployment_id=deployment["id"],
                served_name=f"{WS}/d1",
                embedding_model_id="m1",
                source="/models/fake",
                model_path="/models/fake",
                content_hash=FAKE_CONTENT_HASH,
                engine="onnx",
                desired_replicas=1,
            )
        )
    assert call(client, "DELETE", "/deployments/d1/versions/1", 202)["status"] == "DELETING"
    assert tasks(store)[-1].kind == "delete"


def test_delete_errors(client: TestClient) -> None:
    assert call(client, "DELETE", "/deployments/nope", 404) == {
        "detail": f"Deployment '{WS}/nope' not found"
    }
    call(client, "DELETE", "/deployments/nope/versions/1", 404)


def test_no_new_version_while_deleting(client: TestClient, store: Store) -> None:
    create_config(client)
    create_deployment(client)
    call(client, "DELETE", "/deployments/d1", 202)
    detail = call(client, "POST", "/deployments/d1", 409, json={"config": "c1"})["detail"]
    assert detail.startswith(f"Deployment '{WS}/d1' is marked for deletion (DELETING)")
    mark_deleted_by_the_delete_task(store)
    assert (
        call(client, "POST", "/deployments/d1", 201, json={"config": "c1"})["entity_version"] == 2
    )


def test_the_request_principal_is_recorded(store: Store, tmp_path: Path) -> None:
    """The authenticated principal creates the version (`auth_context`) and its task."""
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
    alice = Principal(id="token-1", name="alice", scopes=effective_scopes([Scope.DEPLOY]))
    app = api_app(store, Settings(data_dir=tmp_path), deployments_views.api_router, principal=alice)
    with TestClient(app) as client:
        create_config(client)
        deployment = create_deployment(client)
    assert deployment["auth_context"]["principal_id"] == "token-1"
    assert tasks(store)[0].task_metadata["initiated_by"] == "alice"


# ----- issue 9: names, bounds, refused settings, masked values -----------------------------------


@pytest.mark.parametrize("name", [".", "..", "ｃ1", "cé", "c\u0430", "c/1", "c 1", "c\n"])
def test_names_are_ascii_and_not_dot_or_dot_dot(client: TestClient, name: str) -> None:
    body = {"name": name, "model_spec": {"model_name": "m1"}}
    call(client, "POST", "/deployment-configs", 422, json=body)
    create_config(client, "c-ok")
    call(client, "POST", "/deployments", 422, json={"name": name, "config": "c-ok"})
    project = name if "/" not in name else f"p/{name}/.."  # a project has parts
    body = {"name": "d", "config": "c-ok", "project": project}
    call(client, "POST", "/deployments", 422, json=body)


@pytest.mark.parametrize("name", ["...", ".hidden", "a.b", "A_b-9"])
def test_names_that_stay_allowed(client: TestClient, name: str) -> None:
    create_config(client, name)
    create_deployment(client, name, config=name, project=f"{name}/p.q")


@pytest.mark.parametrize(
    "query", [f"page={10**17}", "page=1000001", f"page_size={10**30}", "page=²"]
)
def test_paging_bounds(client: TestClient, query: str) -> None:
    call(client, "GET", f"/deployments?{query}", 422)
    call(client, "GET", f"/deployment-configs?{query}", 422)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("²", INVALID_VERSION.format("²")),
        ("99999999999999999999999", "Invalid version '99999999999999999999999': must be at most"),
        ("2147483648", "Invalid version '2147483648': must be at most 2147483647"),
    ],
)
def test_versions_beyond_the_store_are_400(client: TestClient, version: str, message: str) -> None:
    create_config(client)
    create_deployment(client)
    for method, path in [
        ("GET", f"/deployment-configs/c1/versions/{version}"),
        ("DELETE", f"/deployment-configs/c1/versions/{version}"),
        ("GET", f"/deployments/d1/versions/{version}"),
        ("DELETE", f"/deployments/d1/versions/{version}"),
    ]:
        assert call(client, method, path, 400)["detail"].startswith(message)
    ready = {"status": "READY"}
    detail = call(client, "POST", f"/deployments/d1/status?version={version}", 400, json=ready)
    assert detail["detail"].startswith(message)
    body = {"name": "d2", "config": "c1", "config_version": int("9" * 23)}
    call(client, "POST", "/deployments", 422, json=body)


def test_the_openapi_document_shows_the_bounds(client: TestClient) -> None:
    document = client.app.openapi()  # type: ignore[attr-defined]
    operation = document["paths"][
        BASE.replace(WS, "{workspace}") + "/deployments/{name}/versions/{version}"
    ]
    [version] = [p for p in operation["get"]["parameters"] if p["name"] == "version"]
    assert version["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**31 - 1,
        "title": "Version",
    }
    executor = document["components"]["schemas"]["ExecutorConfigUpdate"]["properties"]
    assert executor["max_queue"]["anyOf"][0]["maximum"] == 65_536
    assert executor["additional_envs"]["anyOf"][0]["maxProperties"] == 32


@pytest.mark.parametrize(
    ("executor_config", "named"),
    [
        ({"additional_envs": {"BROWSER": "/bin/sh -c 'id' #%s"}}, "BROWSER"),
        ({"additional_envs": {"PYTHONWARNINGS": "all:0:antigravity.x:0:0"}}, "PYTHONWARNINGS"),
        ({"additional_envs": {"LD_PRELOAD": "/tmp/evil.so"}}, "LD_PRELOAD"),
        ({"runtime": "ray"}, "ray"),
    ],
)
def test_refused_settings_are_422_naming_them(
    store: Store, tmp_path: Path, executor_config: dict[str, Any], named: str
) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
    app = api_app(store, Settings(data_dir=tmp_path), deployments_views.api_router)
    with TestClient(app) as local_only:
        body = {
            "name": "c1",
            "model_spec": {"model_name": "m1"},
            "executor_config": executor_config,
        }
        detail = call(local_only, "POST", "/deployment-configs", 422, json=body)["detail"]
        assert f"'{named}'" in detail
        create_config(local_only)
        body = {"executor_config": executor_config}
        detail = call(local_only, "POST", "/deployment-configs/c1", 422, json=body)["detail"]
        assert f"'{named}'" in detail
        assert (
            call(local_only, "GET", "/deployment-configs/c1/versions", 200)[0]["entity_version"]
            == 1
        )


def test_env_values_are_shown_only_to_deploy_tokens(store: Store, tmp_path: Path) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
    settings = Settings(data_dir=tmp_path)
    envs = {"OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": "0"}
    with TestClient(api_app(store, settings, deployments_views.api_router)) as admin:
        written = create_config(admin, executor_config={"additional_envs": envs})
    assert written["executor_config"]["additional_envs"] == envs
    reader = Principal(id="r", name="reader", scopes=effective_scopes([Scope.READ]))
    app = api_app(store, settings, deployments_views.api_router, principal=reader)
    masked = {"OMP_NUM_THREADS": "***", "CUDA_VISIBLE_DEVICES": "***"}
    with TestClient(app) as client:
        assert (
            call(client, "GET", "/deployment-configs/c1", 200)["executor_config"]["additional_envs"]
            == masked
        )
        [listed] = call(client, "GET", "/deployment-configs", 200)["data"]
        assert listed["executor_config"]["additional_envs"] == masked
        [version] = call(client, "GET", "/deployment-configs/c1/versions", 200)
        assert version["executor_config"]["additional_envs"] == masked
        one = call(client, "GET", "/deployment-configs/c1/versions/1", 200)
        assert one["executor_config"]["additional_envs"] == masked


def test_nul_bytes_in_free_text_are_422(client: TestClient) -> None:
    """PostgreSQL cannot store NUL: a description or status message with one was a 500."""
    body = {"name": "c1", "description": "a\u0000b", "model_spec": {"model_name": "m1"}}
    call(client, "POST", "/deployment-configs", 422, json=body)
    create_config(client)
    create_deployment(client)
    for status in (
        {"status": "READY", "status_message": "\u0000"},
        {"status": "READY", "model_provider_id": "\u0000"},
    ):
        call(client, "POST", "/deployments/d1/status", 422, json=status)


def test_names_stored_before_the_ascii_rule_still_read(client: TestClient, store: Store) -> None:
    from greenroom.deployments.models import DeploymentConfig
    from greenroom.schemas import ExecutorConfig

    with store.session_scope() as db_session:
        db_session.add(
            DeploymentConfig(
                workspace=WS,
                name="cé",
                entity_version=1,
                engine="onnx",
                model_name="mé",
                executor_config={
                    **ExecutorConfig().model_dump(mode="json", exclude={"threads"}),
                    "max_queue": 10**6,  # and a value over today's bound
                },
            )
        )
    [listed] = call(client, "GET", "/deployment-configs", 200)["data"]
    assert (listed["name"], listed["model_spec"]["model_name"]) == ("cé", "mé")


@pytest.mark.parametrize(
    "executor",
    [{"min_replicas": 3, "max_replicas": 1}, {"min_replicas": 2}, {"max_replicas": 2}],
)
def test_an_autoscaling_range_must_be_whole(client: TestClient, executor: dict) -> None:
    response = client.post(
        BASE + "/deployment-configs",
        json={"name": "c1", "model_spec": {"model_name": "m1"}, "executor_config": executor},
    )
    assert response.status_code in (400, 422), response.text
    assert "min_replicas" in response.text
