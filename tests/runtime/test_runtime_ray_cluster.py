"""The Ray cluster the driver talks to: the private Ray's token, its addresses, and a
`greenroom serve` with its private Ray that ends cleanly on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import descendants, free_port, pid_alive, wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN

from greenroom.runtime.ray_cluster import ensure_ray_token, is_loopback, private_temp_dir

TASKS = "/internal/inference-deployment"
FINAL = {"done", "failed", "canceled", "refused"}


def test_the_private_ray_token_is_made_once_and_kept_private(tmp_path: Path) -> None:
    path = ensure_ray_token(tmp_path / "data" / "ray.token")
    token = path.read_text()
    assert len(token) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    assert ensure_ray_token(path).read_text() == token  # reused, and private again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:6379", True),
        ("ray://localhost:10001", True),
        ("[::1]:6379", True),
        ("10.0.0.5:6379", False),
        ("ray://head.example:10001", False),
    ],
)
def test_a_cluster_on_loopback_is_joined_as_a_loopback_node(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_the_private_temp_dir_is_named_for_the_process() -> None:
    assert private_temp_dir(1234) == Path("/tmp/gr-ray-1234")
    assert private_temp_dir() == Path(f"/tmp/gr-ray-{os.getpid()}")


# ----- SIGTERM of `greenroom serve` with its private Ray ------------------------------------------


def naming(text: str) -> set[int]:
    """Processes whose command line mentions `text` (a Ray process names its session dir)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
    return found


def call(method: str, url: str, **kwargs: object) -> dict:
    response = httpx.request(method, url, timeout=120, headers=ADMIN_HEADERS, **kwargs)
    assert response.status_code < 400, response.text
    return response.json() if response.content else {}


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def serve_on_private_ray(
    tmp_path: Path, onnx_cache_dir: Path
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`greenroom serve` with GREENROOM_RUNTIME=ray and no RAY_ADDRESS; kills whatever of it
    and its Ray is left at the end (only if the test failed)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GREENROOM_DATA_DIR": str(data_dir),
        "GREENROOM_RUNTIME": "ray",
        "GREENROOM_ADMIN_TOKEN": ADMIN_TOKEN,
        "GREENROOM_DEFAULT_MODEL_ID": "",
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "greenroom.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    temp_dir = private_temp_dir(process.pid)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_sync(
            lambda: ready(url) or process.poll() is not None, deadline_s=180, what="readyz"
        )
        assert process.poll() is None, log_path.read_text()[-3000:]
        yield url, process
    finally:
        leftovers = descendants(process.pid) | naming(str(temp_dir))
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
def test_sigterm_ends_serve_and_its_private_ray_cleanly(
    tmp_path: Path, onnx_cache_dir: Path, tiny_model_dir: Path
) -> None:
    """It used to die by SIGABRT while deleting its Serve application (Ray's failure-signal
    handler in the driver aborts 3 s after a SIGTERM) and leave `/tmp/gr-ray-<pid>` behind."""
    pytest.importorskip("ray")
    with serve_on_private_ray(tmp_path, onnx_cache_dir) as (url, process):
        call(
            "POST", f"{url}/v1/embedding-models", json={"id": "tiny", "source": str(tiny_model_dir)}
        )
        task = call("POST", f"{url}{TASKS}/deploy", json={"embedding_model_id": "tiny"})
        result: dict = {}

        def final() -> bool:
            result.update(call("GET", f"{url}{TASKS}/deploy/{task['id']}"))
            return result["status"] in FINAL

        wait_until_sync(final, deadline_s=240, what="the deploy on Ray")
        assert result["status"] == "done", result  # a Serve application runs: its stop takes time
        temp_dir = private_temp_dir(process.pid)
        ray_pids = descendants(process.pid) | naming(str(temp_dir))
        assert len(ray_pids) > 2 and temp_dir.is_dir()

        process.send_signal(signal.SIGTERM)
        returncode = process.wait(120)
        log = (tmp_path / "serve.log").read_text()
        assert returncode == 0, log[-3000:]
        assert "SIGTERM received" not in log  # no C++ stack from Ray's handler
        assert not temp_dir.exists()
        wait_until_sync(
            lambda: not any(pid_alive(pid) for pid in ray_pids | naming(str(temp_dir))),
            deadline_s=30,
            what="every process of its Ray to exit",
        )
