"""A deployment config may name another runtime than the server's default: on a local server,
`runtime: ray` runs that model on Ray Serve (started on first use), beside local models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server

from greenroom.app import create_app
from greenroom.config import Settings

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]
TASKS = "/internal/inference-deployment"


def call(method: str, url: str, **kwargs: Any) -> Any:
    response = httpx.request(method, url, timeout=120, headers=ADMIN_HEADERS, **kwargs)
    assert response.status_code < 400, response.text
    return response.json() if response.content else None


def deploy(base: str, model: str, config: dict[str, Any]) -> dict[str, Any]:
    task = call(
        "POST", f"{base}{TASKS}/deploy", json={"embedding_model_id": model, "config": config}
    )
    result: dict[str, Any] = {}

    def final() -> bool:
        result.update(call("GET", f"{base}{TASKS}/deploy/{task['id']}"))
        return result["status"] in {"done", "failed", "canceled", "refused"}

    wait_until_sync(final, deadline_s=180, what="the deploy to end")
    return result


def test_a_config_with_runtime_ray_runs_on_ray_beside_local_models(
    tmp_path: Path, onnx_cache_dir: Path, tiny_model_dir: Path
) -> None:
    from ray import serve

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    settings = Settings(
        data_dir=data_dir,
        default_model_id="",
        admin_token=ADMIN_TOKEN,
        drain_grace_s=5,
        extra_runtimes="ray",
    )
    app = create_app(settings)
    with running_server(app) as base:
        for model in ("on-local", "on-ray"):
            call(
                "POST",
                f"{base}/v1/embedding-models",
                json={"id": model, "source": str(tiny_model_dir)},
            )
        local = deploy(base, "on-local", {})
        remote = deploy(base, "on-ray", {"runtime": "ray"})
        assert local["status"] == "done", local
        assert remote["status"] == "done", remote
        ray_revision = remote["metadata"]["revision_id"]
        assert f"greenroom-{ray_revision}" in serve.status().applications
        assert app.state.runtime.revisions() == [local["metadata"]["revision_id"]]  # local only
        for model in ("on-local", "on-ray"):
            body = call("POST", f"{base}/v1/embeddings", json={"model": model, "input": "hello"})
            assert len(body["data"][0]["embedding"]) == 32
    assert f"greenroom-{ray_revision}" not in serve.status().applications  # deleted on close
