"""Issue 9, item 2 (the cluster side): the private Ray was an open cluster.

A deploy override `runtime: ray` made the server start Ray with `RAY_AUTH_MODE=disabled`; its GCS,
raylet and workers listened on every interface, and a second Ray client with no token connected
and ran `id`. Now the private Ray listens on 127.0.0.1 only, keeps Ray's token authentication on
(greenroom's token in `<data dir>/ray.token`, 0600), its processes inherit none of the server's
`GREENROOM_*` secrets, and only enabled runtime targets get a backend at all.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from factories import HashEngine
from helpers import async_test, descendants, free_port, pid_alive, wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server

from greenroom.app import create_app
from greenroom.config import Settings
from greenroom.errors import InvalidRequestError
from greenroom.runtime.fake import FakeRuntime
from greenroom.runtime.ray_cluster import private_temp_dir

TASKS = "/internal/inference-deployment"
MODEL = "tiny"
WRONG_TOKEN = "ab" * 32
# A Ray driver that connects and runs a task; exit code 3 when the cluster refuses it.
RAY_CLIENT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
except Exception as exc:
    print("REFUSED", type(exc).__name__, flush=True)
    sys.exit(3)
print("CONNECTED", ray.get(ray.remote(lambda: 41 + 1).remote()), flush=True)
ray.shutdown()
"""


# ----- only enabled targets ---------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "targets"), [("", {"local"}), ("ray", {"local", "ray"})])
@async_test
async def test_only_enabled_runtime_targets_get_a_backend(
    tmp_path: Path, extra: str, targets: set[str]
) -> None:
    settings = Settings(
        data_dir=tmp_path, default_model_id="", admin_token=ADMIN_TOKEN, extra_runtimes=extra
    )
    app = create_app(settings, FakeRuntime(lambda _: HashEngine()))
    with running_server(app):
        runtimes = app.state.runtimes
        assert runtimes.targets == targets
        if "ray" not in targets:
            with pytest.raises(InvalidRequestError, match="not enabled"):
                await runtimes.backend("ray")


# ----- the private Ray --------------------------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    pid: int
    name: str
    address: str
    port: int


def _listening_inodes() -> dict[str, tuple[str, int]]:
    """Socket inode → (address, port) of every TCP socket in LISTEN state, from /proc/net."""
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            raw_address, raw_port = fields[1].split(":")
            packed = bytes.fromhex(raw_address)
            # /proc/net prints each 32-bit word in host (little-endian) order
            words = b"".join(packed[i : i + 4][::-1] for i in range(0, len(packed), 4))
            found[fields[9]] = (socket.inet_ntop(family, words), int(raw_port, 16))
    return found


def listeners(pids: set[int]) -> list[Listener]:
    inodes = _listening_inodes()
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    inode = target.removeprefix("socket:[").removesuffix("]")
                    if target.startswith("socket:[") and inode in inodes:
                        found.append(Listener(pid, name, *inodes[inode]))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(entry.split("=", 1) for entry in raw.decode().split("\0") if "=" in entry)


def call(method: str, url: str, **kwargs: object) -> dict:
    response = httpx.request(method, url, timeout=120, headers=ADMIN_HEADERS, **kwargs)
    assert response.status_code < 400, response.text
    return response.json() if response.content else {}


def base_env() -> dict[str, str]:
    """What any process here needs, and nothing of this test session's Ray or secrets."""
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "RAY_USAGE_STATS_ENABLED": "0"}
    for name in ("HOME", "PYTHONPATH"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


@pytest.fixture
def ray_server(tmp_path: Path, onnx_cache_dir: Path) -> Iterator[tuple[str, int, Path]]:
    """`greenroom serve` with the Ray runtime and no `RAY_ADDRESS`: it starts its private Ray.
    Yields the URL, the server's pid and its data dir; stops every process it started."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    port = free_port()
    env = {
        **base_env(),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GREENROOM_DATA_DIR": str(data_dir),
        "GREENROOM_RUNTIME": "ray",
        "GREENROOM_ADMIN_TOKEN": ADMIN_TOKEN,
        "GREENROOM_DEFAULT_MODEL_ID": "",
        "GREENROOM_DRAIN_GRACE_S": "5",
    }
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "greenroom.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    started: set[int] = set()
    try:
        wait_until_sync(
            lambda: _ready(url) or process.poll() is not None, deadline_s=180, what="readyz"
        )
        assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        started = descendants(process.pid)
        yield url, process.pid, data_dir
        started |= descendants(process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in started:  # whatever of its Ray outlived it (only if something went wrong)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(private_temp_dir(process.pid), ignore_errors=True)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def ray_client(gcs_address: str, home: Path, **auth: str) -> subprocess.Popen[str]:
    """A Ray driver on this machine; it dials 127.0.0.1 as a local user would."""
    env = {
        **base_env(),
        "HOME": str(home),  # no ~/.ray/auth_token of anybody's
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        **auth,
    }
    return subprocess.Popen(
        [sys.executable, "-c", RAY_CLIENT, gcs_address],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.ray
def test_the_private_ray_is_loopback_only_authenticated_and_without_server_secrets(
    ray_server: tuple[str, int, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    url, server_pid, data_dir = ray_server
    call("POST", f"{url}/v1/embedding-models", json={"id": MODEL, "source": str(tiny_model_dir)})
    task = call("POST", f"{url}{TASKS}/deploy", json={"embedding_model_id": MODEL})
    result: dict = {}

    def final() -> bool:
        result.update(call("GET", f"{url}{TASKS}/deploy/{task['id']}"))
        return result["status"] in {"done", "failed", "canceled", "refused"}

    wait_until_sync(final, deadline_s=240, what="the deploy on Ray")
    assert result["status"] == "done", result
    body = call("POST", f"{url}/v1/embeddings", json={"model": MODEL, "input": "hello"})
    assert len(body["data"][0]["embedding"]) > 0  # greenroom itself deploys and serves on it

    ray_pids = descendants(server_pid)
    sockets = listeners(ray_pids | {server_pid})
    names = {listener.name for listener in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets
    exposed = [listener for listener in sockets if not is_loopback(listener.address)]
    assert exposed == [], exposed

    token_file = data_dir / "ray.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    for pid in ray_pids:
        with contextlib.suppress(OSError):
            leaked = [name for name in environ(pid) if name.startswith("GREENROOM_")]
            assert leaked == [], (pid, Path(f"/proc/{pid}/cmdline").read_bytes()[:200], leaked)

    (gcs,) = {listener.port for listener in sockets if listener.name == "gcs_server"}
    address = f"127.0.0.1:{gcs}"
    home = tmp_path / "home"
    home.mkdir()
    refused = [
        ray_client(address, home),
        ray_client(address, home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=WRONG_TOKEN),
    ]
    outputs = [client.communicate(timeout=180) for client in refused]
    for client, (out, err) in zip(refused, outputs, strict=True):
        assert client.returncode == 3 and "REFUSED" in out, (out, err[-2000:])
        assert "Unauthenticated" in err, err[-2000:]  # refused for want of the token
    holder = ray_client(address, home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    out, err = holder.communicate(timeout=180)
    assert "CONNECTED 42" in out, err[-2000:]  # the same client with greenroom's token gets in
