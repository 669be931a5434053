"""What runs inside a Ray worker: the Serve deployment of one revision's replicas.

A Serve replica loads its engine with the same code as a local replica process and runs the
replica protocol server (`ReplicaServer`), so the router, the probes and the reconciler talk to
it exactly as to a local replica. It publishes its endpoint in Ray's KV store, under
`<application>/<Serve replica id>`, where the backend (`greenroom.runtime.ray`) reads it.
The revision's spec travels as JSON (`spec_to_json`), without its secret, which the replica gets
as a bind argument of its deployment and which guards its protocol port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from greenroom.runtime.base import RevisionSpec
from greenroom.runtime.ray_cluster import KV_NAMESPACE, LOOPBACK


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
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.server.handle, bind_host, 0), self._loop
        ).result(30)
        self._port = server.sockets[0].getsockname()[1]
        self._host = report_host
        context = serve.get_replica_context()
        self._key = f"{context.app_name}/{context.replica_id.unique_id}"
        endpoint = {"host": self._host, "port": self._port, "pid": os.getpid()}
        kv()._internal_kv_put(self._key, orjson.dumps(endpoint), namespace=KV_NAMESPACE)

    def endpoint(self) -> tuple[str, int]:
        return self._host, self._port

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the replica protocol server stopped")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            kv()._internal_kv_del(self._key, namespace=KV_NAMESPACE)


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
