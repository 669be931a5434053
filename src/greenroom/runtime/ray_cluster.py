"""The Ray cluster greenroom's driver talks to: a private local Ray, or the one `RAY_ADDRESS` names.

Connects to `RAY_ADDRESS` when set, else starts a private local Ray (never a plain `ray.init()`,
which attaches to any Ray on the host). A private Ray dies with this process.

Security: the private Ray listens on 127.0.0.1 only, keeps Ray's token authentication on (the
token is generated once into `<data dir>/ray.token`, 0600) and its processes start without the
server's `GREENROOM_*` secrets. With `RAY_ADDRESS`, greenroom uses the cluster's own settings
(`RAY_AUTH_MODE=token` with `RAY_AUTH_TOKEN_PATH` or `RAY_AUTH_TOKEN`, as for any Ray client).

Signals: the driver (this process) gets no Ray failure-signal handler. Ray's core worker installs
one on `ray.init` (Abseil's) for SIGTERM among others: it prints a C++ stack, hands the signal on
and arms a 3-second alarm that aborts the process, so a `greenroom serve` stopping gracefully
(deleting its Serve applications, shutting its Ray down) was killed half-way and left its Ray's
directory behind. SIGTERM is uvicorn's to handle; Ray's own processes keep their handler.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from greenroom.config import default_threads
from greenroom.runtime.environment import without_server_secrets

LOOPBACK = "127.0.0.1"
KV_NAMESPACE = "greenroom"  # the driver's Ray namespace and greenroom's keys in Ray's KV store
PRIVATE_OBJECT_STORE_BYTES = 100 * 1024 * 1024
RAY_TOKEN_FILE = "ray.token"  # in the data dir: the private Ray's auth token
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def private_temp_dir(pid: int | None = None) -> Path:
    """Short on purpose: Ray's Unix socket paths live under it (108-byte limit)."""
    return Path(f"/tmp/gr-ray-{pid or os.getpid()}")


def ensure_ray_token(path: Path) -> Path:
    """The private Ray's token: generated once, kept in `path` (0600), reused by every start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.read_text().strip():
            os.chmod(path, 0o600)
            return path
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(32))
    os.replace(partial, path)
    return path


def start_private_ray(
    token_path: Path, num_cpus: int | None = None, temp_dir: Path | None = None
) -> Path:
    """A Ray of this process's own on this machine (not any Ray already on the host): every
    process of it listens on 127.0.0.1 only, token authentication is on (the token in
    `token_path`, made by `ensure_ray_token`) and none inherits a server secret.

    Returns the directory to remove after `ray.shutdown()` (0700; Ray's own temp dir, which it
    makes world-writable, lies inside it); `stop_private_ray` does both.
    """
    import ray

    temp_dir = temp_dir or private_temp_dir()
    temp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(temp_dir, 0o700)
    # Kept for the life of this process: the driver authenticates every call with it.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(ensure_ray_token(token_path))
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _reload_ray_auth()
    # GCS, raylet, agents and workers start from this process's environment (`ray.init`
    # spawns them, workers inherit the raylet's): without our secrets, with a loopback node IP.
    with without_server_secrets(), _loopback_node(), _no_driver_failure_handler():
        ray.init(
            address="local",
            _node_ip_address=LOOPBACK,
            _temp_dir=str(temp_dir / "r"),
            object_store_memory=PRIVATE_OBJECT_STORE_BYTES,
            include_dashboard=False,
            num_cpus=num_cpus or default_threads(),
            log_to_driver=False,
            namespace=KV_NAMESPACE,
        )
    return temp_dir


def connect(address: str) -> None:
    """Join the cluster at `address` (`RAY_ADDRESS`) as a driver; a loopback-only Ray on this
    machine is joined as a loopback node too."""
    import ray

    local = is_loopback(address)
    with _loopback_node() if local else contextlib.nullcontext(), _no_driver_failure_handler():
        ray.init(address=address, namespace=KV_NAMESPACE)


def start_serve(http_port: int | None = None) -> None:
    """Serve's controller; its HTTP proxy only when a port is given (the router does not need
    it, and its default port 8000 is greenroom's)."""
    from ray import serve

    if http_port is None:
        serve.start(proxy_location="Disabled")
    else:
        serve.start(proxy_location="HeadOnly", http_options={"host": LOOPBACK, "port": http_port})


def stop_private_ray(temp_dir: Path | None) -> None:
    """Serve, then the private Ray (every process of it), then its directory."""
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.shutdown()
    ray.shutdown()
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


def node_ip() -> str:
    """This node's address in the cluster (where the router on another node reaches it)."""
    import ray

    return ray.util.get_node_ip_address()


def is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rpartition(":")[0] or address
    return host in {"localhost", "::1", "[::1]"} or host.startswith("127.")


def _reload_ray_auth() -> None:
    """Ray caches its auth mode and token; an imported Ray reads them again."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def _no_driver_failure_handler() -> Iterator[None]:
    """`ray.init` without Ray's failure-signal handler in this process (see the module's
    docstring). Ray reads the flag when it creates the driver's core worker, inside `ray.init`;
    the environment stays untouched, so the processes it starts keep theirs."""
    from ray._private import ray_constants

    before = ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = before


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Ray turns a node IP of 127.0.0.1 into the machine's address, and its gRPC servers then
    listen on every interface, unless it believes it runs a single-machine cluster (what it
    does on macOS and Windows): then the node IP stays 127.0.0.1 and every server, the GCS's,
    raylet's, object manager's and each worker's, listens on loopback only. The variable is
    read at import and by each Ray process; set in both places for the start."""
    from ray._private import ray_constants

    before_env = os.environ.get(SINGLE_MACHINE_ENV)
    before_constant = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_constant
        if before_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = before_env
