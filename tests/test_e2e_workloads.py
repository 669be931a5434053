"""Issue 5's proof over HTTP with real replica processes: the workloads API after two config
changes and a rollback, and a killed replica seen as Degraded, then Running again."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server
from typer.testing import CliRunner

from greenroom.app import create_app
from greenroom.cli import app as cli
from greenroom.config import Settings

TASKS = "/internal/inference-deployment"
WORKLOADS = "/api/v1/workloads/inferences"
FINAL = {"done", "failed", "canceled", "refused"}


def call(method: str, url: str, **kwargs: Any) -> Any:
    response = httpx.request(method, url, timeout=120, headers=ADMIN_HEADERS, **kwargs)
    assert response.status_code < 400, response.text
    return response.json() if response.content else None


def wait_task(base: str, task_id: str) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def final() -> bool:
        result.update(call("GET", f"{base}{TASKS}/deploy/{task_id}"))
        return result["status"] in FINAL

    wait_until_sync(final, deadline_s=120, what=f"task {task_id} to end")
    return result


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, onnx_cache_dir: Path) -> Iterator[tuple]:
    data_dir = tmp_path_factory.mktemp("workloads") / "data"
    data_dir.mkdir()
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    settings = Settings(
        data_dir=data_dir,
        default_model_id="",
        drain_grace_s=5,
        admin_token=ADMIN_TOKEN,
        replica_backoff_initial_s=1.0,
        replica_health_interval_s=0.5,
    )
    app = create_app(settings)
    with running_server(app) as url:
        yield url, app


@pytest.fixture
def server(served: tuple) -> str:
    return served[0]


def deploy(base: str, model: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"embedding_model_id": model, "config": config or {}}
    return wait_task(base, call("POST", f"{base}{TASKS}/deploy", json=body)["id"])


def test_revisions_after_two_config_changes_and_a_rollback(
    server: str, tiny_model_dir: Path
) -> None:
    call("POST", f"{server}/v1/embedding-models", json={"id": "w", "source": str(tiny_model_dir)})
    first = deploy(server, "w")
    second = deploy(server, "w", {"max_batch_size": 8})
    third = deploy(server, "w", {"replicas": 2})
    rollback = call("POST", f"{server}{TASKS}/rollback", json={"embedding_model_id": "w"})
    assert rollback["id"].startswith("deploy-")
    rolled_back = wait_task(server, rollback["id"])
    for task in (first, second, third, rolled_back):
        assert task["status"] == "done", task
    assert rolled_back["metadata"]["rollback_of"] == second["metadata"]["revision_id"]

    workload_id = rolled_back["metadata"]["deployment_id"]
    workload = call("GET", f"{server}{WORKLOADS}/{workload_id}")
    assert (workload["workloadId"], workload["desiredPhase"]) == (workload_id, "Running")
    assert workload["actualPhase"] == "Running"

    revisions = call("GET", f"{server}{WORKLOADS}/{workload_id}/revisions")["revisions"]
    ids = [r["id"] for r in revisions]
    expected = [t["metadata"]["revision_id"] for t in (first, second, third, rolled_back)]
    assert ids == expected  # oldest first
    retired = [r for r in revisions if r["deletedAt"] is not None]
    assert [r["id"] for r in retired] == expected[:3]
    assert all(r["phase"] == "Stopped" for r in retired)
    live = revisions[-1]
    assert live["phase"] == "Running" and live["deletedAt"] is None
    assert live["runningPods"] == live["requestedPods"]["number"] == 1  # the second's config
    assert live["conditions"][0]["status"] == "True"
    assert live["images"][0].endswith("@sha256:" + revisions[1]["images"][0].split(":")[-1])

    def count(deleted: str | None) -> int:
        params = {"deleted": deleted} if deleted else {}
        return call("GET", f"{server}{WORKLOADS}/{workload_id}/revisions/count", params=params)[
            "count"
        ]

    assert (count(None), count("true"), count("false")) == (4, 3, 1)
    only_deleted = call(
        "GET", f"{server}{WORKLOADS}/{workload_id}/revisions", params={"deleted": "true"}
    )["revisions"]
    assert [r["id"] for r in only_deleted] == expected[:3]
    one = call("GET", f"{server}{WORKLOADS}/revisions/{live['id']}")
    assert one["id"] == live["id"] and one["workloadId"] == workload_id


def test_a_killed_replica_shows_degraded_then_running(served: tuple, tiny_model_dir: Path) -> None:
    server, app = served
    call("POST", f"{server}/v1/embedding-models", json={"id": "k", "source": str(tiny_model_dir)})
    revision_id = deploy(server, "k", {"replicas": 2})["metadata"]["revision_id"]
    url = f"{server}{WORKLOADS}/revisions/{revision_id}"
    assert call("GET", url)["runningPods"] == 2
    pid = app.state.runtime.replicas(revision_id)[0].pid
    os.kill(pid, signal.SIGKILL)
    wait_until_sync(lambda: call("GET", url)["phase"] == "Degraded", deadline_s=30, what="Degraded")
    degraded = call("GET", url)
    assert degraded["runningPods"] == 1 and "1 of 2 replicas ready" in degraded["phaseMessage"]
    wait_until_sync(lambda: call("GET", url)["phase"] == "Running", deadline_s=60, what="Running")
    assert call("GET", url)["runningPods"] == 2


def test_rollback_from_the_cli_and_refusal_of_changed_weights(
    server: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "model"
    copy.mkdir()
    for file in tiny_model_dir.rglob("*"):
        target = copy / file.relative_to(tiny_model_dir)
        if file.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    call("POST", f"{server}/v1/embedding-models", json={"id": "r", "source": str(copy)})
    first = call("POST", f"{server}{TASKS}/deploy", json={"embedding_model_id": "r"})
    wait_task(server, first["id"])
    second = call(
        "POST",
        f"{server}{TASKS}/deploy",
        json={"embedding_model_id": "r", "config": {"max_batch_size": 4}},
    )
    wait_task(server, second["id"])

    env = {"GREENROOM_TOKEN": ADMIN_TOKEN}
    result = CliRunner().invoke(cli, ["rollback", "r", "--wait", "--server", server], env=env)
    assert result.exit_code == 0, result.stderr
    assert "done" in result.stderr

    # the source may change now: what is served is the registry's copy (issue 9 item 10)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    kept = call("POST", f"{server}{TASKS}/rollback", json={"embedding_model_id": "r"})
    assert kept["status"] == "pending"
    wait_task(server, kept["id"])
    # the weights a rollback would restart changed on disk: refused
    served = Path(call("GET", f"{server}/v1/embedding-models/r")["path"]) / "config.json"
    served.chmod(0o600)
    served.write_text(served.read_text() + " ")
    refused = call("POST", f"{server}{TASKS}/rollback", json={"embedding_model_id": "r"})
    assert refused["status"] == "refused"
    assert "no longer on disk as they were" in refused["detail"]
    missing = httpx.post(
        f"{server}{TASKS}/rollback",
        json={"embedding_model_id": "r", "revision_id": "00000000-0000-0000-0000-000000000000"},
        headers=ADMIN_HEADERS,
    )
    assert missing.status_code == 404
