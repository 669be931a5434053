"""`greenroom serve` as a user runs it: the admin token created on first start, the default model
served, no orphans after SIGKILL."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from helpers import free_port, pid_alive, stop_process, wait_until_sync

from greenroom.config import DEFAULT_MODEL_ID
from greenroom.registry.weights import content_hash

pytestmark = pytest.mark.default_model


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, onnx_cache_dir: Path) -> Iterator[tuple]:
    data_dir = tmp_path_factory.mktemp("serve") / "data"
    data_dir.mkdir()
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GREENROOM_ADMIN_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "greenroom.cli", "serve", "--port", str(port)],
        env={**env, "GREENROOM_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=(data_dir / "serve.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_sync(
            lambda: _ready(url) or process.poll() is not None, deadline_s=180, what="readyz"
        )
        assert process.poll() is None, (data_dir / "serve.log").read_text()[-3000:]
        yield url, process, data_dir
    finally:
        stop_process(process)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def admin_token(data_dir: Path) -> str:
    return (data_dir / "admin.token").read_text().strip()


def test_the_first_start_creates_the_admin_token_file(server: tuple) -> None:
    url, _, data_dir = server
    token_file = data_dir / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = admin_token(data_dir)
    assert len(token) >= 43  # 32 random bytes, URL-safe
    assert (data_dir / "serve.log").read_text().count(token) == 1  # printed once
    assert token not in (data_dir / "logs" / "greenroom.log").read_text()
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{url}/v1/tokens", headers=headers).status_code == 200
    assert httpx.get(f"{url}/v1/tokens").status_code == 401


def test_the_default_model_answers_the_openai_client(
    server: tuple, default_model_dir: Path
) -> None:
    url, _, data_dir = server
    token = admin_token(data_dir)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)
    texts = ["A man is eating food.", "A man is eating a meal.", "The stock market fell today."]
    vectors = np.array(
        [d.embedding for d in client.embeddings.create(model=DEFAULT_MODEL_ID, input=texts).data]
    )
    assert vectors.shape == (3, 384)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > 0.7 > unrelated
    response = httpx.post(
        f"{url}/v1/embeddings",
        json={"model": DEFAULT_MODEL_ID, "input": "x"},
        headers={"Authorization": f"Bearer {token}"},
    )
    digest = content_hash(default_model_dir)
    assert response.headers["x-embedding-space"] == f"{DEFAULT_MODEL_ID}@{digest[:12]}/384/l2"


def test_sigkill_of_the_server_leaves_no_replica_behind(server: tuple) -> None:
    _, process, _ = server
    replicas = children(process.pid)
    assert replicas, "the server should own at least one replica process"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(30)
    wait_until_sync(
        lambda: not any(pid_alive(pid) for pid in replicas), deadline_s=30, what="replicas gone"
    )
