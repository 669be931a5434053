"""The runtime conformance suite against the Ray Serve backend, on the session's private Ray."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("ray")

import numpy as np
import ray
from conformance import (
    PROBE_TEXTS,
    READY_DEADLINE_S,
    RuntimeConformance,
    embed_probe,
    tokenize,
    wait_ready,
)
from helpers import async_test, pid_alive, wait_until
from ray import serve

from greenroom.config import Settings
from greenroom.registry.weights import content_hash
from greenroom.runtime.base import (
    ReplicaState,
    ReplicaStatus,
    RevisionSpec,
    RuntimeBackend,
)
from greenroom.runtime.ray import (
    ACTOR_PREFIX,
    DEPLOYMENT,
    SERVE_NAMESPACE,
    RayRuntime,
    Slot,
    app_name,
    assign,
)
from greenroom.runtime.ray_replica import GreenroomReplica

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from ray_transports import ServeHandleClient, TransportReplica  # bench/: not in src/

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]
SECRET = "5e" * 32


def ray_runtime(
    data_dir: Path, onnx_cache_dir: Path, replica_class: type[GreenroomReplica] = GreenroomReplica
) -> RayRuntime:
    runtime = RayRuntime(
        Settings(data_dir=data_dir, runtime="ray", replica_stop_grace_s=2.0),
        poll_interval_s=0.2,
        keep_applications=False,
        replica_class=replica_class,
    )
    runtime.onnx_cache_dir = onnx_cache_dir
    return runtime


class TestRayRuntimeConformance(RuntimeConformance):
    hands_over = False  # a new spec redeploys the Serve application: stopped, then started

    @pytest.fixture(autouse=True)
    def _dirs(self, tmp_path: Path, onnx_cache_dir: Path) -> None:
        self.data_dir = tmp_path / "data"
        self.onnx_cache_dir = onnx_cache_dir

    async def make_backend(self) -> RuntimeBackend:
        return ray_runtime(self.data_dir, self.onnx_cache_dir)

    def crash_replica(self, replica: ReplicaStatus) -> None:
        """Kill the Serve replica's actor, as a dying node would; Serve starts another."""
        for name in ray.util.list_named_actors(all_namespaces=True):
            actor = name["name"] if isinstance(name, dict) else name
            if actor.startswith(f"{ACTOR_PREFIX}{app_name(replica.revision_id)}#"):
                ray.kill(ray.get_actor(actor, namespace=SERVE_NAMESPACE), no_restart=True)
                return
        raise AssertionError(f"no Serve replica actor for {replica.replica_id}")

    def replica_gone(self, replica: ReplicaStatus) -> bool:
        return replica.pid is None or not pid_alive(replica.pid)

    async def settled(self, backend: RuntimeBackend, revision_id: str) -> None:
        """Serve reports the revision's deployment HEALTHY: at its wanted count, with no
        replica still being started, replaced (a code update) or stopped."""

        def healthy() -> bool:
            app = serve.status().applications.get(app_name(revision_id))
            deployment = app.deployments.get(DEPLOYMENT) if app else None
            return deployment is not None and deployment.status == "HEALTHY"

        await wait_until(healthy, deadline_s=READY_DEADLINE_S, what="a healthy deployment")


@async_test
async def test_serve_handle_transport_embeds_like_the_protocol(
    tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path
) -> None:
    runtime = ray_runtime(tmp_path, onnx_cache_dir, TransportReplica)
    spec = RevisionSpec(
        "rev-handle", tiny_model_dir, content_hash(tiny_model_dir), threads=1, secret=SECRET
    )
    try:
        await runtime.start_revision(spec)
        (replica,) = await wait_ready(runtime, spec.revision_id, 1)
        over_protocol = await embed_probe(replica, spec)
        client = ServeHandleClient(spec.revision_id)
        over_handle = await client.embed(*tokenize(tiny_model_dir, PROBE_TEXTS))
        await client.close()
        np.testing.assert_allclose(over_handle, over_protocol, atol=1e-6)
    finally:
        await runtime.close()


@async_test
async def test_a_new_backend_adopts_running_applications(
    tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path
) -> None:
    """What an external cluster gives a restarted `greenroom serve`: its revisions, as they run."""
    spec = RevisionSpec(
        "rev-adopted",
        tiny_model_dir,
        content_hash(tiny_model_dir),
        threads=1,
        priority="low",  # a staged revision's: adopted as it runs, never redeployed for it
        secret=SECRET,
    )
    first = ray_runtime(tmp_path, onnx_cache_dir)
    first.keep_applications = True
    await first.start_revision(spec)
    (before,) = await wait_ready(first, spec.revision_id, 1)
    await first.close()
    second = ray_runtime(tmp_path, onnx_cache_dir)
    try:
        await second.open()
        assert second.revisions() == [spec.revision_id]
        assert second.running() == {spec.revision_id: spec}  # the same spec, less its secret
        (after,) = await wait_ready(second, spec.revision_id, 1)
        await second.start_revision(spec)  # the same spec: nothing restarts
        assert (after.pid, after.port) == (before.pid, before.port)
        assert [r.pid for r in second.ready_replicas(spec.revision_id)] == [before.pid]
    finally:
        await second.close()


def test_slots_keep_their_ids_and_count_replacements() -> None:
    slots = [Slot(ReplicaStatus(f"r-{i}", "r", ReplicaState.STARTING)) for i in range(2)]
    endpoint = {"host": "127.0.0.1", "port": 1, "pid": 10}
    assign(slots, {"a", "b"}, {"a": endpoint}, ("DEPLOYING", ""))
    assert [s.status.state for s in slots] == [ReplicaState.READY, ReplicaState.STARTING]
    assign(slots, {"b"}, {"b": {**endpoint, "port": 2}}, ("RUNNING", ""))
    assert slots[0].status.state is ReplicaState.BACKOFF
    assert slots[1].status.port == 2
    assign(slots, {"b", "c"}, {"b": endpoint, "c": {**endpoint, "port": 3}}, ("RUNNING", ""))
    assert slots[0].status.replica_id == "r-0"
    assert (slots[0].status.port, slots[0].status.restarts) == (3, 1)
    assert slots[1].status.restarts == 0
    assign(slots, set(), {}, ("DEPLOY_FAILED", "constructor raised"))
    assert {s.status.message for s in slots} == {"constructor raised"}


def test_a_scale_down_drops_the_slots_whose_replicas_serve_stopped() -> None:
    """Serve picks the replica a scale-down stops; it reports itself stopping first, and its
    slot goes once it has gone, not counted as a restart; the others keep theirs."""
    endpoint = {"host": "127.0.0.1", "port": 1, "pid": 10}
    slots = [Slot(ReplicaStatus(f"r-{i}", "r", ReplicaState.STARTING)) for i in range(3)]
    alive = {"a", "b", "c"}
    endpoints = {s: {**endpoint, "port": port} for port, s in enumerate(sorted(alive), 1)}
    assign(slots, alive, endpoints, ("RUNNING", ""), wanted=3)
    assert [s.serve_id for s in slots] == ["a", "b", "c"]

    stopping = {**endpoints, "a": {**endpoints["a"], "stopping": True}}
    assign(slots, alive, stopping, ("RUNNING", ""), wanted=2)
    assert [s.status.state for s in slots] == [
        ReplicaState.STOPPING,
        ReplicaState.READY,
        ReplicaState.READY,
    ]
    assert slots[0].status.endpoint is None  # routers send it nothing more

    assign(slots, {"b", "c"}, endpoints, ("RUNNING", ""), wanted=2)
    assert [s.status.replica_id for s in slots] == ["r-1", "r-2"]
    assert all(s.status.state is ReplicaState.READY and s.status.restarts == 0 for s in slots)

    # a scale-up reversed before its replica started: the empty slot goes
    slots.append(Slot(ReplicaStatus("r-3", "r", ReplicaState.STARTING)))
    assign(slots, {"b", "c"}, endpoints, ("RUNNING", ""), wanted=2)
    assert [s.status.replica_id for s in slots] == ["r-1", "r-2"]


def test_a_scale_up_ray_cannot_place_is_refused_with_a_reason(
    tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path
) -> None:
    runtime = ray_runtime(tmp_path, onnx_cache_dir)
    runtime.settings.ray_replica_num_cpus = 0.5
    spec = RevisionSpec("rev-cpu", tiny_model_dir, content_hash(tiny_model_dir), secret=SECRET)
    assert runtime.scale_up_refusal(spec, 1) is None  # not polled yet: nothing to go by
    runtime._free = {"CPU": 1.0, "memory": 1e12}
    assert runtime.scale_up_refusal(spec, 2) is None
    reason = runtime.scale_up_refusal(spec, 3)
    assert reason == (
        "Not scaled up by 3 replica(s): they ask Ray for 1.5 CPU and the cluster has 1 free."
    )
    gpu = replace(spec, gpu=1)
    reason = runtime.scale_up_refusal(gpu, 1)
    assert reason is not None and "1 GPU" in reason and "0 free" in reason
