"""The green rollout under load on the Ray Serve backend: 0 failed requests through two switches."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytest.importorskip("ray")

from helpers import async_test
from test_rollout_runner import MODEL, ControlPlane, embed

from greenroom.config import Settings
from greenroom.metrics import Metrics
from greenroom.rollout.runner import TaskRunner
from greenroom.runtime.ray import RayRuntime
from greenroom.runtime.reconcile import Reconciler
from greenroom.serving.router import Router
from greenroom.serving.sync import RouterSync
from greenroom.signals import Signals
from greenroom.store.db import Store

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_cluster")]


@async_test
async def test_requests_keep_succeeding_through_a_switch_on_ray(
    sqlite_store: Store, onnx_cache_dir: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path, runtime="ray", drain_grace_s=5, rollout_ready_timeout_s=120
    )
    signals, metrics = Signals(), Metrics()
    runtime = RayRuntime(settings, poll_interval_s=0.2, keep_applications=False)
    runtime.onnx_cache_dir = onnx_cache_dir
    router = Router(runtime, metrics, settings)
    loops = [
        asyncio.create_task(Reconciler(sqlite_store, runtime, signals, target="ray").run()),
        asyncio.create_task(RouterSync(sqlite_store, router, signals).run()),
    ]
    plane = ControlPlane(
        sqlite_store, runtime, router, TaskRunner(sqlite_store, signals, settings, metrics)
    )  # type: ignore[arg-type]
    try:
        plane.point_model_at(tiny_model_dir)
        first = await plane.deploy()
        assert first.status == "done", first.detail
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
        revisions = [first.task_metadata["revision_id"]]
        for batch_size in (16, 8):
            plane.point_model_at(tiny_model_dir, max_batch_size=batch_size)
            task = await plane.deploy()
            assert task.status == "done", task.detail
            revisions.append(task.task_metadata["revision_id"])
        stop.set()
        await asyncio.gather(*clients)
        assert results and set(results) == {"ok"}, {r for r in results if r != "ok"}
        assert runtime.revisions() == [revisions[-1]]  # blue applications were deleted
        assert plane.revision(revisions[0]).runtime == "ray"
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await router.close()
        await runtime.close()
