"""The one conformance suite of the RuntimeBackend interface (`greenroom.runtime.base`).

Every backend runs it unchanged: subclass `RuntimeConformance` as `Test<Backend>Conformance` and
implement `make_backend`. The suite starts revisions of the tiny test models, talks to their
replicas through `ReplicaClient` (with each revision's secret), crashes replicas and stops
revisions. Override `crash_replica`
and `replica_gone` where a backend's replicas are not plain local processes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import async_test, pid_alive, wait_until
from tokenizers import Tokenizer

from greenroom.registry.weights import content_hash, inspect_model
from greenroom.runtime.base import ReplicaState, ReplicaStatus, RevisionSpec, RuntimeBackend
from greenroom.runtime.protocol import ReplicaClient

READY_DEADLINE_S = 120.0
PROBE_TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello world!", "a"]


class RuntimeConformance(ABC):
    """Behaviour every runtime backend shares; one test per promise of the interface."""

    model_dir: Path
    model_2_dir: Path

    @abstractmethod
    async def make_backend(self) -> RuntimeBackend:
        """A fresh backend with nothing running; the suite closes it."""

    @pytest.fixture(autouse=True)
    def _models(self, tiny_model_dir: Path, tiny_model_2_dir: Path) -> None:
        self.model_dir = tiny_model_dir
        self.model_2_dir = tiny_model_2_dir

    def revision_spec(
        self,
        revision_id: str,
        *,
        replicas: int = 1,
        model_dir: Path | None = None,
        priority: str = "normal",
    ) -> RevisionSpec:
        path = model_dir or self.model_dir
        return RevisionSpec(
            revision_id=revision_id,
            model_path=path,
            content_hash=content_hash(path),
            replicas=replicas,
            threads=1,
            priority=priority,
            secret=secrets.token_hex(32),
        )

    def crash_replica(self, replica: ReplicaStatus) -> None:
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGKILL)

    def replica_gone(self, replica: ReplicaStatus) -> bool:
        return replica.pid is None or not pid_alive(replica.pid)

    @asynccontextmanager
    async def running_backend(self) -> AsyncIterator[RuntimeBackend]:
        backend = await self.make_backend()
        try:
            yield backend
        finally:
            await backend.close()

    # -- tests ------------------------------------------------------------------------------

    @async_test
    async def test_started_replicas_become_ready_and_embed(self) -> None:
        spec = self.revision_spec("rev-ready", replicas=2)
        async with self.running_backend() as backend:
            await backend.start_revision(spec)
            ready = await wait_ready(backend, spec.revision_id, 2)
            assert {r.revision_id for r in ready} == {spec.revision_id}
            assert len({r.replica_id for r in ready}) == 2
            assert len({r.endpoint for r in ready}) == 2
            vectors = [await embed_probe(replica, spec) for replica in ready]
        for replica_vectors in vectors:
            assert_unit_vectors(replica_vectors, inspect_model(spec.model_path).dimension)
        np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)

    @async_test
    async def test_start_revision_is_idempotent(self) -> None:
        spec = self.revision_spec("rev-idempotent")
        async with self.running_backend() as backend:
            await backend.start_revision(spec)
            before = await wait_ready(backend, spec.revision_id, 1)
            await backend.start_revision(spec)
            after = backend.replicas(spec.revision_id)
            assert [(r.replica_id, r.pid, r.state) for r in after] == [
                (r.replica_id, r.pid, r.state) for r in before
            ]
            assert backend.revisions() == [spec.revision_id]
            assert backend.running() == {spec.revision_id: spec}  # what the reconciler compares

    # Whether a running revision's new spec keeps a ready replica throughout (the new replicas
    # start beside the old ones); Ray's backend stops the old application first.
    hands_over = True

    @async_test
    async def test_a_priority_change_starts_the_replicas_again(self) -> None:
        """A staged (low-priority) revision that is promoted comes back fresh at normal
        priority: the backend reports the priority it runs, and a new one restarts it; where
        the backend hands over, the old replica serves until the new one is ready."""
        low = self.revision_spec("rev-staged", priority="low")
        normal = replace(low, priority="normal")
        async with self.running_backend() as backend:
            await backend.start_revision(low)
            (before,) = await wait_ready(backend, low.revision_id, 1)
            assert backend.running() == {low.revision_id: low}
            assert_unit_vectors(await embed_probe(before, low), None)
            await backend.start_revision(normal)
            assert backend.running() == {low.revision_id: normal}
            ready_counts: list[int] = []

            def replaced() -> bool:
                ready = backend.ready_replicas(low.revision_id)
                ready_counts.append(len(ready))
                fresh = [r for r in ready if identity(r) != identity(before)]
                return bool(fresh) and self.replica_gone(before) and len(ready) == 1

            await wait_until(replaced, interval_s=0.01, what="a fresh replica, the old one gone")
            if self.hands_over:
                assert min(ready_counts) >= 1, ready_counts
            (after,) = backend.ready_replicas(low.revision_id)
            assert identity(after) != identity(before)
            assert_unit_vectors(await embed_probe(after, normal), None)

    async def settled(self, backend: RuntimeBackend, revision_id: str) -> None:  # noqa: B027
        """Wait until the backend has finished changing the revision's replicas (Ray: Serve
        reports its deployment healthy at the wanted count); the count's change is awaited
        (the local and fake runtimes) or its replicas reported at once otherwise."""

    @async_test
    async def test_a_count_change_scales_in_place(self) -> None:
        """1 → 2 → 1, as the autoscaler asks: a replica is added beside the running one, which
        never restarts; on the way down one of the two reports STOPPING (routers move away)
        before it goes, the other serves on; a ready replica at every moment."""
        spec = self.revision_spec("rev-scale")
        two = replace(spec, replicas=2)
        async with self.running_backend() as backend:
            seen: list[list[ReplicaState]] = []
            backend.subscribe(lambda rid: seen.append([r.state for r in backend.replicas(rid)]))
            await backend.start_revision(spec)
            (first,) = await wait_ready(backend, spec.revision_id, 1)
            ready_counts: list[int] = []
            watching = asyncio.create_task(watch_ready(backend, spec.revision_id, ready_counts))
            try:
                await backend.start_revision(two)
                assert backend.running() == {spec.revision_id: two}
                await wait_ready(backend, spec.revision_id, 2)
                await self.settled(backend, spec.revision_id)
                both = backend.ready_replicas(spec.revision_id)
                assert identity(first) in {identity(r) for r in both}  # not restarted
                assert len(both) == 2 and all(r.restarts == 0 for r in both), both
                for replica in both:
                    assert_unit_vectors(await embed_probe(replica, spec), None)

                seen.clear()
                await backend.start_revision(spec)
                assert backend.running() == {spec.revision_id: spec}

                def one_left() -> bool:
                    replicas = backend.replicas(spec.revision_id)
                    return len(replicas) == 1 and replicas[0].state.is_ready()

                await wait_until(one_left, deadline_s=READY_DEADLINE_S, what="one replica left")
                await self.settled(backend, spec.revision_id)
                (left,) = backend.replicas(spec.revision_id)
                # one of the two, not restarted
                assert identity(left) in {identity(r) for r in both} and left.restarts == 0
                (gone,) = [r for r in both if identity(r) != identity(left)]
                await wait_until(lambda: self.replica_gone(gone), what="the surplus to exit")
            finally:
                watching.cancel()
            assert backend.replicas(spec.revision_id) == [left]
            # drained first: reported STOPPING beside the ready one before it went
            assert [ReplicaState.READY, ReplicaState.STOPPING] in [sorted(s) for s in seen]
            assert ready_counts and min(ready_counts) >= 1, ready_counts
            assert_unit_vectors(await embed_probe(left, spec), None)

    @async_test
    async def test_unknown_revision_has_no_replicas(self) -> None:
        async with self.running_backend() as backend:
            assert backend.replicas("rev-unknown") == []
            assert backend.ready_replicas("rev-unknown") == []
            assert backend.revisions() == [] and backend.running() == {}
            await backend.stop_revision("rev-unknown")  # stopping nothing is harmless
            assert backend.revisions() == []

    @async_test
    async def test_two_revisions_run_side_by_side(self) -> None:
        blue = self.revision_spec("rev-blue")
        green = self.revision_spec("rev-green", model_dir=self.model_2_dir)
        async with self.running_backend() as backend:
            await backend.start_revision(blue)
            await backend.start_revision(green)
            (blue_replica,) = await wait_ready(backend, blue.revision_id, 1)
            (green_replica,) = await wait_ready(backend, green.revision_id, 1)
            assert sorted(backend.revisions()) == ["rev-blue", "rev-green"]
            assert blue_replica.endpoint != green_replica.endpoint
            blue_vectors = await embed_probe(blue_replica, blue)
            green_vectors = await embed_probe(green_replica, green)
        assert (blue_vectors * green_vectors).sum(axis=1).mean() < 0.9  # each serves its model

    @async_test
    async def test_stop_revision_stops_its_replicas_only(self) -> None:
        blue = self.revision_spec("rev-blue")
        green = self.revision_spec("rev-green")
        async with self.running_backend() as backend:
            await backend.start_revision(blue)
            await backend.start_revision(green)
            blue_replicas = await wait_ready(backend, blue.revision_id, 1)
            await wait_ready(backend, green.revision_id, 1)
            await backend.stop_revision(blue.revision_id)
            assert backend.replicas(blue.revision_id) == []
            assert backend.revisions() == [green.revision_id]
            assert backend.running() == {green.revision_id: green}
            await wait_until(
                lambda: all(self.replica_gone(r) for r in blue_replicas),
                what="the stopped replicas' processes to exit",
            )
            (green_replica,) = backend.ready_replicas(green.revision_id)
            assert_unit_vectors(await embed_probe(green_replica, green), None)

    @async_test
    async def test_crashed_replica_is_restarted(self) -> None:
        spec = self.revision_spec("rev-crash")
        async with self.running_backend() as backend:
            await backend.start_revision(spec)
            (crashed,) = await wait_ready(backend, spec.revision_id, 1)
            self.crash_replica(crashed)

            def restarted() -> bool:
                replicas = backend.ready_replicas(spec.revision_id)
                return bool(replicas) and replicas[0].restarts > crashed.restarts

            await wait_until(restarted, deadline_s=READY_DEADLINE_S, what="a restarted replica")
            (replica,) = backend.ready_replicas(spec.revision_id)
            assert replica.replica_id == crashed.replica_id
            assert replica.restarts > crashed.restarts
            assert self.replica_gone(crashed)
            assert_unit_vectors(await embed_probe(replica, spec), None)

    @async_test
    async def test_listeners_hear_of_every_change(self) -> None:
        spec = self.revision_spec("rev-listened")
        changes: list[str] = []
        async with self.running_backend() as backend:
            backend.subscribe(changes.append)
            await backend.start_revision(spec)
            await wait_ready(backend, spec.revision_id, 1)
            assert changes and set(changes) == {spec.revision_id}
            changes.clear()
            await backend.stop_revision(spec.revision_id)
            await wait_until(lambda: bool(changes), what="a change after the stop")
            assert set(changes) == {spec.revision_id}

    @async_test
    async def test_close_stops_every_revision(self) -> None:
        blue = self.revision_spec("rev-blue")
        green = self.revision_spec("rev-green")
        async with self.running_backend() as backend:
            await backend.start_revision(blue)
            await backend.start_revision(green)
            replicas = [
                *await wait_ready(backend, blue.revision_id, 1),
                *await wait_ready(backend, green.revision_id, 1),
            ]
            await backend.close()
            assert backend.revisions() == []
            assert backend.replicas(blue.revision_id) == []
            await wait_until(
                lambda: all(self.replica_gone(r) for r in replicas),
                what="every replica process to exit",
            )
        # leaving the block closes the backend a second time: that must be harmless


async def watch_ready(backend: RuntimeBackend, revision_id: str, counts: list[int]) -> None:
    """Sample the revision's ready replicas every 10 ms into `counts` until cancelled."""
    while True:
        counts.append(len(backend.ready_replicas(revision_id)))
        await asyncio.sleep(0.01)


def identity(replica: ReplicaStatus) -> tuple[object, ...]:
    return replica.replica_id, replica.pid, replica.endpoint


async def wait_ready(backend: RuntimeBackend, revision_id: str, count: int) -> list[ReplicaStatus]:
    """The revision's replicas once `count` of them are ready (fails fast on a stopped one)."""

    def ready() -> bool:
        replicas = backend.replicas(revision_id)
        assert all(r.state is not ReplicaState.STOPPED for r in replicas), replicas
        return len(backend.ready_replicas(revision_id)) == count

    await wait_until(ready, deadline_s=READY_DEADLINE_S, what=f"{count} ready replicas")
    replicas = backend.ready_replicas(revision_id)
    for replica in replicas:
        assert replica.endpoint is not None
        assert replica.endpoint[0] == "127.0.0.1"
    return replicas


def tokenize(model_dir: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    encodings = tokenizer.encode_batch(texts)
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    return lengths, np.concatenate([np.array(e.ids, dtype=np.int64) for e in encodings])


async def embed_probe(replica: ReplicaStatus, spec: RevisionSpec) -> np.ndarray:
    """The probe texts embedded by one replica, over the protocol with the revision's secret."""
    assert replica.endpoint is not None
    client = ReplicaClient(*replica.endpoint, spec.secret)
    try:
        return await client.embed(*tokenize(spec.model_path, PROBE_TEXTS))
    finally:
        await client.close()


def assert_unit_vectors(vectors: np.ndarray, dimension: int | None) -> None:
    assert vectors.shape[0] == len(PROBE_TEXTS)
    if dimension is not None:
        assert vectors.shape[1] == dimension
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
