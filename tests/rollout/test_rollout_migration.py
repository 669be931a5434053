"""An embedding migration's tasks end to end in one process (tests/rollout/plane.py): a staged
deploy, promote (raw and adapted), finish, abort (staged and adapted), the refusals at run
time, a delete while staged, and a promotion taken over at every step."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import async_test, wait_until
from plane import MODEL, ControlPlane, control_plane, embed, steps_by_name

from greenroom.errors import ModelNotFoundError, ServiceUnavailableError
from greenroom.rollout import runner as runner_module
from greenroom.rollout.plan import PROMOTE_PLAN, PROMOTE_STEPS, Step, plan_of
from greenroom.store.db import Store

STAGED_STEPS = ["snapshot", "start_green", "smoke_test", "compatibility_gate", "stage", "finish"]
IN_MIGRATION = "`model-a` is in a migration ({}): promote, finish or abort it first"


@pytest.fixture
def three(tiny_model_dir: Path, tiny_model_2_dir: Path, tiny_model_3_dir: Path) -> list[Path]:
    """tiny-1 (live), tiny-2 (same tokenizer, another space), tiny-3 (48-d, another tokenizer)."""
    return [tiny_model_dir, tiny_model_2_dir, tiny_model_3_dir]


async def live_then_staged(plane: ControlPlane, live: Path, staged: Path) -> tuple[str, str]:
    """`live` deployed, then `staged` staged beside it: (live revision, staged revision)."""
    plane.point_model_at(live)
    blue = await plane.deploy()
    assert blue.status == "done", blue.detail
    await embed(plane)
    plane.point_model_at(staged)
    task = await plane.stage()
    assert task.status == "done", task.detail
    return blue.task_metadata["revision_id"], task.task_metadata["revision_id"]


async def embed_pinned(plane: ControlPlane, name: str, text: str = "hello world") -> np.ndarray:
    """The vector of `text` under a (pinned) name, once the router answers it."""
    vectors: list[np.ndarray] = []

    async def answered() -> bool:
        with contextlib.suppress(ModelNotFoundError, ServiceUnavailableError):
            vectors.append((await plane.router.embed(name, [text])).vectors[0])
            return True
        return False

    await wait_until(answered, what=f"{name} to be served")
    return vectors[-1]


async def not_served(plane: ControlPlane, name: str) -> None:
    async def gone() -> bool:
        try:
            await plane.router.embed(name, ["x"])
        except ModelNotFoundError:
            return True
        return False

    await wait_until(gone, what=f"{name} to be gone")


def version_of(plane: ControlPlane, revision_id: str) -> Any:
    return next(d for d in plane.deployments() if d.revision_id == revision_id)


# ----- staged deploy -----------------------------------------------------------------------------


@async_test
async def test_a_staged_deploy_comes_up_beside_the_live_revision_without_traffic(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(three[0])
        blue = (await plane.deploy()).task_metadata["revision_id"]
        before = await embed(plane)
        plane.point_model_at(three[2])
        task = await plane.stage()
        assert task.status == "done", task.detail
        meta = task.task_metadata
        assert meta["result"] == "staged" and meta["strategy"] == "staged"
        assert list(steps_by_name(task)) == STAGED_STEPS
        assert set(steps_by_name(task).values()) == {"done"}
        # measured (different dimensions), recorded, and no failure
        assert meta["compatibility"]["reindex_required"] is True
        staged = meta["revision_id"]
        assert meta["previous_revision_id"] == blue
        assert plane.live_revision() == blue
        assert plane.migration() == ("staged", staged, None)
        revision = plane.revision(staged)
        assert (revision.phase, revision.phase_message) == ("Running", "staged: no live traffic")
        assert revision.priority == "low"
        version = version_of(plane, staged)
        assert (version.status, version.status_message) == ("READY", "staged: no live traffic")
        assert plane.revision(blue).phase == "Running"
        np.testing.assert_allclose(await embed(plane), before, rtol=1e-5)
        assert (await embed_pinned(plane, f"{MODEL}@staged")).shape == (48,)
        assert (await embed_pinned(plane, f"{MODEL}@{staged}")).shape == (48,)


@async_test
async def test_a_second_staged_deploy_replaces_the_staged_revision(
    sqlite_store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    async with control_plane(sqlite_store, onnx_cache_dir, tmp_path) as plane:
        blue, first = await live_then_staged(plane, three[0], three[2])
        plane.point_model_at(three[2], max_batch_size=16)
        task = await plane.stage()
        assert task.status == "done", task.detail
        second = task.task_metadata["revision_id"]
        assert task.task_metadata["replaced_staged_revision_id"] == first
        assert plane.migration() == ("staged", second, None)
        replaced = plane.revision(first)
        assert replaced.phase == "Stopped" and replaced.deleted_at is not None
        assert replaced.phase_message == f"replaced by staged revision {second}"
        assert plane.runtime.replicas(first) == []
        assert version_of(plane, first).status_message == f"replaced by staged revision {second}"
        assert plane.live_revision() == blue


@async_test
async def test_a_plain_deploy_or_a_rollback_is_failed_at_run_time_while_staged(
    sqlite_store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    """The stage may change while a deploy waits in pending: the snapshot checks it again."""
    async with control_plane(sqlite_store, onnx_cache_dir, tmp_path) as plane:
        blue, staged = await live_then_staged(plane, three[0], three[2])
        deploys = len(plane.deployments())
        plain = await plane.deploy()
        assert plain.status == "failed"
        assert plain.detail == IN_MIGRATION.format("staged")
        assert steps_by_name(plain)["snapshot"] == "failed"
        rollback = await plane.deploy(rollback_of=blue)
        assert (rollback.status, rollback.detail) == ("failed", IN_MIGRATION.format("staged"))
        assert len(plane.deployments()) == deploys  # nothing was snapshotted
        assert plane.migration() == ("staged", staged, None)
        assert plane.live_revision() == blue


# ----- promote -----------------------------------------------------------------------------------


@async_test
async def test_a_raw_promotion_is_gated_like_a_deploy_then_switches(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        blue, staged = await live_then_staged(plane, three[0], three[1])
        refused = await plane.run("promote", mode="raw")
        assert refused.status == "failed"
        assert "not comparable" in refused.detail
        assert 'promote with "mode": "adapted"' in refused.detail
        assert refused.detail.endswith("The staged revision stays staged; the live revision "
                                       "serves as before.")  # fmt: skip
        assert steps_by_name(refused)["gate"] == "failed"
        assert steps_by_name(refused)["start_live"] == "pending"
        assert plane.migration() == ("staged", staged, None)
        assert plane.revision(staged).priority == "low"
        assert plane.live_revision() == blue

        task = await plane.run("promote", mode="raw", allow_embedding_space_change=True)
        assert task.status == "done", task.detail
        assert task.task_metadata["result"] == "promoted"
        assert list(steps_by_name(task)) == PROMOTE_STEPS
        assert set(steps_by_name(task).values()) == {"done"}
        assert task.task_metadata["compatibility"]["reindex_required"] is True
        assert (task.task_metadata["revision_id"], task.task_metadata["previous_revision_id"]) == (
            staged,
            blue,
        )
        assert plane.live_revision() == staged
        assert plane.migration()[0] == "none"
        assert plane.revision(staged).priority == "normal"
        assert plane.revision(staged).phase_message is None  # live, not "staged" any more
        retired = plane.revision(blue)
        assert retired.phase == "Stopped" and plane.runtime.replicas(blue) == []
        version = version_of(plane, staged)
        assert (version.status, version.status_message) == ("READY", "Deployment is ready")
        history = [entry["status_message"] for entry in version.status_history]
        assert "staged: no live traffic" in history
        assert "promoted (raw): live, in its own space" in history
        await not_served(plane, f"{MODEL}@staged")
        np.testing.assert_allclose(
            await embed(plane), await embed_pinned(plane, f"{MODEL}@live"), rtol=1e-5
        )


@async_test
async def test_an_adapted_promotion_then_finish(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        blue, staged = await live_then_staged(plane, three[0], three[2])
        adapter_id = plane.store_adapter(staged_id=staged)
        task = await plane.run("promote", mode="adapted")
        assert task.status == "done", task.detail
        assert task.task_metadata["adapter_id"] == adapter_id
        assert "compatibility" not in task.task_metadata
        assert "mean cosine 0.950" in task.task_metadata["steps"][0]["message"]
        assert plane.live_revision() == staged
        assert plane.migration() == ("adapted", None, blue)
        assert plane.revision(blue).phase == "Stopped"  # one model serves both spaces
        assert (await embed(plane)).shape == (32,)  # the old space, through the adapter
        assert (await embed_pinned(plane, f"{MODEL}@live")).shape == (48,)

        finished = await plane.run("finish")
        assert finished.status == "done", finished.detail
        assert finished.task_metadata["result"] == "finished"
        assert steps_by_name(finished) == {
            "switch_space": "done",
            "retire_adapter": "done",
            "finish": "done",
        }
        assert finished.task_metadata["revision_id"] == staged
        assert plane.migration() == ("none", None, None)
        assert plane.live_revision() == staged
        assert (await embed(plane)).shape == (48,)
        history = [e["status_message"] for e in version_of(plane, staged).status_history]
        assert "migration finished: live, in its own space" in history


@async_test
async def test_an_adapter_that_falls_short_is_refused_by_the_gate(
    sqlite_store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    async with control_plane(sqlite_store, onnx_cache_dir, tmp_path) as plane:
        blue, staged = await live_then_staged(plane, three[0], three[2])
        none = await plane.run("promote", mode="adapted")
        assert none.status == "failed"
        assert none.detail.startswith(f"`{MODEL}` has no adapter for its staged revision {staged}")
        plane.store_adapter(staged_id=staged, mean_cosine=0.71, overlap=0.42)
        weak = await plane.run("promote", mode="adapted")
        assert weak.status == "failed"
        assert "mean cosine 0.710 (needs 0.8), neighbour overlap@10 0.420 (needs 0.5)" in (
            weak.detail or ""
        )
        assert "The staged revision stays staged" in (weak.detail or "")
        assert plane.migration() == ("staged", staged, None)
        assert plane.live_revision() == blue


@async_test
async def test_a_promotion_failing_in_start_live_leaves_it_staged_at_low_priority(
    sqlite_store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    async with control_plane(sqlite_store, onnx_cache_dir, tmp_path) as plane:
        blue, staged = await live_then_staged(plane, three[0], three[2])
        plane.store_adapter(staged_id=staged)
        plane.runner.settings = plane.runner.settings.model_copy(
            update={"rollout_ready_timeout_s": 0.5}
        )
        plane.runtime.ready_gate.clear()  # the restarted replicas do not turn ready
        task = await plane.run("promote", mode="adapted")
        assert task.status == "failed"
        assert steps_by_name(task)["start_live"] == "failed"
        assert "did not come back at normal priority" in (task.detail or "")
        assert plane.revision(staged).priority == "low"
        assert plane.migration() == ("staged", staged, None)
        assert plane.live_revision() == blue
        plane.runtime.ready_gate.set()
        await embed_pinned(plane, f"{MODEL}@staged")  # back up, at low priority


# ----- abort -------------------------------------------------------------------------------------


@async_test
async def test_an_abort_while_staged_withdraws_the_staged_revision(
    sqlite_store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    async with control_plane(sqlite_store, onnx_cache_dir, tmp_path) as plane:
        blue, staged = await live_then_staged(plane, three[0], three[2])
        await embed_pinned(plane, f"{MODEL}@staged")
        task = await plane.run("abort", abort_of="staged")
        assert task.status == "done", task.detail
        assert task.task_metadata["result"] == "aborted"
        assert steps_by_name(task) == {"withdraw_staged": "done", "finish": "done"}
        assert task.task_metadata["revision_id"] == staged
        assert plane.migration() == ("none", None, None)
        withdrawn = plane.revision(staged)
        assert (withdrawn.phase, withdrawn.phase_message) == ("Stopped", "migration aborted")
        assert plane.live_revision() == blue and plane.revision(blue).phase == "Running"
        await not_served(plane, f"{MODEL}@staged")
        await embed(plane)
        assert "migration aborted" in version_of(plane, staged).status_message


@async_test
async def test_an_abort_after_an_adapted_promotion_brings_the_old_model_back(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        blue, staged = await live_then_staged(plane, three[0], three[2])
        before = await embed(plane)
        plane.store_adapter(staged_id=staged)
        assert (await plane.run("promote", mode="adapted")).status == "done"
        task = await plane.run(
            "abort", abort_of="adapted", rollback_of=blue, allow_embedding_space_change=True
        )
        assert task.status == "done", task.detail
        assert task.task_metadata["result"] == "aborted"
        steps = steps_by_name(task)
        assert list(steps) == [
            "snapshot",
            "start_green",
            "smoke_test",
            "compatibility_gate",
            "switch",
            "drain_blue",
            "finish",
        ]
        assert steps["compatibility_gate"] == "skipped"
        back = task.task_metadata["revision_id"]
        assert back not in (blue, staged)
        assert plane.live_revision() == back
        assert plane.migration() == ("none", None, None)
        assert plane.revision(staged).phase == "Stopped"
        np.testing.assert_allclose(await embed(plane), before, rtol=1e-5)
        version = version_of(plane, back)
        assert (version.status, version.status_message) == ("READY", "Deployment is ready")


@async_test
async def test_an_abort_ends_the_migration_even_when_the_promoted_revision_runs_the_old_spec(
    sqlite_store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    """A staged revision with the live one's very model and config, promoted adapted: the old
    revision's snapshot matches what is live, yet the abort is no "unchanged" deploy: the
    old model comes back as a new revision and the adapter stops being applied."""
    async with control_plane(sqlite_store, onnx_cache_dir, tmp_path) as plane:
        blue, staged = await live_then_staged(plane, three[0], three[0])
        plane.store_adapter(staged_id=staged)
        assert (await plane.run("promote", mode="adapted")).status == "done"
        task = await plane.run("abort", abort_of="adapted", rollback_of=blue)
        assert task.status == "done", task.detail
        assert task.task_metadata["result"] == "aborted"
        assert steps_by_name(task)["switch"] == "done"
        assert task.task_metadata["revision_id"] not in (blue, staged)
        assert plane.migration() == ("none", None, None)


# ----- delete ------------------------------------------------------------------------------------


@async_test
async def test_a_delete_while_staged_withdraws_both_revisions_and_ends_the_migration(
    sqlite_store: Store, onnx_cache_dir: Path, tmp_path: Path, three: list[Path]
) -> None:
    async with control_plane(sqlite_store, onnx_cache_dir, tmp_path) as plane:
        blue, staged = await live_then_staged(plane, three[0], three[2])
        task = await plane.delete()
        assert task.status == "done", task.detail
        assert (task.task_metadata["revision_id"], task.task_metadata["staged_revision_id"]) == (
            blue,
            staged,
        )
        assert plane.migration()[0] == "none"
        for revision_id in (blue, staged):
            assert plane.revision(revision_id).phase == "Stopped"
            assert plane.runtime.replicas(revision_id) == []
        assert {d.status for d in plane.deployments()} == {"DELETED"}
        await not_served(plane, MODEL)
        await not_served(plane, f"{MODEL}@staged")


# ----- take-over ---------------------------------------------------------------------------------


def interrupted_once(step: Step, reached: asyncio.Event) -> Step:
    """The step, whose first run stops for good (a worker dying) after all of its work, before
    its end is recorded: the next worker runs it again, and it must change nothing twice."""
    calls = 0

    async def run(ctx: Any) -> Any:
        nonlocal calls
        calls += 1
        outcome = await step.run(ctx)
        if calls == 1:
            reached.set()
            await asyncio.Event().wait()
        return outcome

    return replace(step, run=run)


@pytest.mark.parametrize("step", PROMOTE_STEPS)
@async_test
async def test_a_promotion_interrupted_in_a_step_is_resumed_by_the_next_worker(
    sqlite_store: Store,
    onnx_cache_dir: Path,
    tmp_path: Path,
    three: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    async with control_plane(sqlite_store, onnx_cache_dir, tmp_path) as plane:
        blue, staged = await live_then_staged(plane, three[0], three[2])
        adapter_id = plane.store_adapter(staged_id=staged)
        reached = asyncio.Event()
        plan = tuple(interrupted_once(s, reached) if s.name == step else s for s in PROMOTE_PLAN)
        monkeypatch.setattr(runner_module, "plan_of", with_plan("promote", plan))
        task_id = plane.run_task("promote", mode="adapted")
        first_worker = asyncio.create_task(plane.runner(task_id))
        await wait_for(reached.wait(), first_worker)
        first_worker.cancel()  # the worker dies in the middle of the step
        with contextlib.suppress(asyncio.CancelledError):
            await first_worker
        assert plane.task(task_id).status == "processing"
        assert steps_by_name(plane.task(task_id))[step] == "running"

        await plane.runner(task_id)  # another worker took the lease over

        task = plane.task(task_id)
        assert task.status == "done", task.detail
        assert set(steps_by_name(task).values()) == {"done"}
        assert plane.live_revision() == staged
        assert plane.migration() == ("adapted", None, blue)
        assert task.task_metadata["adapter_id"] == adapter_id
        assert plane.revision(staged).priority == "normal"
        assert plane.revision(blue).phase == "Stopped"
        assert (await embed(plane)).shape == (32,)


def with_plan(kind: str, plan: tuple[Step, ...]) -> Callable[..., tuple[Step, ...]]:
    def plan_for(task_kind: str, metadata: Any = None) -> tuple[Step, ...]:
        return plan if task_kind == kind else plan_of(task_kind, metadata)

    return plan_for


async def wait_for(event: Awaitable[Any], worker: asyncio.Task[None]) -> None:
    """Until `event`; fails at once if the worker ended first (the step was never reached)."""
    waiting = asyncio.ensure_future(event)
    await asyncio.wait([waiting, worker], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():
        waiting.cancel()
        raise AssertionError(f"the step was not reached: worker done={worker.done()}")
