"""The deployments API end to end over HTTP, with real replica processes (issue 4's proof).

A config and a deployment in workspace `team-a` through the deployments API: the version goes
READY and `/v1/embeddings` serves it as `team-a/emb`; a new version goes READY and takes over; a
DELETE answers 202, the deployment ends DELETED and the name stops serving; a second DELETE
answers 204 and the name is free again.

A version made through the Tasks API (by its rollout) and one made through the deployments API
record the same principal: the token's id, its scopes as groups (issue 10).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server

from greenroom.app import create_app
from greenroom.auth.scopes import Scope, effective_scopes
from greenroom.config import Settings

API = "/apis/models/v2/workspaces/team-a"
TASKS = "/internal/inference-deployment"
SERVED = "team-a/emb"
DEADLINE_S = 180.0


def data_dir_with_cache(root: Path, onnx_cache_dir: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "onnx").symlink_to(onnx_cache_dir)
    return root


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url, timeout=120, headers=ADMIN_HEADERS, **kwargs)


def call(method: str, url: str, status: int, **kwargs: Any) -> Any:
    response = request(method, url, **kwargs)
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def wait_status(base: str, version: int, wanted: str) -> dict[str, Any]:
    """Poll one deployment version until it has the wanted status (ERROR ends the wait)."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(call("GET", f"{base}{API}/deployments/emb/versions/{version}", 200))
        assert seen["status"] != "ERROR", seen
        return seen["status"] == wanted

    wait_until_sync(reached, deadline_s=DEADLINE_S, interval_s=0.2, what=f"v{version} {wanted}")
    return seen


def embed(base: str) -> np.ndarray:
    body = call("POST", f"{base}/v1/embeddings", 200, json={"model": SERVED, "input": "hello"})
    return np.array(body["data"][0]["embedding"])


@pytest.fixture
def server(tmp_path: Path, onnx_cache_dir: Path) -> Iterator[str]:
    settings = Settings(
        data_dir=data_dir_with_cache(tmp_path / "data", onnx_cache_dir),
        default_model_id="",
        drain_grace_s=5,
        admin_token=ADMIN_TOKEN,
    )
    with running_server(create_app(settings)) as url:
        yield url


def test_a_deployment_in_a_workspace_rolls_out_serves_updates_and_is_deleted(
    server: str, tiny_model_dir: Path
) -> None:
    model = {"id": "tiny-emb", "source": str(tiny_model_dir)}
    registered = call("POST", f"{server}/v1/embedding-models", 201, json=model)
    config = {"name": "emb-config", "model_spec": {"model_name": "tiny-emb"}}
    call("POST", f"{server}{API}/deployment-configs", 201, json=config)

    # version 1: CREATED, then READY through the deploy task, served as `team-a/emb`
    created = call(
        "POST", f"{server}{API}/deployments", 201, json={"name": "emb", "config": "emb-config"}
    )
    assert (created["status"], created["entity_version"]) == ("CREATED", 1)
    first = wait_status(server, 1, "READY")
    assert first["live_revision_id"] == first["revision_id"] == created["revision_id"]
    assert first["endpoint"] == {"url": "/v1/embeddings", "model": SERVED}
    task = call("GET", f"{server}{TASKS}/deploy-status/{SERVED}", 200)
    assert task["status"] == "done" and task["metadata"]["revision_id"] == first["revision_id"]
    assert len(call("GET", f"{server}{API}/deployments/emb/versions", 200)) == 1
    original = embed(server)
    assert original.shape == (registered["dimension"],)

    # version 2 (a new config version): PENDING, then READY and live; blue replaced
    call(
        "POST",
        f"{server}{API}/deployment-configs/emb-config",
        201,
        json={"executor_config": {"max_batch_size": 8}},
    )
    pending = call("POST", f"{server}{API}/deployments/emb", 201, json={"config": "emb-config"})
    assert (pending["status"], pending["entity_version"], pending["config_version"]) == (
        "PENDING",
        2,
        2,
    )
    assert pending["id"] == created["id"]
    second = wait_status(server, 2, "READY")
    assert second["live_revision_id"] == second["revision_id"]
    assert second["previous_revision_id"] == first["revision_id"]
    history = [entry["status"] for entry in second["status_history"]]
    assert history[0] == "PENDING" and history[-1] == "READY" and len(history) > 2
    versions = call("GET", f"{server}{API}/deployments/emb/versions", 200)
    assert [v["entity_version"] for v in versions] == [2, 1]
    assert len(versions[1]["status_history"]) > 1
    np.testing.assert_allclose(embed(server), original, rtol=1e-5)
    listed = call("GET", f"{server}{API}/deployments", 200)["data"]
    assert [(d["name"], d["entity_version"]) for d in listed] == [("emb", 2)]

    # DELETE: 202 DELETING, then DELETED; the served name is gone
    deleting = call("DELETE", f"{server}{API}/deployments/emb", 202)
    assert deleting["status"] == "DELETING"
    wait_status(server, 2, "DELETED")
    assert call("GET", f"{server}{API}/deployments/emb/versions/1", 200)["status"] == "DELETED"
    response = request("POST", f"{server}/v1/embeddings", json={"model": SERVED, "input": "x"})
    assert response.status_code == 404
    assert call("GET", f"{server}{TASKS}/delete-status/{SERVED}", 200)["status"] == "done"

    # the second DELETE removes the records: the name is free again
    assert call("DELETE", f"{server}{API}/deployments/emb", 204) is None
    call("GET", f"{server}{API}/deployments/emb", 404)
    assert call("GET", f"{server}{API}/deployments/emb/versions", 200) == []
    reborn = call(
        "POST", f"{server}{API}/deployments", 201, json={"name": "emb", "config": "emb-config"}
    )
    assert reborn["entity_version"] == 1 and reborn["id"] != created["id"]
    wait_status(server, 1, "READY")
    np.testing.assert_allclose(embed(server), original, rtol=1e-5)


def test_both_apis_record_the_same_principal(server: str, tiny_model_dir: Path) -> None:
    """The Tasks API's deploy creates its version in the rollout, the deployments API in the
    request: both record the token's id as `principal_id` and its scopes as
    `principal_groups`; the tasks record the token's name as `initiated_by`."""
    call(
        "POST",
        f"{server}/v1/embedding-models",
        201,
        json={"id": "tiny-emb", "source": str(tiny_model_dir)},
    )
    token = call("POST", f"{server}/v1/tokens", 201, json={"name": "alice", "scopes": ["deploy"]})
    alice = {"Authorization": f"Bearer {token['token']}"}

    def as_alice(method: str, url: str, status: int, **kwargs: Any) -> Any:
        response = httpx.request(method, url, timeout=120, headers=alice, **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    config = {"name": "emb-config", "model_spec": {"model_name": "tiny-emb"}}
    as_alice("POST", f"{server}{API}/deployment-configs", 201, json=config)
    through_deployments = as_alice(
        "POST", f"{server}{API}/deployments", 201, json={"name": "emb", "config": "emb-config"}
    )
    task = as_alice("POST", f"{server}{TASKS}/deploy", 200, json={"embedding_model_id": "tiny-emb"})
    default = "/apis/models/v2/workspaces/default/deployments/tiny-emb"

    def created_by_the_rollout() -> bool:
        return request("GET", f"{server}{default}").status_code == 200

    wait_until_sync(created_by_the_rollout, deadline_s=DEADLINE_S, interval_s=0.2, what="v1")
    through_tasks = call("GET", f"{server}{default}", 200)

    groups = sorted(str(scope) for scope in effective_scopes([Scope.DEPLOY]))
    for version in (through_deployments, through_tasks):
        assert version["auth_context"]["principal_id"] == token["id"]
        assert version["auth_context"]["principal_groups"] == groups
    assert through_tasks["auth_context"] == through_deployments["auth_context"]
    assert task["metadata"]["initiated_by"] == "alice"
    deploy_of_version = call("GET", f"{server}{TASKS}/deploy-status/{SERVED}", 200)
    assert deploy_of_version["metadata"]["initiated_by"] == "alice"
