"""The green rollout end to end in one process: store (SQLite and PostgreSQL), fake runtime with
real ONNX engines, the supervisor's reconcile loop, the router following the store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import async_test, wait_until
from plane import MODEL, ControlPlane, control_plane, embed, steps_by_name

from greenroom.errors import ModelNotFoundError
from greenroom.rollout import runner as runner_module
from greenroom.store.db import Store

__all__ = ["MODEL", "ControlPlane", "embed"]  # test_rollout_ray runs the same plane on Ray


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
        await wait_until(lambda: plane.router.live(MODEL) is None, what="the router to drop it")
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
        await wait_until(
            lambda: steps_by_name(plane.task(task_id)).get("start_green") == "running",
            what="start_green to run",
        )
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


@async_test
async def test_a_worker_dying_after_a_failed_step_is_rolled_back_by_the_next(
    store: Store,
    onnx_cache_dir: Path,
    tmp_path: Path,
    paths: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        blue = (await plane.deploy()).task_metadata["revision_id"]
        plane.point_model_at(paths[0], quantization="int8")
        plane.runtime.engine_factory = broken_engine
        real_roll_back = runner_module.steps.roll_back

        async def dies_while_rolling_back(ctx: Any, reason: str) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(runner_module.steps, "roll_back", dies_while_rolling_back)
        task_id = plane.run_task("deploy")
        first_worker = asyncio.create_task(plane.runner(task_id))
        await wait_until(
            lambda: steps_by_name(plane.task(task_id)).get("start_green") == "failed",
            what="start_green to fail",
        )
        first_worker.cancel()  # the worker dies between the failure and the roll back
        with contextlib.suppress(asyncio.CancelledError):
            await first_worker
        assert plane.task(task_id).status == "processing"
        failed_step = start_green_record(plane.task(task_id))
        monkeypatch.setattr(runner_module.steps, "roll_back", real_roll_back)

        await plane.runner(task_id)  # the next worker rolls back instead of starting green again

        task = plane.task(task_id)
        assert task.status == "failed"
        assert "weights are corrupt" in (task.detail or "")
        assert steps_by_name(task)["smoke_test"] == "pending"  # nothing after the failure ran
        assert start_green_record(task) == failed_step  # not run a second time
        green = plane.revision(task.task_metadata["revision_id"])
        assert green.phase == "Failed" and green.desired_replicas == 0
        assert plane.live_revision() == blue
        await embed(plane)


def start_green_record(task: Any) -> tuple[str, str]:
    """When start_green started and how it failed (a second run would start it anew)."""
    step = next(step for step in task.task_metadata["steps"] if step["name"] == "start_green")
    return step["started_at"], step["message"]


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


@async_test
async def test_replicas_down_turn_degraded_then_lost_and_recover(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path, auto_restart=False) as plane:
        plane.point_model_at(paths[0], replicas=2)
        revision_id = (await plane.deploy()).task_metadata["revision_id"]
        await plane.runtime.crash(f"{revision_id}-0")
        await wait_until(lambda: plane.revision(revision_id).phase == "Degraded", what="Degraded")
        assert "1 of 2 replicas ready" in plane.revision(revision_id).phase_message
        assert plane.deployments()[-1].status == "READY"  # one replica still serves
        await plane.runtime.crash(f"{revision_id}-1")
        await wait_until(lambda: plane.deployments()[-1].status == "LOST", what="LOST")
        assert (
            "Every replica of the live revision is down" in plane.deployments()[-1].status_message
        )
        await plane.runtime.restart(f"{revision_id}-0")
        await plane.runtime.restart(f"{revision_id}-1")
        await wait_until(lambda: plane.deployments()[-1].status == "READY", what="READY again")
        await wait_until(lambda: plane.revision(revision_id).phase == "Running", what="Running")
        statuses = [entry["status"] for entry in plane.deployments()[-1].status_history]
        assert statuses[-2:] == ["LOST", "READY"]


@async_test
async def test_test_crash_at_kills_the_process_right_after_the_step_is_recorded(
    store: Store,
    onnx_cache_dir: Path,
    tmp_path: Path,
    paths: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Settings.test_crash_at` (test only): SIGKILL right after `deploy:start_green` is recorded
    done in the store, before smoke_test starts. The kill is recorded here instead of done."""
    kills: list[dict[str, str]] = []
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        task_id = plane.run_task("deploy")

        def kill(pid: int, signum: int) -> None:
            assert (pid, signum) == (os.getpid(), signal.SIGKILL)
            kills.append(steps_by_name(plane.task(task_id)))

        monkeypatch.setattr(runner_module.os, "kill", kill)
        plane.runner.settings = plane.runner.settings.model_copy(
            update={"test_crash_at": "deploy:start_green"}
        )
        await plane.runner(task_id)
        assert len(kills) == 1
        assert kills[0]["start_green"] == "done" and kills[0]["smoke_test"] == "pending"
        assert plane.task(task_id).status == "done"  # the kill was only recorded
        await plane.runner(plane.run_task("delete"))  # another kind: no kill
        assert len(kills) == 1
