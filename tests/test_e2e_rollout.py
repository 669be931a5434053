"""The control plane end to end over HTTP, with real replica processes.

1. The issue's flow: register, deploy, embed; a config change; new weights that are not
   comparable (refused, old weights still serving); the same allowed; delete → 404.
2. A `greenroom worker` process killed with SIGKILL in the middle of a rollout: after its lease
   expires a second worker finishes the task, and serving never stops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import stop_process, wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server

from greenroom.app import create_app
from greenroom.config import Settings

TASKS = "/internal/inference-deployment"
FINAL = {"done", "failed", "canceled", "refused"}


def data_dir_with_cache(root: Path, onnx_cache_dir: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "onnx").symlink_to(onnx_cache_dir)
    return root


def call(method: str, url: str, **kwargs: Any) -> Any:
    response = httpx.request(method, url, timeout=120, headers=ADMIN_HEADERS, **kwargs)
    assert response.status_code < 400, response.text
    return response.json() if response.content else None


def deploy_and_wait(base: str, body: dict[str, Any]) -> dict[str, Any]:
    task = call("POST", f"{base}{TASKS}/deploy", json=body)
    return wait_task(base, task["id"])


def wait_task(base: str, task_id: str, kind: str = "deploy") -> dict[str, Any]:
    result: dict[str, Any] = {}

    def final() -> bool:
        result.update(call("GET", f"{base}{TASKS}/{kind}/{task_id}"))
        return result["status"] in FINAL

    wait_until_sync(final, deadline_s=120, what=f"task {task_id} to end")
    return result


def embed(base: str, model: str, text: str = "hello world") -> np.ndarray:
    body = call("POST", f"{base}/v1/embeddings", json={"model": model, "input": text})
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


def test_register_deploy_change_refuse_allow_delete(
    server: str, tiny_model_dir: Path, tiny_model_2_dir: Path
) -> None:
    call("POST", f"{server}/v1/embedding-models", json={"id": "a", "source": str(tiny_model_dir)})
    first = deploy_and_wait(server, {"embedding_model_id": "a"})
    assert first["status"] == "done", first
    original = embed(server, "a")

    changed = deploy_and_wait(server, {"embedding_model_id": "a", "config": {"max_batch_size": 8}})
    assert changed["status"] == "done", changed
    assert changed["metadata"]["revision_id"] != first["metadata"]["revision_id"]
    assert changed["metadata"]["compatibility"]["reindex_required"] is False
    np.testing.assert_allclose(embed(server, "a"), original, rtol=1e-5)

    call("PUT", f"{server}/v1/embedding-models/a", json={"source": str(tiny_model_2_dir)})
    refused = deploy_and_wait(server, {"embedding_model_id": "a"})
    assert refused["status"] == "failed"
    assert "not comparable" in refused["detail"]
    np.testing.assert_allclose(embed(server, "a"), original, rtol=1e-5)  # old weights serve

    allowed = deploy_and_wait(
        server, {"embedding_model_id": "a", "allow_embedding_space_change": True}
    )
    assert allowed["status"] == "done", allowed
    assert allowed["metadata"]["compatibility"]["reindex_required"] is True
    assert float(embed(server, "a") @ original) < 0.99

    deletion = call("POST", f"{server}{TASKS}/delete", json={"embedding_model_id": "a"})
    assert wait_task(server, deletion["id"], "delete")["status"] == "done"
    response = httpx.post(
        f"{server}/v1/embeddings", json={"model": "a", "input": "x"}, headers=ADMIN_HEADERS
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def start_worker(data_dir: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "greenroom.cli", "worker", "--data-dir", str(data_dir)],
        env={**os.environ, "GREENROOM_LEASE_S": "2", "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


def test_a_killed_worker_is_taken_over_and_serving_continues(
    tmp_path: Path, onnx_cache_dir: Path, tiny_model_dir: Path
) -> None:
    data_dir = data_dir_with_cache(tmp_path / "data", onnx_cache_dir)
    settings = Settings(
        data_dir=data_dir,
        default_model_id="",
        worker_enabled=False,
        drain_grace_s=5,
        admin_token=ADMIN_TOKEN,
    )
    workers: list[subprocess.Popen] = []
    app = create_app(settings)
    with running_server(app) as base:
        try:
            workers.append(start_worker(data_dir, tmp_path / "worker-1.log"))
            call(
                "POST",
                f"{base}/v1/embedding-models",
                json={"id": "b", "source": str(tiny_model_dir)},
            )
            assert deploy_and_wait(base, {"embedding_model_id": "b"})["status"] == "done"

            failures: list[str] = []
            stop_traffic = threading.Event()

            def traffic() -> None:
                with httpx.Client(timeout=30, headers=ADMIN_HEADERS) as client:
                    while not stop_traffic.is_set():
                        r = client.post(f"{base}/v1/embeddings", json={"model": "b", "input": "hi"})
                        if r.status_code != 200:
                            failures.append(r.text)

            sender = threading.Thread(target=traffic)
            sender.start()
            task = call(
                "POST",
                f"{base}{TASKS}/deploy",
                json={"embedding_model_id": "b", "config": {"replicas": 2}},
            )

            def in_start_green() -> bool:
                steps = call("GET", f"{base}{TASKS}/deploy/{task['id']}")["metadata"].get("steps")
                return any(
                    s["name"] == "start_green" and s["status"] == "running" for s in steps or []
                )

            wait_until_sync(in_start_green, deadline_s=60, interval_s=0.02, what="start_green")
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(10)
            workers.append(start_worker(data_dir, tmp_path / "worker-2.log"))
            final = wait_task(base, task["id"])
            stop_traffic.set()
            sender.join(30)
            assert final["status"] == "done", final
            assert failures == []
            steps = {s["name"]: s["status"] for s in final["metadata"]["steps"]}
            assert set(steps.values()) <= {"done", "skipped"}
            live = call("GET", f"{base}/v1/models")["data"]
            assert [m["id"] for m in live] == ["b"]
            # no replica left unowned: only the new revision runs, with the replicas it asked for
            green = final["metadata"]["revision_id"]
            assert app.state.runtime.revisions() == [green]
            assert len(app.state.runtime.ready_replicas(green)) == 2
        finally:
            for process in workers:
                stop_process(process)


def test_a_restart_brings_back_what_was_live(
    tmp_path: Path, onnx_cache_dir: Path, tiny_model_dir: Path
) -> None:
    data_dir = data_dir_with_cache(tmp_path / "data", onnx_cache_dir)
    settings = Settings(
        data_dir=data_dir, default_model_id="", drain_grace_s=5, admin_token=ADMIN_TOKEN
    )
    with running_server(create_app(settings)) as base:
        call("POST", f"{base}/v1/embedding-models", json={"id": "c", "source": str(tiny_model_dir)})
        assert deploy_and_wait(base, {"embedding_model_id": "c"})["status"] == "done"
        before = embed(base, "c")
    with running_server(create_app(settings)) as base:  # readyz: c has a ready replica again
        np.testing.assert_allclose(embed(base, "c"), before, rtol=1e-5)
        tasks = call("GET", f"{base}{TASKS}/tasks")
        assert len(tasks) == 1  # nothing was redeployed: the store brought it back
