"""Each rollout step run alone on the fake runtime (real ONNX engines), as the runner would run
it: what it asks of the domain services, and what it waits for."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from helpers import async_test, wait_until
from plane import MODEL, ControlPlane, control_plane, embed

from greenroom.deployments import configs as deployments_configs
from greenroom.rollout import steps
from greenroom.rollout.plan import DEPLOY_PLAN, initial_steps
from greenroom.rollout.steps import StepContext, StepFailed
from greenroom.serving.models import RouterReport
from greenroom.store.db import Store, utcnow
from greenroom.tasks.schemas import StepStatus

TOKEN = {"initiated_by": "ci-bot", "principal_id": "tok-1", "principal_groups": ["deploy", "read"]}


def context(plane: ControlPlane, task_id: str, step: str) -> StepContext:
    """The step's context with its task's step records, as the runner leaves them."""
    ctx = plane.context(task_id)
    ctx.metadata.steps = initial_steps(DEPLOY_PLAN)
    ctx.step = step
    return ctx


async def up_to(plane: ControlPlane, ctx: StepContext, last: str) -> None:
    """Run the deploy's steps in order up to `last` included (then back to the step under test)."""
    under_test = ctx.step
    for step in DEPLOY_PLAN:
        ctx.step = step.name
        await step.run(ctx)
        if step.name == last:
            break
    ctx.step = under_test


def config_versions(plane: ControlPlane) -> list[int]:
    with plane.store.session_scope() as session:
        versions = deployments_configs.list_config_versions(
            session, workspace="default", name=MODEL
        )
        return sorted(config.entity_version for config in versions)


def stuck_router(plane: ControlPlane, *, serves: str, age_s: float = 0.0) -> None:
    """A router that reports serving `serves` (a router that missed the switch)."""
    with plane.store.session_scope() as session:
        report = session.get(RouterReport, "stuck") or RouterReport(router_id="stuck")
        report.live, report.in_flight = {MODEL: serves}, {}
        report.heartbeat_at = utcnow() - timedelta(seconds=age_s)
        session.add(report)


@pytest.fixture
def quick_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Name the awaited routers at once rather than after ten seconds."""
    monkeypatch.setattr(steps, "AWAITED_REPORT_S", 0.1)


# ----- snapshot ----------------------------------------------------------------------------------


@async_test
async def test_snapshot_of_a_first_deploy_records_the_version_and_the_revision(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        ctx = context(plane, plane.run_task("deploy", **TOKEN), "snapshot")
        outcome = await steps.snapshot(ctx)
        assert outcome.status is StepStatus.DONE and not outcome.unchanged
        assert outcome.message is not None and "config version 1" in outcome.message
        (deployment,) = plane.deployments()
        assert (deployment.status, deployment.entity_version) == ("CREATED", 1)
        # one principal record: the token's id and scopes (issue 10)
        assert deployment.auth_context["principal_id"] == "tok-1"
        assert deployment.auth_context["principal_groups"] == ["deploy", "read"]
        revision = plane.revision(deployment.revision_id)
        assert (revision.phase, revision.desired_replicas) == ("Creating", 0)
        stored = plane.task(ctx.task_id).task_metadata
        assert stored["revision_id"] == deployment.revision_id == ctx.metadata.revision_id
        assert stored["previous_revision_id"] is None and stored["config_version"] == 1
        again = await steps.snapshot(ctx)
        assert again.message == "resumed: the revision was already snapshotted"
        assert len(plane.deployments()) == 1


@async_test
async def test_snapshot_writes_the_requested_overrides_as_a_config_version(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    """Issue 10: a Tasks API deploy's overrides become a config version when the task runs."""
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        task_id = plane.run_task("deploy", config=MODEL, config_overrides={"max_batch_size": 16})
        assert config_versions(plane) == [1]
        ctx = context(plane, task_id, "snapshot")
        await steps.snapshot(ctx)
        assert config_versions(plane) == [1, 2]
        assert plane.task(task_id).task_metadata["config_version"] == 2
        (deployment,) = plane.deployments()
        assert deployment.config_version == 2
        assert plane.revision(deployment.revision_id).config["max_batch_size"] == 16


@async_test
async def test_snapshot_of_what_is_live_is_unchanged(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        live = (await plane.deploy()).task_metadata["revision_id"]
        ctx = context(plane, plane.run_task("deploy"), "snapshot")
        outcome = await steps.snapshot(ctx)
        assert outcome.unchanged and ctx.metadata.revision_id == live
        assert len(plane.deployments()) == 1


@async_test
async def test_snapshot_of_an_unregistered_model_fails(
    store: Store, onnx_cache_dir: Path, tmp_path: Path
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        ctx = context(plane, plane.run_task("deploy"), "snapshot")
        with pytest.raises(StepFailed, match="does not exist"):
            await steps.snapshot(ctx)


# ----- start_green, smoke_test, compatibility_gate -------------------------------------------


@async_test
async def test_start_green_waits_for_its_replicas(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0], replicas=2)
        ctx = context(plane, plane.run_task("deploy"), "start_green")
        await steps.snapshot(ctx)
        outcome = await steps.start_green(ctx)
        assert outcome.message == "2 replica(s) ready"
        green = plane.revision(ctx.metadata.revision_id or "")
        assert (green.phase, green.ready_replicas) == ("Initializing", 2)


@async_test
async def test_start_green_fails_when_its_replicas_cannot_start(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        plane.runtime.engine_factory = broken_engine
        ctx = context(plane, plane.run_task("deploy"), "start_green")
        await steps.snapshot(ctx)
        with pytest.raises(StepFailed, match="Green's replicas failed to start"):
            await steps.start_green(ctx)


def broken_engine(spec: object) -> object:
    raise RuntimeError("weights are corrupt")


@async_test
async def test_smoke_test_and_the_gate_of_a_first_deploy(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        ctx = context(plane, plane.run_task("deploy"), "smoke_test")
        await up_to(plane, ctx, "start_green")
        outcome = await steps.smoke_test(ctx)
        assert outcome.message is not None and "probe vectors fine" in outcome.message
        assert ctx.green_probe is not None and ctx.green_probe.shape == (10, 32)
        gate = await steps.compatibility_gate(ctx)
        assert (gate.status, gate.message) == (
            StepStatus.SKIPPED,
            "no live revision to compare with",
        )


@async_test
async def test_the_gate_refuses_vectors_of_another_space(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        await plane.deploy()
        plane.point_model_at(paths[1])
        ctx = context(plane, plane.run_task("deploy"), "compatibility_gate")
        await up_to(plane, ctx, "start_green")  # no smoke test: the gate probes green itself
        with pytest.raises(StepFailed, match="not comparable"):
            await steps.compatibility_gate(ctx)
        compatibility = plane.task(ctx.task_id).task_metadata["compatibility"]
        assert compatibility["reindex_required"] is True


# ----- switch and drain_blue: no router left behind ----------------------------------------------


@async_test
async def test_switch_waits_for_a_fresh_router_that_still_serves_blue(
    store: Store,
    onnx_cache_dir: Path,
    tmp_path: Path,
    paths: tuple[Path, Path],
    quick_reports: None,
) -> None:
    """Issue 10: the switch is not done while a router with a fresh heartbeat has not
    confirmed it; its step says which router it waits for."""
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        blue = (await plane.deploy()).task_metadata["revision_id"]
        plane.point_model_at(paths[0], max_batch_size=16)
        ctx = context(plane, plane.run_task("deploy"), "switch")
        await up_to(plane, ctx, "compatibility_gate")
        green = ctx.metadata.revision_id or ""
        stuck_router(plane, serves=blue)
        switching = asyncio.create_task(steps.switch(ctx))
        await wait_until(
            lambda: "waiting for router(s) stuck to serve green" in step_message(plane, ctx),
            what="the switch to name the router it awaits",
        )
        assert not switching.done() and plane.live_revision() == green
        stuck_router(plane, serves=green)
        assert (await switching).message == "routers serve green"


@async_test
async def test_drain_blue_does_not_stop_blue_while_a_fresh_router_has_not_confirmed(
    store: Store,
    onnx_cache_dir: Path,
    tmp_path: Path,
    paths: tuple[Path, Path],
    quick_reports: None,
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        blue = (await plane.deploy()).task_metadata["revision_id"]
        plane.point_model_at(paths[0], max_batch_size=16)
        ctx = context(plane, plane.run_task("deploy"), "drain_blue")
        await up_to(plane, ctx, "switch")
        stuck_router(plane, serves=blue)  # it missed the LIVE signal
        draining = asyncio.create_task(steps.drain_blue(ctx))
        await wait_until(
            lambda: (
                f"waiting for router(s) stuck to stop routing to {blue}" in step_message(plane, ctx)
            ),
            what="the drain to name the router it awaits",
        )
        assert not draining.done()
        assert plane.revision(blue).desired_replicas == 1 and plane.runtime.replicas(blue)
        stuck_router(plane, serves=ctx.metadata.revision_id or "")
        assert (await draining).message == "blue drained and stopped"
        assert plane.revision(blue).phase == "Stopped" and plane.runtime.replicas(blue) == []
        await embed(plane)


@async_test
async def test_a_router_whose_heartbeat_went_stale_holds_nothing_up(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        blue = (await plane.deploy()).task_metadata["revision_id"]
        plane.point_model_at(paths[0], max_batch_size=16)
        stuck_router(plane, serves=blue, age_s=60)  # gone: its heartbeat is a minute old
        ctx = context(plane, plane.run_task("deploy"), "drain_blue")
        await up_to(plane, ctx, "switch")
        assert (await steps.drain_blue(ctx)).message == "blue drained and stopped"


@async_test
async def test_finish_marks_the_version_ready(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        ctx = context(plane, plane.run_task("deploy"), "finish")
        await up_to(plane, ctx, "drain_blue")
        assert plane.deployments()[-1].status == "CREATED"
        await steps.finish(ctx)
        assert plane.deployments()[-1].status == "READY"
        assert plane.task(ctx.task_id).task_metadata["result"] == "rolled_out"


@async_test
async def test_roll_back_withdraws_green_and_leaves_blue(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        blue = (await plane.deploy()).task_metadata["revision_id"]
        plane.point_model_at(paths[0], max_batch_size=16)
        ctx = context(plane, plane.run_task("deploy"), "smoke_test")
        await up_to(plane, ctx, "start_green")
        await steps.roll_back(ctx, "Green failed the smoke test: because.")
        green = plane.revision(ctx.metadata.revision_id or "")
        assert (green.phase, green.deleted_at is not None) == ("Failed", True)
        assert plane.live_revision() == blue
        assert plane.deployments()[-1].status == "ERROR"


# ----- delete ------------------------------------------------------------------------------------


@async_test
async def test_the_delete_steps(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        live = (await plane.deploy()).task_metadata["revision_id"]
        ctx = plane.context(plane.run_task("delete"))
        assert (await steps.unroute(ctx)).message == f"'{MODEL}' removed from the routers"
        assert plane.live_revision() is None and ctx.metadata.revision_id == live
        assert plane.deployments()[-1].status == "DELETING"
        assert (await steps.unroute(ctx)).message == "resumed: already unrouted"
        assert (await steps.drain_deleted(ctx)).message == "drained"
        assert (await steps.stop_deleted(ctx)).message == "replicas stopped"
        assert plane.revision(live).phase == "Stopped"
        await steps.finish_delete(ctx)
        assert plane.deployments()[-1].status == "DELETED"


@async_test
async def test_a_delete_of_nothing_live_skips_its_steps(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, paths: tuple[Path, Path]
) -> None:
    async with control_plane(store, onnx_cache_dir, tmp_path) as plane:
        plane.point_model_at(paths[0])
        ctx = plane.context(plane.run_task("delete"))
        for step in (steps.unroute, steps.drain_deleted, steps.stop_deleted):
            assert (await step(ctx)).status is StepStatus.SKIPPED


def step_message(plane: ControlPlane, ctx: StepContext) -> str:
    for step in plane.task(ctx.task_id).task_metadata.get("steps") or []:
        if step["name"] == ctx.step:
            return step["message"] or ""
    return ""
