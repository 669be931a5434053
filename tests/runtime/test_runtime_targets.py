"""RuntimeTargets: each revision on the backend its runtime target names, the others lazily."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from conformance import RuntimeConformance
from factories import HashEngine
from helpers import async_test

from greenroom.runtime.base import ReplicaStatus, RevisionSpec, RuntimeBackend
from greenroom.runtime.fake import FakeRuntime
from greenroom.runtime.targets import RuntimeTargets


class TestRuntimeTargetsConformance(RuntimeConformance):
    """The composite behaves as one backend (every spec here targets the default, `local`)."""

    async def make_backend(self) -> RuntimeBackend:
        self.default = FakeRuntime(auto_restart=True)
        return RuntimeTargets("local", self.default, {"ray": lambda: FakeRuntime()})

    def crash_replica(self, replica: ReplicaStatus) -> None:
        import asyncio

        asyncio.get_running_loop().create_task(self.default.crash(replica.replica_id))

    def replica_gone(self, replica: ReplicaStatus) -> bool:
        assert replica.host is not None and replica.port is not None
        try:
            socket.create_connection((replica.host, replica.port), timeout=1).close()
        except OSError:
            return True
        return False


def spec(revision_id: str, runtime: str) -> RevisionSpec:
    return RevisionSpec(
        revision_id=revision_id, model_path=Path("/unused"), content_hash="0", runtime=runtime
    )


@async_test
async def test_each_revision_runs_on_its_target_and_other_backends_start_lazily() -> None:
    local = FakeRuntime(lambda s: HashEngine())
    created: list[FakeRuntime] = []

    def make_ray() -> FakeRuntime:
        created.append(FakeRuntime(lambda s: HashEngine()))
        return created[-1]

    targets = RuntimeTargets("local", local, {"ray": make_ray})
    changes: list[str] = []
    targets.subscribe(changes.append)
    try:
        await targets.start_revision(spec("on-local", "local"))
        assert created == []  # nothing asked for Ray yet
        await targets.start_revision(spec("on-ray", "ray"))
        (ray,) = created
        assert local.revisions() == ["on-local"] and ray.revisions() == ["on-ray"]
        assert sorted(targets.revisions()) == ["on-local", "on-ray"]
        assert targets.replicas("on-ray") == ray.replicas("on-ray")
        assert {"on-local", "on-ray"} <= set(changes)  # both backends' changes reach listeners
        await targets.stop_revision("on-ray")
        assert ray.revisions() == [] and targets.revisions() == ["on-local"]
        assert targets.replicas("unknown") == []
    finally:
        await targets.close()
    assert local.revisions() == [] and created[0].revisions() == []


@async_test
async def test_an_unknown_target_is_refused() -> None:
    targets = RuntimeTargets("local", FakeRuntime(lambda s: HashEngine()), {})
    try:
        await targets.start_revision(dataclasses.replace(spec("x", "local"), runtime="mars"))
    except Exception as exc:
        assert "mars" in str(exc)
    else:
        raise AssertionError("an unknown target must be refused")
    finally:
        await targets.close()
