"""Issue 9, the control plane's inputs (items 1, 2, 8, 9, 12 and the names rule), against a
real server with the tokens an attacker would hold: `deploy`, `read` and `controller`, created
through the tokens API with the admin token.

- `additional_envs` that run code (`BROWSER`, `PYTHONWARNINGS`, `LD_PRELOAD`, ...) are refused
  with 422 naming the variable, wherever a config is written; values are bounded, and a `read`
  token sees them as `***` (configs and the workloads API's `environmentVariables`).
- `runtime: ray` is refused with 422 unless the operator enabled it (GREENROOM_EXTRA_RUNTIMES).
- A controller cannot orphan a serving revision: DELETED while it serves is 409, and a DELETE
  removes the records only once the runtime withdrew everything of the name.
- Page numbers, page sizes and versions the store cannot hold are 4xx, never 500.
- Executor settings have upper bounds; names are ASCII, not `.` or `..`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server
from sqlalchemy import select

from greenroom.app import create_app
from greenroom.config import Settings
from greenroom.deployments.models import Deployment
from greenroom.deployments.states import DeploymentStatus, set_status
from greenroom.store.db import Store

WS = "team-a"
API = f"/apis/models/v2/workspaces/{WS}"
TASKS = "/internal/inference-deployment"
WORKLOADS = "/api/v1/workloads/inferences"
MODEL = "tiny-sec"
DEADLINE_S = 180.0
CODE_RUNNING_ENVS = {
    "BROWSER": "/bin/sh -c 'cat /proc/self/environ > /tmp/owned' #%s",
    "PYTHONWARNINGS": "all:0:antigravity.x:0:0",
    "LD_PRELOAD": "/tmp/evil.so",
    "PATH": "/tmp/evil",
    "PYTHONPATH": "/tmp/evil",
}


@dataclass(frozen=True)
class Server:
    url: str
    settings: Settings
    deploy: dict[str, str]
    read: dict[str, str]
    controller: dict[str, str]

    def call(
        self, method: str, path: str, status: int, headers: dict[str, str], **kwargs: Any
    ) -> Any:
        response = httpx.request(method, self.url + path, headers=headers, timeout=120, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else None


def token(url: str, scope: str) -> dict[str, str]:
    created = httpx.post(
        f"{url}/v1/tokens", json={"name": f"team-{scope}", "scopes": [scope]}, headers=ADMIN_HEADERS
    )
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['token']}"}


@contextmanager
def serve(data_dir: Path, onnx_cache_dir: Path, **overrides: Any) -> Iterator[Server]:
    data_dir.mkdir(parents=True)
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    settings = Settings(
        data_dir=data_dir,
        default_model_id="",
        admin_token=ADMIN_TOKEN,
        drain_grace_s=1,
        runtime="local",
        **overrides,
    )
    with running_server(create_app(settings)) as url:
        yield Server(
            url, settings, token(url, "deploy"), token(url, "read"), token(url, "controller")
        )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, onnx_cache_dir: Path, tiny_model_dir: Path
) -> Iterator[Server]:
    """One server for the module (local runtime, no extra runtime or variable), with a tiny
    model registered by the `deploy` token."""
    with serve(tmp_path_factory.mktemp("control-plane") / "data", onnx_cache_dir) as running:
        model = {"id": MODEL, "source": str(tiny_model_dir)}
        running.call("POST", "/v1/embedding-models", 201, running.deploy, json=model)
        yield running


def config_body(name: str, **executor: Any) -> dict[str, Any]:
    return {"name": name, "model_spec": {"model_name": MODEL}, "executor_config": executor}


def deployment_status(server: Server, name: str, version: int) -> str:
    path = f"{API}/deployments/{name}/versions/{version}"
    return server.call("GET", path, 200, server.read)["status"]


def wait_status(server: Server, name: str, version: int, wanted: str) -> None:
    def reached() -> bool:
        status = deployment_status(server, name, version)
        assert status != "ERROR", f"{name} version {version} failed"
        return status == wanted

    wait_until_sync(reached, deadline_s=DEADLINE_S, interval_s=0.2, what=f"{name} {wanted}")


def deploy_ready(server: Server, name: str, config: str, **executor: Any) -> dict[str, Any]:
    """A config and a deployment of it, READY and serving with a real replica."""
    server.call(
        "POST",
        f"{API}/deployment-configs",
        201,
        server.deploy,
        json=config_body(config, **executor),
    )
    body = {"name": name, "config": config}
    created = server.call("POST", f"{API}/deployments", 201, server.deploy, json=body)
    wait_status(server, name, 1, "READY")
    return created


def embeds(server: Server, name: str) -> int:
    """The status of an embeddings request for `workspace/name`."""
    response = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": f"{WS}/{name}", "input": "hello"},
        headers=ADMIN_HEADERS,
        timeout=120,
    )
    return response.status_code


def running_pods(server: Server, workload_id: str) -> int:
    revisions = server.call("GET", f"{WORKLOADS}/{workload_id}/revisions", 200, server.read)
    return sum(revision["runningPods"] for revision in revisions["revisions"])


# ----- item 1: additional_envs -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CODE_RUNNING_ENVS))
def test_a_deploy_token_cannot_set_variables_that_run_code(server: Server, name: str) -> None:
    envs = {name: CODE_RUNNING_ENVS[name]}
    config = f"envs-{name.lower().replace('_', '-')}"
    body = config_body(config, additional_envs=envs)
    detail = server.call("POST", f"{API}/deployment-configs", 422, server.deploy, json=body)
    assert f"'{name}' is not allowed in additional_envs" in detail["detail"]
    # nor in a new version of an existing config
    server.call("POST", f"{API}/deployment-configs", 201, server.deploy, json=config_body(config))
    update = {"executor_config": {"additional_envs": envs}}
    path = f"{API}/deployment-configs/{config}"
    detail = server.call("POST", path, 422, server.deploy, json=update)
    assert f"'{name}'" in detail["detail"]
    versions = server.call("GET", f"{path}/versions", 200, server.deploy)
    assert [version["executor_config"]["additional_envs"] for version in versions] == [{}]


def test_variables_are_bounded_in_number_and_size(server: Server) -> None:
    many = {f"OMP_{number}": "1" for number in range(33)}
    body = config_body("envs-many", additional_envs=many)
    server.call("POST", f"{API}/deployment-configs", 422, server.deploy, json=body)
    long = config_body("envs-long", additional_envs={"OMP_NUM_THREADS": "1" * 1025})
    server.call("POST", f"{API}/deployment-configs", 422, server.deploy, json=long)
    nul = config_body("envs-nul", additional_envs={"OMP_NUM_THREADS": "1\0"})
    detail = server.call("POST", f"{API}/deployment-configs", 422, server.deploy, json=nul)
    assert "'OMP_NUM_THREADS'" in detail["detail"]


def test_variable_values_are_shown_only_to_deploy_tokens(server: Server) -> None:
    """A config with allow-listed variables, deployed on a real replica: a `read` token sees
    `***` in every config read and in the workloads API's `environmentVariables`."""
    envs = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    created = deploy_ready(server, "masked", "masked-config", additional_envs=envs)
    masked = dict.fromkeys(envs, "***")
    config = f"{API}/deployment-configs/masked-config"
    reads = [
        server.call("GET", config, 200, server.read),
        server.call("GET", f"{config}/versions/1", 200, server.read),
        *server.call("GET", f"{config}/versions", 200, server.read),
        *server.call("GET", f"{API}/deployment-configs?name=masked-config", 200, server.read)[
            "data"
        ],
    ]
    assert [read["executor_config"]["additional_envs"] for read in reads] == [masked] * 4
    assert (
        server.call("GET", config, 200, server.controller)["executor_config"]["additional_envs"]
        == masked
    )
    assert (
        server.call("GET", config, 200, server.deploy)["executor_config"]["additional_envs"] == envs
    )
    revisions = f"{WORKLOADS}/{created['id']}/revisions"
    [revision] = server.call("GET", revisions, 200, server.read)["revisions"]
    assert revision["environmentVariables"] == masked
    one = server.call("GET", f"{WORKLOADS}/revisions/{revision['id']}", 200, server.read)
    assert one["environmentVariables"] == masked
    [revision] = server.call("GET", revisions, 200, server.deploy)["revisions"]
    assert revision["environmentVariables"] == envs


# ----- item 2: runtimes --------------------------------------------------------------------------


def test_runtime_ray_is_refused_unless_the_operator_enabled_it(
    server: Server, tmp_path: Path, onnx_cache_dir: Path, tiny_model_dir: Path
) -> None:
    body = config_body("on-ray", runtime="ray")
    detail = server.call("POST", f"{API}/deployment-configs", 422, server.deploy, json=body)
    assert "The runtime 'ray' is not enabled on this server" in detail["detail"]
    # `greenroom deploy M --set runtime=ray`: the Tasks API's override
    deploy = {"embedding_model_id": MODEL, "config": {"runtime": "ray"}}
    detail = server.call("POST", f"{TASKS}/deploy", 422, server.deploy, json=deploy)
    assert "'ray'" in detail["detail"]
    path = f"/apis/models/v2/workspaces/default/deployment-configs/{MODEL}"
    server.call("POST", path, 422, server.deploy, json={"executor_config": {"runtime": "ray"}})
    assert len(server.call("GET", f"{path}/versions", 200, server.read)) == 1  # nothing written
    # the server's own runtime is always enabled; the operator enables Ray explicitly
    local = config_body("on-local", runtime="local")
    server.call("POST", f"{API}/deployment-configs", 201, server.deploy, json=local)
    with serve(tmp_path / "ray-enabled", onnx_cache_dir, extra_runtimes="ray") as enabled:
        model = {"id": MODEL, "source": str(tiny_model_dir)}
        enabled.call("POST", "/v1/embedding-models", 201, enabled.deploy, json=model)
        written = enabled.call("POST", f"{API}/deployment-configs", 201, enabled.deploy, json=body)
        assert written["executor_config"]["runtime"] == "ray"  # written, never deployed here


# ----- item 8: a controller cannot orphan a serving revision -------------------------------------


def test_a_controller_cannot_orphan_a_serving_revision(server: Server) -> None:
    """The issue's attack: a controller posts DELETED on the live version, then an admin's
    DELETE removed the records (204) while the revision kept serving, unreachable by any API
    call. Now the status is refused (409) while the version serves, and the DELETE marks it
    DELETING and withdraws it: the records go only after its replicas stopped."""
    created = deploy_ready(server, "victim", "victim-config")
    assert embeds(server, "victim") == 200
    status = f"{API}/deployments/victim/status"
    for claimed in ("DELETED", "DELETING"):
        refused = server.call("POST", status, 409, server.controller, json={"status": claimed})
        assert "still runs" in refused["detail"]
    assert deployment_status(server, "victim", 1) == "READY"

    deleting = server.call("DELETE", f"{API}/deployments/victim", 202, ADMIN_HEADERS)
    assert deleting["status"] == "DELETING"
    wait_status(server, "victim", 1, "DELETED")
    wait_until_sync(
        lambda: running_pods(server, created["id"]) == 0, deadline_s=DEADLINE_S, what="stopped"
    )
    assert embeds(server, "victim") == 404

    def removed() -> bool:
        response = httpx.delete(f"{server.url}{API}/deployments/victim", headers=ADMIN_HEADERS)
        assert response.status_code in (202, 204), response.text
        return response.status_code == 204

    wait_until_sync(removed, deadline_s=DEADLINE_S, interval_s=0.2, what="records removed")
    server.call("GET", f"{API}/deployments/victim", 404, server.read)


def test_delete_keeps_the_records_of_a_deleted_version_that_still_serves(server: Server) -> None:
    """The store already disagrees (a version set DELETED behind the API's back while it
    serves): a DELETE does not remove its records (before: 204 and an orphan), it withdraws the
    revision first."""
    created = deploy_ready(server, "orphan", "orphan-config")
    store = Store(server.settings.resolved_database_url())
    try:
        with store.session_scope() as session:
            version = session.scalars(
                select(Deployment).where(Deployment.workspace == WS, Deployment.name == "orphan")
            ).one()
            set_status(version, DeploymentStatus.DELETED, "written behind the API's back")
    finally:
        store.dispose()
    assert embeds(server, "orphan") == 200

    deleting = server.call("DELETE", f"{API}/deployments/orphan", 202, ADMIN_HEADERS)
    assert deleting["status"] == "DELETING"
    wait_status(server, "orphan", 1, "DELETED")
    wait_until_sync(
        lambda: running_pods(server, created["id"]) == 0, deadline_s=DEADLINE_S, what="stopped"
    )
    assert embeds(server, "orphan") == 404

    def removed() -> bool:
        response = httpx.delete(f"{server.url}{API}/deployments/orphan", headers=ADMIN_HEADERS)
        return response.status_code == 204

    wait_until_sync(removed, deadline_s=DEADLINE_S, interval_s=0.2, what="records removed")


# ----- item 9: numbers the store cannot hold -----------------------------------------------------


def test_pages_and_versions_beyond_the_store_are_4xx(server: Server) -> None:
    server.call("POST", f"{API}/deployment-configs", 201, server.deploy, json=config_body("nums"))
    body = {"name": "nums", "config": "nums"}
    server.call("POST", f"{API}/deployments", 201, server.deploy, json=body)
    for path in ("deployments", "deployment-configs"):
        for query in (f"page={10**17}", f"page_size={10**30}", "page=²", "page_size=-1"):
            answer = server.call("GET", f"{API}/{path}?{query}", 422, server.read)
            assert isinstance(answer["detail"], list)
    for version in ("²", "99999999999999999999999", str(2**31), "0"):
        for method, path, headers in [
            ("GET", f"/deployment-configs/nums/versions/{version}", server.read),
            ("GET", f"/deployments/nums/versions/{version}", server.read),
            ("DELETE", f"/deployment-configs/nums/versions/{version}", server.deploy),
            ("DELETE", f"/deployments/nums/versions/{version}", server.deploy),
        ]:
            detail = server.call(method, API + path, 400, headers)["detail"]
            assert detail.startswith("Invalid version")
        status = f"{API}/deployments/nums/status?version={version}"
        detail = server.call("POST", status, 400, server.controller, json={"status": "READY"})
        assert detail["detail"].startswith("Invalid version")
    too_far = {"name": "nums2", "config": "nums", "config_version": 10**23}
    server.call("POST", f"{API}/deployments", 422, server.deploy, json=too_far)
    again = {"config": "nums", "config_version": 2**31}
    server.call("POST", f"{API}/deployments/nums", 422, server.deploy, json=again)
    server.call("GET", f"{TASKS}/tasks?limit={10**20}", 422, server.read)


# ----- item 12: executor settings are bounded ----------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_queue", 10**30),
        ("max_queue", 65_537),
        ("max_batch_tokens", 1_048_577),
        ("gpu", 17),
    ],
)
def test_executor_settings_are_bounded(server: Server, setting: str, value: int) -> None:
    """`max_queue: 10^30` rolled out before; replicas, batch size and threads were bounded
    already (the unit tests keep every bound)."""
    body = config_body(f"bounded-{setting.replace('_', '-')}", **{setting: value})
    server.call("POST", f"{API}/deployment-configs", 422, server.deploy, json=body)
    update = {"executor_config": {setting: value}}
    default_config = f"/apis/models/v2/workspaces/default/deployment-configs/{MODEL}"
    server.call("POST", default_config, 422, server.deploy, json=update)
    if setting != "gpu":  # not an override key of the Tasks API
        deploy = {"embedding_model_id": MODEL, "config": {setting: value}}
        server.call("POST", f"{TASKS}/deploy", 422, server.deploy, json=deploy)


# ----- names: ASCII, not `.` or `..` -------------------------------------------------------------


@pytest.mark.parametrize("name", ["ｔiny", "tіny", "tiny\u200b", "é", ".", ".."])
def test_names_are_ascii_and_never_dot_or_dot_dot(server: Server, name: str) -> None:
    """Homoglyphs (full-width, Cyrillic `і`), invisible characters and `.`/`..` in every name."""
    deploy = server.deploy
    server.call("POST", f"{API}/deployment-configs", 422, deploy, json=config_body(name))
    body = {"name": name, "config": MODEL}
    server.call("POST", f"{API}/deployments", 422, deploy, json=body)
    body = {"name": "ok", "config": MODEL, "project": f"search/{name}"}
    server.call("POST", f"{API}/deployments", 422, deploy, json=body)
    model = {"id": name, "source": "/nonexistent"}
    server.call("POST", "/v1/embedding-models", 422, deploy, json=model)
    for served in (name, f"{name}/{MODEL}", f"{WS}/{name}"):
        task = {"embedding_model_id": served}
        server.call("POST", f"{TASKS}/deploy", 422, deploy, json=task)
        server.call("POST", f"{TASKS}/delete", 422, deploy, json=task)
