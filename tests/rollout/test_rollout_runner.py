"""The green rollout end to end in one process: store (SQLite and PostgreSQL), fake runtime with
real ONNX engines, the supervisor's reconcile loop, the router following the store."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import async_test
from sqlalchemy import select

from greenroom.config import Settings
from greenroom.deployments.models import Deployment, DeploymentConfig
from greenroom.errors import ModelNotFoundError
from greenroom.metrics import Metrics
from greenroom.registry.models import EmbeddingModel
from greenroom.registry.weights import content_hash, inspect_model
from greenroom.rollout.runner import TaskRunner
from greenroom.runtime.fake import FakeRuntime, real_engines
from greenroom.runtime.reconcile import Reconciler
from greenroom.serving.router import Router
from greenroom.serving.sync import RouterSync
from greenroom.signals import Signals
from greenroom.store.db import Store
from greenroom.tasks.models import Task
from greenroom.workloads.models import LiveRevision, Revision

MODEL = "model-a"


@dataclass
class ControlPlane:
    store: Store
    runtime: FakeRuntime
    router: Router
    runner: TaskRunner

    def run_task(self, kind: str, **metadata: Any) -> str:
        task_id = f"{kind}-{uuid.uuid4().hex}"
        with self.store.session_scope() as session:
            session.add(
                Task(
                    id=task_id,
                    kind=kind,
                    embedding_model_id=MODEL,
                    status="processing",
                    task_metadata={"initiated_by": "test", "workspace": "default", **metadata},
                )
            )
        return task_id

    async def deploy(self, **metadata: Any) -> Task:
        task_id = self.run_task("deploy", **metadata)
        await self.runner(task_id)
        return self.task(task_id)

    async def delete(self) -> Task:
        task_id = self.run_task("delete")
        await self.runner(task_id)
        return self.task(task_id)

    def task(self, task_id: str) -> Task:
        with self.store.session_scope() as session:
            task = session.get(Task, task_id)
            assert task is not None
            return task

    def live_revision(self) -> str | None:
        with self.store.session_scope() as session:
            live = session.get(LiveRevision, MODEL)
            return live.revision_id if live else None

    def revision(self, revision_id: str) -> Revision:
        with self.store.session_scope() as session:
            revision = session.get(Revision, revision_id)
            assert revision is not None
            return revision

    def deployments(self) -> list[Deployment]:
        with self.store.session_scope() as session:
            return list(
                session.scalars(select(Deployment).order_by(Deployment.entity_version)).all()
            )

    def point_model_at(self, path: Path, **config: Any) -> None:
        """Register or re-point the model (new weights), and add a config version."""
        info = inspect_model(path)
        with self.store.session_scope() as session:
            model = session.get(EmbeddingModel, MODEL) or EmbeddingModel(id=MODEL)
            model.source = model.path = str(path)
            model.content_hash = content_hash(path)
            model.dimension, model.max_seq_length = info.dimension, info.max_seq_length
            model.pooling, model.normalize = info.pooling, info.normalize
            session.add(model)
            versions = session.scalars(
                select(DeploymentConfig.entity_version).where(DeploymentConfig.name == MODEL)
            ).all()
            if config or not versions:
                session.add(
                    DeploymentConfig(
                        workspace="default",
                        name=MODEL,
                        entity_version=max(versions, default=0) + 1,
                        model_name=MODEL,
                        executor_config={"threads": 1, **config},
                    )
                )


@contextlib.asynccontextmanager
async def control_plane(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, *, auto_restart: bool = True
) -> AsyncIterator[ControlPlane]:
    settings = Settings(data_dir=tmp_path, drain_grace_s=5, rollout_ready_timeout_s=60)
    signals = Signals()
    runtime = FakeRuntime(real_engines(onnx_cache_dir), auto_restart=auto_restart)
    metrics = Metrics()
    router = Router(runtime, metrics, settings)
    loops = [
        asyncio.create_task(
            Reconciler(store, runtime, signals, target="local", lost_after_s=0.3).run()
        ),
        asyncio.create_task(RouterSync(store, router, signals).run()),
    ]
    try:
        yield ControlPlane(store, runtime, router, TaskRunner(store, signals, settings, metrics))
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await router.close()
        await runtime.close()


def steps_by_name(task: Task) -> dict[str, str]:
    return {step["name"]: step["status"] for step in task.task_metadata.get("steps", [])}


async def embed(plane: ControlPlane, text: str = "hello world") -> np.ndarray:
    for _ in range(100):  # the router follows the store within a second
        with contextlib.suppress(ModelNotFoundError):
            return (await plane.router.embed(MODEL, [text])).vectors[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the model is not served")


@pytest.fixture
def paths(tiny_model_dir: Path, tiny_model_2_dir: Path) -> tuple[Path, Path]:
    return tiny_model_dir, tiny_model_2_dir


@async_test
async def test_first_deploy_rolls_out_and_serves(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        task = await plane.deploy()
        assert task.status == "done", task.detail
        assert task.task_metadata["result"] == "rolled_out"
        assert steps_by_name(task) == {
            "snapshot": "done",
            "start_green": "done",
            "smoke_test": "done",
            "compatibility_gate": "skipped",
            "switch": "done",
            "drain_blue": "skipped",
            "finish": "done",
        }
        assert all(s["duration_ms"] is not None for s in task.task_metadata["steps"])
        revision_id = task.task_metadata["revision_id"]
        assert plane.live_revision() == revision_id
        assert plane.revision(revision_id).phase == "Running"
        (deployment,) = plane.deployments()
        assert deployment.status == "READY" and deployment.revision_id == revision_id
        history = [entry["status_message"] for entry in deployment.status_history]
        assert history[0] == "Deployment created" and "start_green done in" in " ".join(history)
        assert (await embed(plane)).shape == (32,)


@async_test
async def test_config_change_switches_and_retires_blue(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        blue = (await plane.deploy()).task_metadata["revision_id"]
        plane.point_model_at(paths[0], max_batch_size=16)
        task = await plane.deploy()
        assert task.status == "done", task.detail
        green = task.task_metadata["revision_id"]
        assert green != blue and plane.live_revision() == green
        assert task.task_metadata["compatibility"]["reindex_required"] is False
        assert task.task_metadata["compatibility"]["mean_cosine"] > 0.999
        retired = plane.revision(blue)
        assert retired.phase == "Stopped" and retired.deleted_at is not None
        assert plane.runtime.replicas(blue) == []
        assert [d.entity_version for d in plane.deployments()] == [1, 2]
        await embed(plane)


@async_test
async def test_deploying_what_is_live_is_unchanged(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        first = await plane.deploy()
        again = await plane.deploy()
        assert again.status == "done"
        assert again.task_metadata["result"] == "unchanged"
        assert again.task_metadata["revision_id"] == first.task_metadata["revision_id"]
        assert len(plane.deployments()) == 1


@async_test
async def test_an_incompatible_model_fails_and_blue_keeps_serving(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        blue = (await plane.deploy()).task_metadata["revision_id"]
        before = await embed(plane)
        plane.point_model_at(paths[1])
        task = await plane.deploy()
        assert task.status == "failed"
        assert "not comparable" in task.detail and "allow_embedding_space_change" in task.detail
        assert steps_by_name(task)["compatibility_gate"] == "failed"
        assert task.task_metadata["compatibility"]["reindex_required"] is True
        assert plane.live_revision() == blue
        green = plane.revision(task.task_metadata["revision_id"])
        assert green.phase == "Failed" and green.deleted_at is not None
        assert plane.deployments()[-1].status == "ERROR"
        np.testing.assert_allclose(await embed(plane), before, rtol=1e-5)

        allowed = await plane.deploy(allow_embedding_space_change=True)
        assert allowed.status == "done", allowed.detail
        assert allowed.task_metadata["compatibility"]["reindex_required"] is True
        assert plane.live_revision() == allowed.task_metadata["revision_id"]
        after = await embed(plane)
        assert float(after @ before) < 0.99


@async_test
async def test_delete_withdraws_the_model(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        revision_id = (await plane.deploy()).task_metadata["revision_id"]
        await embed(plane)
        task = await plane.delete()
        assert task.status == "done", task.detail
        assert plane.live_revision() is None
        assert plane.revision(revision_id).phase == "Stopped"
        assert plane.deployments()[-1].status == "DELETED"
        for _ in range(40):
            if plane.router.live(MODEL) is None:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(ModelNotFoundError):
            await plane.router.embed(MODEL, ["x"])


@async_test
async def test_a_worker_dying_mid_rollout_is_resumed_by_the_next(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        plane.runtime.ready_gate.clear()  # green's replicas will not turn ready
        task_id = plane.run_task("deploy")
        first_worker = asyncio.create_task(plane.runner(task_id))
        for _ in range(200):
            if steps_by_name(plane.task(task_id)).get("start_green") == "running":
                break
            await asyncio.sleep(0.05)
        first_worker.cancel()  # the worker dies in the middle of start_green
        with contextlib.suppress(asyncio.CancelledError):
            await first_worker
        assert plane.task(task_id).status == "processing"
        plane.runtime.ready_gate.set()
        await plane.runner(task_id)  # another worker took the lease over
        task = plane.task(task_id)
        assert task.status == "done", task.detail
        assert len(plane.deployments()) == 1  # the snapshot was not taken twice
        await embed(plane)


@async_test
async def test_green_that_cannot_start_fails_before_the_switch(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        blue = (await plane.deploy()).task_metadata["revision_id"]
        plane.point_model_at(paths[0], quantization="int8")
        plane.runtime.engine_factory = broken_engine
        task = await plane.deploy()
        assert task.status == "failed"
        assert steps_by_name(task)["start_green"] == "failed"
        assert plane.live_revision() == blue
        await embed(plane)


def broken_engine(spec: Any) -> Any:
    raise RuntimeError("weights are corrupt")


@async_test
async def test_requests_keep_succeeding_through_a_switch(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        await plane.deploy()
        await embed(plane)
        stop = asyncio.Event()
        results: list[str] = []

        async def client() -> None:
            while not stop.is_set():
                try:
                    await plane.router.embed(MODEL, ["steady traffic"])
                    results.append("ok")
                except Exception as exc:
                    results.append(repr(exc))

        clients = [asyncio.create_task(client()) for _ in range(4)]
        for batch_size in (16, 8):
            plane.point_model_at(paths[0], max_batch_size=batch_size)
            assert (await plane.deploy()).status == "done"
        stop.set()
        await asyncio.gather(*clients)
        assert results and set(results) == {"ok"}


async def wait_for_state(check: Any, what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen")


@async_test
async def test_replicas_down_turn_degraded_then_lost_and_recover(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path, auto_restart=False) as plane:
        plane.point_model_at(paths[0], replicas=2)
        revision_id = (await plane.deploy()).task_metadata["revision_id"]
        await plane.runtime.crash(f"{revision_id}-0")
        await wait_for_state(lambda: plane.revision(revision_id).phase == "Degraded", "Degraded")
        assert "1 of 2 replicas ready" in plane.revision(revision_id).phase_message
        assert plane.deployments()[-1].status == "READY"  # one replica still serves
        await plane.runtime.crash(f"{revision_id}-1")
        await wait_for_state(lambda: plane.deployments()[-1].status == "LOST", "LOST")
        assert (
            "Every replica of the live revision is down" in plane.deployments()[-1].status_message
        )
        await plane.runtime.restart(f"{revision_id}-0")
        await plane.runtime.restart(f"{revision_id}-1")
        await wait_for_state(lambda: plane.deployments()[-1].status == "READY", "READY again")
        await wait_for_state(lambda: plane.revision(revision_id).phase == "Running", "Running")
        statuses = [entry["status"] for entry in plane.deployments()[-1].status_history]
        assert statuses[-2:] == ["LOST", "READY"]
