"""The Ray runtime: every revision is its own Ray Serve application, `greenroom-<revision id>`.

Green comes up as a new application beside blue's (never an in-place update of one application)
and blue's application is deleted after the drain. A Serve replica loads its engine with the same
code as a local replica process and also runs the replica protocol server (`ReplicaServer`), so
the router, the probes and the reconciler talk to it exactly as to a local replica; it publishes
its endpoint in Ray's KV store, where this backend reads it. The deployment's `embed` method is a
second transport (`ServeHandleClient`), measured in `bench/ray_transport.py`.

Connects to `RAY_ADDRESS` when set, else starts a private local Ray (never a plain `ray.init()`,
which attaches to any Ray on the host). Applications on an external cluster outlive greenroom and
are re-adopted on the next start; a private local Ray dies with this process.

Security: the private Ray listens on 127.0.0.1 only, keeps Ray's token authentication on (the
token is generated once into `<data dir>/ray.token`, 0600) and its processes start without the
server's `GREENROOM_*` secrets. With `RAY_ADDRESS`, greenroom uses the cluster's own settings
(`RAY_AUTH_MODE=token` with `RAY_AUTH_TOKEN_PATH` or `RAY_AUTH_TOKEN`, as for any Ray client).
Replicas get the allowed variables of their config only (`environment.replica_environment`) and
their revision's secret as a bind argument, which guards their protocol port.

Every call into Ray runs on one thread of its own (`_call`), off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from greenroom.config import Settings, default_threads
from greenroom.runtime.base import ReplicaState, ReplicaStatus, RevisionSpec, RuntimeBackend
from greenroom.runtime.environment import replica_environment, without_server_secrets

log = logging.getLogger("greenroom.runtime.ray")
APP_PREFIX = "greenroom-"
DEPLOYMENT = "GreenroomReplica"
KV_NAMESPACE = "greenroom"
SERVE_NAMESPACE = "serve"
ACTOR_PREFIX = "SERVE_REPLICA::"
LOOPBACK = "127.0.0.1"
PRIVATE_OBJECT_STORE_BYTES = 100 * 1024 * 1024
RAY_TOKEN_FILE = "ray.token"  # in the data dir: the private Ray's auth token
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
T = TypeVar("T")


def app_name(revision_id: str) -> str:
    return f"{APP_PREFIX}{revision_id}"


def spec_to_json(spec: RevisionSpec) -> bytes:
    """The spec as kept in Ray's KV store for adoption: without its secret (the replicas get
    that as a bind argument of their deployment)."""
    values = dataclasses.asdict(spec)
    values.pop("secret")
    return orjson.dumps(values, default=str)


def spec_from_json(raw: bytes) -> RevisionSpec:
    values = orjson.loads(raw)
    values["model_path"] = Path(values["model_path"])
    return RevisionSpec(**values)


def _kv():  # type: ignore[no-untyped-def]
    from ray.experimental import internal_kv

    return internal_kv


# ----- the Serve deployment (runs inside the Ray worker) -------------------------------------
class GreenroomReplica:
    """One Serve replica: the engine, warmed up, behind the replica protocol and `embed`."""

    def __init__(
        self, spec_json: bytes, cache_dir: str, bind_host: str, report_host: str, secret: str
    ) -> None:
        from ray import serve

        from greenroom.runtime.engines import EngineOptions, load_engine
        from greenroom.runtime.replica import ReplicaServer

        if not secret:
            raise ValueError("a replica needs its revision's secret")
        if bind_host == LOOPBACK:
            serve_grpc_on_loopback()
        spec = spec_from_json(spec_json)
        engine = load_engine(
            EngineOptions(
                model_path=spec.model_path,
                content_hash=spec.content_hash,
                engine=spec.engine,
                quantization=spec.quantization,
                threads=spec.threads,
                cache_dir=Path(cache_dir),
                gpu=spec.gpu,
            )
        )
        engine.warm_up()
        self.engine = engine
        self.server = ReplicaServer(engine, secret, max_batch_size=spec.max_batch_size)
        self._secret = secret
        # The protocol server gets an event loop and thread of its own: independent of how Serve
        # runs user code.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.server.handle, bind_host, 0), self._loop
        ).result(30)
        self._port = server.sockets[0].getsockname()[1]
        self._host = report_host
        context = serve.get_replica_context()
        self._key = f"{context.app_name}/{context.replica_id.unique_id}"
        endpoint = {"host": self._host, "port": self._port, "pid": os.getpid()}
        _kv()._internal_kv_put(self._key, orjson.dumps(endpoint), namespace=KV_NAMESPACE)

    def endpoint(self) -> tuple[str, int]:
        return self._host, self._port

    async def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        """The Serve-handle transport (callers hold Ray's token); shares the engine thread with
        the protocol server and its limits."""
        from greenroom.runtime import protocol

        lengths = np.asarray(lengths, dtype=np.int64)
        flat_ids = np.asarray(flat_ids, dtype=np.int64)
        protocol.check_batch(lengths, flat_ids, self.server.limits)
        loop = asyncio.get_running_loop()
        engine_thread = self.server.executor
        return await loop.run_in_executor(engine_thread, self.engine.embed, lengths, flat_ids)

    async def __call__(self, request: Any) -> Any:
        """Serve's HTTP proxy transport (measured, not used by the router; the proxy runs only
        with `GREENROOM_RAY_HTTP_PORT`, on loopback): `Authorization: Bearer <the revision's
        secret>` and an EMBED request payload of the replica protocol in, raw little-endian
        float32 vectors out."""
        import hmac

        from starlette.responses import Response

        from greenroom.runtime import protocol

        given = request.headers.get("authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(given.encode(), self._secret.encode()):
            return Response(status_code=401)
        declared = request.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > self.server.limits.max_request_bytes:
            return Response(status_code=413)
        try:
            lengths, flat_ids = protocol.decode_embed(await request.body(), self.server.limits)
        except protocol.RefusedRequest as exc:
            return Response(str(exc), status_code=400)
        vectors = await self.embed(lengths, flat_ids)
        return Response(
            vectors.astype("<f4", copy=False).tobytes(),
            media_type="application/octet-stream",
            headers={"x-dimension": str(vectors.shape[1])},
        )

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the replica protocol server stopped")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            _kv()._internal_kv_del(self._key, namespace=KV_NAMESPACE)


def serve_grpc_on_loopback() -> None:
    """Ray Serve (2.60) starts each replica's inter-deployment gRPC server on `[::]:0`, every
    interface, right after the deployment's constructor, whatever the node's IP. On a private
    Ray, whose every other server listens on 127.0.0.1 only, bind it there too (Ray's token
    guards it either way). Called in the replica's process, from the constructor."""
    from ray.serve._private import replica as serve_replica

    bind = serve_replica.add_port_to_grpc_server
    if getattr(bind, "loopback_only", False):
        return

    def bind_loopback(server: Any, address: str) -> int:
        return bind(server, f"{LOOPBACK}:0" if address == "[::]:0" else address)

    bind_loopback.loopback_only = True  # type: ignore[attr-defined]
    serve_replica.add_port_to_grpc_server = bind_loopback


class ServeHandleClient:
    """`ReplicaClient`'s interface over a Serve deployment handle (Serve picks the replica)."""

    def __init__(self, revision_id: str) -> None:
        from ray import serve

        self.handle = serve.get_app_handle(app_name(revision_id))

    async def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        return await self.handle.embed.remote(lengths, flat_ids)

    async def close(self) -> None:
        return None


# ----- the backend ---------------------------------------------------------------------------
@dataclass
class Slot:
    """One wanted replica; `serve_id` is the Serve replica that fills it now."""

    status: ReplicaStatus
    serve_id: str | None = None
    had_replica: bool = False


@dataclass
class RayRevision:
    spec: RevisionSpec
    slots: list[Slot] = field(default_factory=list)
    deploy_error: str = ""  # Serve refused the application


@dataclass(frozen=True)
class Observation:
    """What one poll saw: application status and message, live replica ids, endpoints."""

    apps: dict[str, tuple[str, str]]
    alive: dict[str, set[str]]  # app → Serve replica ids whose actors are alive
    endpoints: dict[str, dict[str, dict[str, Any]]]  # app → Serve replica id → endpoint


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
    makes world-writable, lies inside it).
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
    with without_server_secrets(), _loopback_node():
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


def _reload_ray_auth() -> None:
    """Ray caches its auth mode and token; an imported Ray reads them again."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


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


def start_serve(http_port: int | None) -> None:
    """Serve's controller; its HTTP proxy only when a port is given (the router does not need
    it, and its default port 8000 is greenroom's)."""
    from ray import serve

    if http_port is None:
        serve.start(proxy_location="Disabled")
    else:
        serve.start(proxy_location="HeadOnly", http_options={"host": LOOPBACK, "port": http_port})


class RayRuntime(RuntimeBackend):
    """Revisions as Ray Serve applications; replicas reported with their protocol endpoints."""

    name = "ray"

    def __init__(
        self,
        settings: Settings,
        *,
        poll_interval_s: float = 0.5,
        keep_applications: bool | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.poll_interval_s = poll_interval_s
        self.onnx_cache_dir = settings.resolved_data_dir() / "onnx"
        self.external = bool(os.environ.get("RAY_ADDRESS"))
        # On close, applications on an external cluster stay (re-adopted next start).
        self.keep_applications = self.external if keep_applications is None else keep_applications
        self.owns_ray = False
        self._temp_dir: Path | None = None
        self._revisions: dict[str, RayRevision] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray")
        self._opened: asyncio.Future[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    # ----- Ray calls, one thread --------------------------------------------------------------
    async def _call(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def open(self) -> None:
        """Connect (or start a private Ray), start Serve, adopt running applications; once."""
        if self._opened is None:
            self._opened = asyncio.get_running_loop().create_future()
            try:
                await self._call(self._connect)
                adopted = await self._call(self._read_adopted)
            except BaseException as exc:
                self._opened.set_exception(exc)
                self._opened.exception()  # consumed: callers see it through `await`
                self._opened = None
                raise
            for spec in adopted:
                log.info("adopting the running Serve application of revision %s", spec.revision_id)
                self._revisions[spec.revision_id] = self._new_revision(spec)
            self._closed = False
            self._poller = asyncio.create_task(self._poll_loop(), name="ray runtime poller")
            self._opened.set_result(None)
        await self._opened

    def _connect(self) -> None:
        import ray

        if not ray.is_initialized():
            if self.external:
                address = os.environ["RAY_ADDRESS"]
                # a loopback-only Ray on this machine: join it as a loopback node too
                local = _is_loopback(address)
                with _loopback_node() if local else contextlib.nullcontext():
                    ray.init(address=address, namespace=KV_NAMESPACE)
            else:
                token = self.settings.resolved_data_dir() / RAY_TOKEN_FILE
                self._temp_dir = start_private_ray(token)
                self.owns_ray = True
        start_serve(self.settings.ray_http_port)

    def _read_adopted(self) -> list[RevisionSpec]:
        from ray import serve

        specs = []
        for name in serve.status().applications:
            if not name.startswith(APP_PREFIX):
                continue
            raw = _kv()._internal_kv_get(f"spec/{name}", namespace=KV_NAMESPACE)
            if raw:
                specs.append(spec_from_json(raw))
        return specs

    def _new_revision(self, spec: RevisionSpec) -> RayRevision:
        slots = [
            Slot(
                ReplicaStatus(
                    replica_id=f"{spec.revision_id}-{i}",
                    revision_id=spec.revision_id,
                    state=ReplicaState.STARTING,
                    message="starting on Ray Serve",
                )
            )
            for i in range(spec.replicas)
        ]
        return RayRevision(spec, slots)

    # ----- the interface ------------------------------------------------------------------
    async def start_revision(self, spec: RevisionSpec) -> None:
        await self.open()
        current = self._revisions.get(spec.revision_id)
        if current is not None and current.spec == spec:
            return
        if current is not None:
            await self.stop_revision(spec.revision_id)
        self._revisions[spec.revision_id] = self._new_revision(spec)
        self._notify(spec.revision_id)
        try:
            await self._call(self._deploy, spec)
        except Exception as exc:
            log.exception("deploying revision %s on Ray Serve failed", spec.revision_id)
            revision = self._revisions.get(spec.revision_id)
            if revision is not None:
                revision.deploy_error = f"Ray Serve refused the application: {exc}"
            self._set_all(spec.revision_id, ReplicaState.BACKOFF, f"Serve refused it: {exc}")

    def _deploy(self, spec: RevisionSpec) -> None:
        from ray import serve
        from ray.serve.api import RunTarget, _run_many  # the non-blocking form of serve.run

        name = app_name(spec.revision_id)
        raw = spec_to_json(spec)
        _kv()._internal_kv_put(f"spec/{name}", raw, namespace=KV_NAMESPACE)
        # On an external cluster the router may run on another node: the protocol server
        # listens on every interface there, and the revision's secret is what guards it.
        report_host = LOOPBACK if not self.external else _node_ip()
        bind_host = LOOPBACK if not self.external else "0.0.0.0"
        env_vars = replica_environment(
            spec.environment,
            self.settings.allowed_env_names(),
            threads=spec.threads,
            revision_id=spec.revision_id,
            inherit_base=False,
        )
        deployment = serve.deployment(
            GreenroomReplica,
            name=DEPLOYMENT,
            num_replicas=spec.replicas,
            max_ongoing_requests=self.settings.ray_max_ongoing_requests,
            ray_actor_options={
                "num_cpus": self.replica_num_cpus(spec),
                "num_gpus": spec.gpu,
                "runtime_env": {"env_vars": env_vars},
            },
            health_check_period_s=1.0,
            health_check_timeout_s=self.settings.replica_health_timeout_s,
            graceful_shutdown_wait_loop_s=0.2,
            graceful_shutdown_timeout_s=self.settings.replica_stop_grace_s,
        )
        # The secret travels as a bind argument, through Ray's authenticated channel; never in
        # `runtime_env` (an environment listing) or the KV spec.
        app = deployment.bind(raw, str(self.onnx_cache_dir), bind_host, report_host, spec.secret)
        _run_many(
            [RunTarget(target=app, name=name, route_prefix=f"/{name}")],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )

    def replica_num_cpus(self, spec: RevisionSpec) -> float:
        """The CPU share a replica asks of Ray: a fraction, so green fits beside blue."""
        if self.settings.ray_replica_num_cpus is not None:
            return self.settings.ray_replica_num_cpus
        return round(min(spec.threads, default_threads()) / default_threads() / 2, 3)

    async def stop_revision(self, revision_id: str) -> None:
        known = self._revisions.pop(revision_id, None)
        if known is None and self._opened is None:
            return
        await self.open()
        await self._call(self._delete, revision_id)
        self._notify(revision_id)

    def _delete(self, revision_id: str) -> None:
        from ray import serve

        name = app_name(revision_id)
        if name in serve.status().applications:
            serve.delete(name, _blocking=True)
        kv = _kv()
        for key in kv._internal_kv_list(f"{name}/", namespace=KV_NAMESPACE):
            kv._internal_kv_del(key, namespace=KV_NAMESPACE)
        kv._internal_kv_del(f"spec/{name}", namespace=KV_NAMESPACE)

    def replicas(self, revision_id: str) -> list[ReplicaStatus]:
        revision = self._revisions.get(revision_id)
        return [slot.status for slot in revision.slots] if revision else []

    def revisions(self) -> list[str]:
        return list(self._revisions)

    async def close(self) -> None:
        if self._closed or self._opened is None:
            self._revisions.clear()
            return
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        revision_ids = list(self._revisions)
        self._revisions.clear()
        if not self.keep_applications:
            for revision_id in revision_ids:
                await self._call(self._delete, revision_id)
        if self.owns_ray:
            await self._call(self._shutdown)
        self._opened = None

    def _shutdown(self) -> None:
        import ray
        from ray import serve

        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()
        self.owns_ray = False
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    # ----- observing Serve ------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            try:
                observation = await self._call(self._observe, list(self._revisions))
                self._apply(observation)
            except Exception:  # a failed poll is retried at the next tick
                log.exception("observing Ray Serve failed")
            await asyncio.sleep(self.poll_interval_s)

    def _observe(self, revision_ids: list[str]) -> Observation:
        import ray
        from ray import serve

        names = {app_name(r) for r in revision_ids}
        apps = {
            name: (str(status.status), status.message)
            for name, status in serve.status().applications.items()
            if name in names
        }
        alive: dict[str, set[str]] = {name: set() for name in names}
        for actor in ray.util.list_named_actors(all_namespaces=True):
            actor_name = actor["name"] if isinstance(actor, dict) else actor
            if not actor_name.startswith(ACTOR_PREFIX):
                continue
            app, _, rest = actor_name[len(ACTOR_PREFIX) :].partition("#")
            if app in alive:
                alive[app].add(rest.rpartition("#")[2])
        endpoints: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
        kv = _kv()
        for name in names:
            for key in kv._internal_kv_list(f"{name}/", namespace=KV_NAMESPACE):
                serve_id = key.decode().rpartition("/")[2]
                if serve_id not in alive[name]:  # a dead replica's leftover
                    kv._internal_kv_del(key, namespace=KV_NAMESPACE)
                    continue
                raw = kv._internal_kv_get(key, namespace=KV_NAMESPACE)
                if raw:
                    endpoints[name][serve_id] = orjson.loads(raw)
        return Observation(apps, alive, endpoints)

    def _apply(self, seen: Observation) -> None:
        for revision_id, revision in list(self._revisions.items()):
            name = app_name(revision_id)
            if name not in seen.alive or revision.deploy_error:
                continue  # started after this poll began, or never deployed
            before = [slot.status for slot in revision.slots]
            assign(revision.slots, seen.alive[name], seen.endpoints[name], seen.apps.get(name))
            if [slot.status for slot in revision.slots] != before:
                self._notify(revision_id)

    def _set_all(self, revision_id: str, state: ReplicaState, message: str) -> None:
        revision = self._revisions.get(revision_id)
        if revision is None:
            return
        for slot in revision.slots:
            slot.status = replace(slot.status, state=state, message=message)
        self._notify(revision_id)


def assign(
    slots: list[Slot],
    alive: set[str],
    endpoints: dict[str, dict[str, Any]],
    app: tuple[str, str] | None,
) -> None:
    """Map Serve's replicas onto our stable slots (`<revision>-<i>`), counting replacements as
    restarts, and set each slot's status. Pure: the decision apart from talking to Ray."""
    for slot in slots:
        if slot.serve_id is not None and slot.serve_id not in alive:
            slot.serve_id = None  # its Serve replica died; Serve starts another
    taken = {slot.serve_id for slot in slots}
    newcomers = sorted(alive - taken, key=lambda s: (s not in endpoints, s))
    app_status, app_message = app or ("DEPLOYING", "")
    for slot in slots:
        if slot.serve_id is None and newcomers:
            slot.serve_id = newcomers.pop(0)
            if slot.had_replica:
                slot.status = replace(slot.status, restarts=slot.status.restarts + 1)
            slot.had_replica = True
        endpoint = endpoints.get(slot.serve_id) if slot.serve_id else None
        if endpoint is not None:
            changes: dict[str, Any] = dict(
                state=ReplicaState.READY,
                host=endpoint["host"],
                port=int(endpoint["port"]),
                pid=int(endpoint["pid"]),
                message="",
            )
        elif app_status == "DEPLOY_FAILED" or (slot.had_replica and slot.serve_id is None):
            changes = dict(
                state=ReplicaState.BACKOFF,
                host=None,
                port=None,
                pid=None,
                message=app_message or "the Serve replica died; Serve is starting another",
            )
        else:
            changes = dict(
                state=ReplicaState.STARTING, host=None, port=None, pid=None, message="loading model"
            )
        slot.status = replace(slot.status, **changes)


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rpartition(":")[0] or address
    return host in {"localhost", "::1", "[::1]"} or host.startswith("127.")


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()
