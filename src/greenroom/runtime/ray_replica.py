"""What runs inside a Ray worker: the Serve deployment of one revision's replicas.

A Serve replica loads its engine with the same code as a local replica process and runs the
replica protocol server (`ReplicaServer`), so the router, the probes and the reconciler talk to
it exactly as to a local replica. It publishes its endpoint in Ray's KV store, under
`<application>/<Serve replica id>`, where the backend (`greenroom.runtime.ray`) reads it.
The revision's spec travels as JSON (`spec_to_json`), without its secret, which the replica gets
as a bind argument of its deployment and which guards its protocol port.

Stopping: Serve's graceful shutdown of a replica ends in its `__del__`. Serve chooses which
replica a scale-down stops, and greenroom's routers call replicas directly (Serve sees none of
their requests, so its own drain waits for nothing): the replica drains itself. It marks its
endpoint `stopping` (the backend reports it STOPPING: every router stops sending it batches and
moves its queued ones), serves what still arrives for `SCALE_DOWN_DRAIN_S` (routers in other
processes learn it from the store's reports), then closes its protocol server; its
`stopping` endpoint stays until the backend sees the actor gone. When the application itself
is deleted (`DELETING_PREFIX` in the KV store: its revision has drained already) it skips the
wait and withdraws its endpoint at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from greenroom.runtime.base import RevisionSpec
from greenroom.runtime.ray_cluster import KV_NAMESPACE, LOOPBACK

# how long a replica Serve stops reports itself stopping before it closes its protocol server:
# the backend's poll (0.5 s), then routers in other processes read the store's reports (a pass
# at least every second), as `local.SCALE_DOWN_DRAIN_S` plus the poll
SCALE_DOWN_DRAIN_S = 2.5
# `<prefix><application>` in the KV store: the application is being deleted, nothing to drain
DELETING_PREFIX = "deleting/"


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


def kv():  # type: ignore[no-untyped-def]
    """Ray's internal KV store (greenroom's keys live in `KV_NAMESPACE`)."""
    from ray.experimental import internal_kv

    return internal_kv


class GreenroomReplica:
    """One Serve replica: the engine, warmed up, behind the replica protocol."""

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
        # The protocol server gets an event loop and thread of its own: independent of how Serve
        # runs user code.
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._listener = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.server.handle, bind_host, 0), self._loop
        ).result(30)
        self._port = self._listener.sockets[0].getsockname()[1]
        self._host = report_host
        context = serve.get_replica_context()
        self._app = context.app_name
        self._key = f"{context.app_name}/{context.replica_id.unique_id}"
        self._endpoint = {"host": self._host, "port": self._port, "pid": os.getpid()}
        kv()._internal_kv_put(self._key, orjson.dumps(self._endpoint), namespace=KV_NAMESPACE)
        self._stopped = False

    def endpoint(self) -> tuple[str, int]:
        return self._host, self._port

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the replica protocol server stopped")

    def __del__(self) -> None:
        """Serve's graceful-shutdown hook (and Python's finaliser): drain, then stop serving;
        once, and only for a replica whose constructor finished."""
        if getattr(self, "_stopped", True):
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            if not self.drain(SCALE_DOWN_DRAIN_S):
                kv()._internal_kv_del(self._key, namespace=KV_NAMESPACE)
        # a drained replica's `stopping` endpoint stays until its actor is gone (the backend
        # then deletes it): it is reported STOPPING to the end
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._close_listener(), self._loop).result(5)

    def drain(self, drain_s: float) -> bool:
        """Report this replica stopping and keep serving for `drain_s`, unless its whole
        application is being deleted (drained already by the rollout or delete); whether it
        drained."""
        store = kv()
        if store._internal_kv_exists(f"{DELETING_PREFIX}{self._app}", namespace=KV_NAMESPACE):
            return False
        stopping = orjson.dumps({**self._endpoint, "stopping": True})
        store._internal_kv_put(self._key, stopping, namespace=KV_NAMESPACE)
        time.sleep(drain_s)
        return True

    async def _close_listener(self) -> None:
        self._listener.close()
        await self._listener.wait_closed()


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
