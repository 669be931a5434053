"""An in-process runtime backend for tests: replica servers on loopback inside this process.

Replicas speak the real replica protocol, so the router cannot tell them from processes; tests
control them by hand (`crash`, `restart`, readiness gates) to drive the failure paths.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from greenroom.runtime.base import ReplicaState, ReplicaStatus, RevisionSpec, RuntimeBackend
from greenroom.runtime.engines import Engine, EngineOptions, load_engine
from greenroom.runtime.handover import Handovers, count_change_only, surplus
from greenroom.runtime.replica import ReplicaServer

LOOPBACK = "127.0.0.1"
RESTART_DELAY_S = 0.1
HANDOVER_S = 120.0  # how long a new spec's replicas may take before the old ones stop anyway
EngineFactory = Callable[[RevisionSpec], Engine]
T = TypeVar("T")


def real_engines(cache_dir: Path | None = None) -> EngineFactory:
    """Load the engine a spec asks for, in this process (ONNX exports cached in `cache_dir`)."""

    def factory(spec: RevisionSpec) -> Engine:
        return load_engine(
            EngineOptions(
                model_path=spec.model_path,
                content_hash=spec.content_hash,
                engine=spec.engine,
                quantization=spec.quantization,
                threads=spec.threads,
                cache_dir=cache_dir,
            )
        )

    return factory


class FakeReplica:
    def __init__(self, runtime: FakeRuntime, spec: RevisionSpec, index: int) -> None:
        self.runtime = runtime
        self.spec = spec
        self.status = ReplicaStatus(
            replica_id=f"{spec.revision_id}-{index}",
            revision_id=spec.revision_id,
            state=ReplicaState.STARTING,
        )
        self.engine: Engine | None = None
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.stopped = False

    def _set(self, **changes: object) -> None:
        self.status = replace(self.status, **changes)  # type: ignore[arg-type]
        self.runtime._notify(self.spec.revision_id)

    async def start(self) -> None:
        if self.engine is None:
            try:
                self.engine = await asyncio.to_thread(self.runtime.engine_factory, self.spec)
            except Exception as exc:  # reported like a replica process that exits on start
                self._set(
                    state=ReplicaState.BACKOFF,
                    restarts=self.status.restarts + 1,
                    message=f"exited while starting: {exc}",
                )
                if self.runtime.auto_restart and not self.stopped:
                    await asyncio.sleep(RESTART_DELAY_S)
                    await self.start()
                return
        replica_server = ReplicaServer(
            self.engine, self.spec.secret, max_batch_size=self.spec.max_batch_size
        )

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections.add(writer)
            try:
                await replica_server.handle(reader, writer)
            finally:
                self.connections.discard(writer)

        self.server = await asyncio.start_server(handle, LOOPBACK, 0)
        port = self.server.sockets[0].getsockname()[1]
        await self.runtime.ready_gate.wait()
        self._set(state=ReplicaState.READY, host=LOOPBACK, port=port, message="")

    async def crash(self, message: str = "crashed") -> None:
        """Drop the server and every open connection at once, as a killed process would."""
        await self._close()
        self._set(
            state=ReplicaState.BACKOFF,
            port=None,
            restarts=self.status.restarts + 1,
            message=message,
        )
        if self.runtime.auto_restart:
            await self.start()

    async def stop(self) -> None:
        self.stopped = True
        self._set(state=ReplicaState.STOPPING)  # routers move its queued batches elsewhere
        await self._close()
        self.status = replace(self.status, state=ReplicaState.STOPPED, port=None)

    async def _close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.connections):
                writer.transport.abort()
            await self.server.wait_closed()
            self.server = None


class FakeRuntime(RuntimeBackend):
    name = "fake"

    def __init__(
        self, engine_factory: EngineFactory | None = None, *, auto_restart: bool = False
    ) -> None:
        super().__init__()
        self.auto_restart = auto_restart  # restart crashed replicas at once, as a supervisor would
        self.engine_factory = engine_factory or real_engines()
        self.ready_gate = asyncio.Event()  # cleared: new replicas wait before turning ready
        self.ready_gate.set()
        self._replicas: dict[str, list[FakeReplica]] = {}
        self._specs: dict[str, RevisionSpec] = {}
        self._started: dict[str, int] = {}  # replicas ever started per revision: the next index
        self._handovers: Handovers[FakeReplica] = Handovers(self._notify)
        self.loop: asyncio.AbstractEventLoop | None = None  # where the replicas run
        self.scale_up_refused: str | None = None  # set: every scale-up is refused with it

    def run_threadsafe(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the runtime's loop from another thread (a test's)."""
        assert self.loop is not None, "no revision started yet"
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def start_revision(self, spec: RevisionSpec) -> None:
        self.loop = asyncio.get_running_loop()
        if self._specs.get(spec.revision_id) == spec:
            return
        running = self._specs.get(spec.revision_id)
        self._specs[spec.revision_id] = spec
        if count_change_only(running, spec) and not self._handovers.active(spec.revision_id):
            await self._scale_in_place(spec)
            return
        replicas = self._new_replicas(spec, spec.replicas)
        if spec.revision_id in self._replicas:  # a new spec: handed over, as the local runtime
            slots = self._replicas[spec.revision_id]
            await self._handovers.start(spec.revision_id, slots, replicas, HANDOVER_S)
        else:
            self._replicas[spec.revision_id] = replicas
            self._notify(spec.revision_id)
        for replica in replicas:
            asyncio.get_running_loop().create_task(replica.start())

    def _new_replicas(self, spec: RevisionSpec, count: int) -> list[FakeReplica]:
        first = self._started.get(spec.revision_id, 0)
        self._started[spec.revision_id] = first + count
        return [FakeReplica(self, spec, first + i) for i in range(count)]

    async def _scale_in_place(self, spec: RevisionSpec) -> None:
        """A change of the replica count alone, as the local runtime makes it: new replicas
        beside the running ones, or the surplus stopped (STOPPING first)."""
        replicas = self._replicas.setdefault(spec.revision_id, [])
        if spec.replicas > len(replicas):
            new = self._new_replicas(spec, spec.replicas - len(replicas))
            replicas.extend(new)
            self._notify(spec.revision_id)
            for replica in new:
                asyncio.get_running_loop().create_task(replica.start())
            return
        leaving = surplus(replicas, spec.replicas)
        for replica in leaving:
            await replica.stop()
        replicas[:] = [r for r in replicas if r not in leaving]
        self._notify(spec.revision_id)

    async def stop_revision(self, revision_id: str) -> None:
        await self._handovers.cancel(revision_id)
        self._specs.pop(revision_id, None)
        self._started.pop(revision_id, None)
        for replica in self._replicas.pop(revision_id, []):
            await replica.stop()
        self._notify(revision_id)

    def scale_up_refusal(self, spec: RevisionSpec, add: int) -> str | None:
        return self.scale_up_refused

    def replicas(self, revision_id: str) -> list[ReplicaStatus]:
        return [r.status for r in self._replicas.get(revision_id, [])]

    def running(self) -> dict[str, RevisionSpec]:
        return dict(self._specs)

    async def close(self) -> None:
        for revision_id in list(self._replicas):
            await self.stop_revision(revision_id)

    def replica(self, replica_id: str) -> FakeReplica:
        for replicas in self._replicas.values():
            for replica in replicas:
                if replica.status.replica_id == replica_id:
                    return replica
        raise KeyError(replica_id)

    async def crash(self, replica_id: str) -> None:
        await self.replica(replica_id).crash()

    async def restart(self, replica_id: str) -> None:
        await self.replica(replica_id).start()
