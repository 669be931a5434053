"""The reconciler: the difference between desired and running specs (pure), then one pass that
acts on it against the fake backend, and the replica reports it writes back."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from factories import FAKE_CONTENT_HASH, HashEngine, add_live_revision
from helpers import async_test, wait_until

from greenroom.runtime.base import ReplicaState, RevisionSpec
from greenroom.runtime.fake import FakeRuntime
from greenroom.runtime.reconcile import Plan, Reconciler, plan, revision_spec
from greenroom.serving.models import RouterReport
from greenroom.signals import Signals
from greenroom.store.db import Store, utcnow
from greenroom.workloads.models import Revision


def spec(revision_id: str, **changes: object) -> RevisionSpec:
    values: dict[str, object] = {
        "revision_id": revision_id,
        "model_path": Path("/models/fake"),
        "content_hash": FAKE_CONTENT_HASH,
        "secret": f"secret-of-{revision_id}",
    }
    values.update(changes)
    return RevisionSpec(**values)  # type: ignore[arg-type]


# ----- the difference ---------------------------------------------------------------------------


def test_unchanged_specs_produce_nothing() -> None:
    desired = [spec("a"), spec("b", replicas=2)]
    step = plan(desired, {s.revision_id: s for s in desired})
    assert step == Plan()
    assert step.is_empty()


def test_nothing_desired_and_nothing_running_is_an_empty_plan() -> None:
    assert plan([], {}).is_empty()


def test_a_missing_revision_is_started() -> None:
    step = plan([spec("a"), spec("b")], {"a": spec("a")})
    assert step == Plan(start=(spec("b"),))


def test_a_changed_spec_is_updated_with_the_desired_one() -> None:
    wanted = spec("a", replicas=3, threads=2)
    step = plan([wanted], {"a": spec("a")})
    assert step == Plan(update=(wanted,))
    assert step.update[0].replicas == 3


def test_a_priority_change_is_an_update() -> None:
    """Promotion's `start_live`: the staged revision's low-priority replicas are restarted at
    normal priority; a staged one that is running at normal priority is restarted low."""
    staged = spec("a", priority="low")
    assert plan([spec("a")], {"a": staged}) == Plan(update=(spec("a"),))
    assert plan([staged], {"a": spec("a")}) == Plan(update=(staged,))
    assert plan([staged], {"a": spec("a", priority="low")}).is_empty()


def test_an_extra_revision_is_stopped() -> None:
    step = plan([spec("a")], {"a": spec("a"), "c": spec("c"), "b": spec("b")})
    assert step == Plan(stop=("b", "c"))


def test_the_secret_takes_no_part_in_the_difference() -> None:
    """An adopted Ray application's spec comes back without its secret: nothing restarts."""
    assert plan([spec("a")], {"a": replace(spec("a"), secret="")}).is_empty()


def test_start_update_and_stop_in_one_plan() -> None:
    running = {"same": spec("same"), "changed": spec("changed"), "gone": spec("gone")}
    desired = [spec("same"), spec("changed", max_batch_size=8), spec("new")]
    step = plan(desired, running)
    assert step.start == (spec("new"),)
    assert step.update == (spec("changed", max_batch_size=8),)
    assert step.stop == ("gone",)


def test_a_revision_row_becomes_its_spec() -> None:
    revision = Revision(
        id="r1",
        model_path="/models/fake",
        content_hash=FAKE_CONTENT_HASH,
        engine="onnx",
        config={"threads": 3, "max_batch_size": 16, "additional_envs": {"A": "1"}},
        desired_replicas=2,
        runtime="ray",
        replica_secret="s" * 64,
    )
    made = revision_spec(revision)
    assert made == spec(
        "r1", threads=3, max_batch_size=16, environment={"A": "1"}, replicas=2, runtime="ray"
    )
    assert made.secret == "s" * 64
    assert made.priority == "normal"  # a row not yet flushed has no priority: normal
    revision.priority = "low"
    assert revision_spec(revision) == replace(made, priority="low")


# ----- one pass against the fake backend ------------------------------------------------------


class RecordingRuntime(FakeRuntime):
    """The fake backend, with a record of every request the reconciler makes of it."""

    def __init__(self) -> None:
        super().__init__(lambda _: HashEngine())
        self.requests: list[tuple[str, str]] = []
        self._starting = False  # a start's own stop of the old spec is no request

    async def start_revision(self, spec: RevisionSpec) -> None:
        self.requests.append(("start", spec.revision_id))
        self._starting = True
        try:
            await super().start_revision(spec)
        finally:
            self._starting = False

    async def stop_revision(self, revision_id: str) -> None:
        if not self._starting:
            self.requests.append(("stop", revision_id))
        await super().stop_revision(revision_id)


def desire(store: Store, revision_id: str, *, replicas: int, **config: object) -> None:
    with store.session_scope() as session:
        revision = session.get(Revision, revision_id)
        assert revision is not None
        revision.desired_replicas = replicas
        revision.config = {**revision.config, **config}


def add_revision(store: Store, model_id: str = "tiny") -> str:
    with store.session_scope() as session:
        revision = add_live_revision(session, embedding_model_id=model_id)
        revision.desired_replicas = 1
        revision.config = {"threads": 1}
        return revision.id


@async_test
async def test_a_pass_starts_updates_and_stops_only_what_differs(sqlite_store: Store) -> None:
    revision_id = add_revision(sqlite_store)
    runtime = RecordingRuntime()
    reconciler = Reconciler(sqlite_store, runtime, Signals(), target="local")
    try:
        await reconciler.reconcile_once()
        assert runtime.requests == [("start", revision_id)]
        assert runtime.running()[revision_id].replicas == 1
        await reconciler.reconcile_once()  # nothing changed: nothing asked of the backend
        assert runtime.requests == [("start", revision_id)]

        desire(sqlite_store, revision_id, replicas=2, max_batch_size=8)
        await reconciler.reconcile_once()
        assert runtime.requests[1:] == [("start", revision_id)]  # the update
        assert runtime.running()[revision_id].max_batch_size == 8
        await wait_until(  # the new spec's two replicas, once the old one handed over
            lambda: [r.state for r in runtime.replicas(revision_id)] == [ReplicaState.READY] * 2,
            what="the update's replicas",
        )

        await runtime.start_revision(spec("stray"))  # runs, but nobody wants it
        runtime.requests.clear()
        desire(sqlite_store, revision_id, replicas=0)
        await reconciler.reconcile_once()
        assert sorted(runtime.requests) == [("stop", revision_id), ("stop", "stray")]
        assert runtime.running() == {}
    finally:
        await runtime.close()


@async_test
async def test_the_loop_reports_ready_replicas_to_the_store(sqlite_store: Store) -> None:
    revision_id = add_revision(sqlite_store)
    runtime = RecordingRuntime()
    loop = asyncio.create_task(Reconciler(sqlite_store, runtime, Signals(), target="local").run())

    def reported() -> bool:
        with sqlite_store.session_scope() as session:
            revision = session.get(Revision, revision_id)
            assert revision is not None
            states = [r["state"] for r in revision.replicas]
            return revision.ready_replicas == 1 and states == ["ready"]

    try:
        await wait_until(reported, what="the ready replica in the store")
        with sqlite_store.session_scope() as session:
            revision = session.get(Revision, revision_id)
            assert revision is not None and revision.phase == "Running"
            assert revision.reported_at is not None
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await runtime.close()


# ----- autoscaling ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def report_load(store: Store, router_id: str, in_flight: dict[str, int], *, age_s: float = 0.0):
    with store.session_scope() as session:
        report = session.get(RouterReport, router_id) or RouterReport(router_id=router_id)
        report.live, report.pinned, report.in_flight = {}, {}, in_flight
        report.heartbeat_at = utcnow() - timedelta(seconds=age_s)
        session.add(report)


def stored(store: Store, revision_id: str) -> tuple[int, str, str | None]:
    with store.session_scope() as session:
        revision = session.get(Revision, revision_id)
        assert revision is not None
        return revision.desired_replicas, revision.phase, revision.phase_message


AUTOSCALED = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2.0,
    "upscale_delay_s": 10.0,
    "downscale_delay_s": 20.0,
}


@async_test
async def test_the_supervisor_scales_a_revision_in_place_from_the_routers_load(
    sqlite_store: Store,
) -> None:
    revision_id = add_revision(sqlite_store)
    fixed_id = add_revision(sqlite_store, "other")  # no range: a fixed count, whatever its load
    desire(sqlite_store, revision_id, replicas=1, **AUTOSCALED)
    runtime = RecordingRuntime()
    clock = Clock()
    reconciler = Reconciler(sqlite_store, runtime, Signals(), target="local", clock=clock)
    try:
        await reconciler.reconcile_once()
        await wait_until(lambda: len(runtime.ready_replicas(revision_id)) == 1, what="ready")
        first = runtime.replica(f"{revision_id}-0")
        runtime.requests.clear()

        # 3 + 2 ongoing over two fresh routers (5: 3 replicas wanted, 2 at most); a stale
        # router's load counts for nothing
        report_load(sqlite_store, "a", {revision_id: 3, fixed_id: 50})
        report_load(sqlite_store, "b", {revision_id: 2})
        report_load(sqlite_store, "gone", {revision_id: 100}, age_s=60)
        assert await reconciler.autoscale_once() == {}  # the first sample: no delay passed yet
        clock.now = 9.0
        assert await reconciler.autoscale_once() == {}
        clock.now = 10.0
        assert await reconciler.autoscale_once() == {revision_id: 2}
        assert stored(sqlite_store, revision_id)[0] == 2
        assert stored(sqlite_store, fixed_id)[0] == 1

        await reconciler.reconcile_once()
        assert runtime.requests == [("start", revision_id)]  # no stop, no new revision
        await wait_until(lambda: len(runtime.ready_replicas(revision_id)) == 2, what="2 ready")
        assert runtime.replica(f"{revision_id}-0") is first  # never restarted
        assert first.status.state is ReplicaState.READY
        assert runtime.running()[revision_id].replicas == 2
        clock.now = 40.0
        assert await reconciler.autoscale_once() == {}  # at the most already

        # the load goes; 20 s below the count later, back to one replica, the first
        report_load(sqlite_store, "a", {revision_id: 0})
        report_load(sqlite_store, "b", {})
        clock.now = 50.0
        assert await reconciler.autoscale_once() == {}
        clock.now = 70.0
        assert await reconciler.autoscale_once() == {revision_id: 1}
        await reconciler.reconcile_once()
        assert [r.replica_id for r in runtime.replicas(revision_id)] == [f"{revision_id}-0"]
        assert runtime.replica(f"{revision_id}-0") is first
        assert first.status.state is ReplicaState.READY
    finally:
        await runtime.close()


@async_test
async def test_a_refused_scale_up_keeps_the_count_and_says_why(sqlite_store: Store) -> None:
    revision_id = add_revision(sqlite_store)
    desire(sqlite_store, revision_id, replicas=1, **{**AUTOSCALED, "upscale_delay_s": 0.0})
    runtime = RecordingRuntime()
    runtime.scale_up_refused = "Not scaled up by 1 replica(s): only 10 MiB available."
    reconciler = Reconciler(sqlite_store, runtime, Signals(), target="local", clock=Clock())
    try:
        report_load(sqlite_store, "a", {revision_id: 8})
        assert await reconciler.autoscale_once() == {}
        assert stored(sqlite_store, revision_id) == (1, "Running", runtime.scale_up_refused)

        runtime.scale_up_refused = None  # memory freed: the next pass scales up
        assert await reconciler.autoscale_once() == {revision_id: 2}
        assert stored(sqlite_store, revision_id)[0] == 2
    finally:
        await runtime.close()


@async_test
async def test_a_revision_that_is_not_serving_is_not_autoscaled(sqlite_store: Store) -> None:
    revision_id = add_revision(sqlite_store)
    desire(sqlite_store, revision_id, replicas=1, **{**AUTOSCALED, "upscale_delay_s": 0.0})
    with sqlite_store.session_scope() as session:
        revision = session.get(Revision, revision_id)
        assert revision is not None
        revision.phase = "Initializing"  # being rolled out: the rollout owns its count
    runtime = RecordingRuntime()
    reconciler = Reconciler(sqlite_store, runtime, Signals(), target="local", clock=Clock())
    report_load(sqlite_store, "a", {revision_id: 8})
    assert await reconciler.autoscale_once() == {}
    assert stored(sqlite_store, revision_id)[0] == 1


@async_test
async def test_a_ray_revision_is_autoscaled_in_place_too(sqlite_store: Store) -> None:
    revision_id = add_revision(sqlite_store)
    desire(sqlite_store, revision_id, replicas=1, **{**AUTOSCALED, "upscale_delay_s": 0.0})
    with sqlite_store.session_scope() as session:
        revision = session.get(Revision, revision_id)
        assert revision is not None
        revision.runtime = "ray"  # its backend sets the Serve application's num_replicas
    runtime = RecordingRuntime()
    reconciler = Reconciler(sqlite_store, runtime, Signals(), target="ray", clock=Clock())
    report_load(sqlite_store, "a", {revision_id: 8})
    assert await reconciler.autoscale_once() == {revision_id: 2}
    assert stored(sqlite_store, revision_id)[0] == 2


@async_test
async def test_the_first_pass_replaces_the_reports_a_previous_leader_left(
    sqlite_store: Store,
) -> None:
    """A restart: the store still says the replica is ready on the old process's port. The
    first pass, before any router reads it, writes what runs now (a replica starting)."""
    revision_id = add_revision(sqlite_store)
    with sqlite_store.session_scope() as session:
        revision = session.get(Revision, revision_id)
        assert revision is not None
        revision.replicas = [
            {"replica_id": f"{revision_id}-0", "state": "ready", "host": "127.0.0.1", "port": 1}
        ]
        revision.ready_replicas = 1
    runtime = FakeRuntime(lambda spec: HashEngine())
    runtime.ready_gate.clear()  # the new replica is still loading when the router reads
    reconciler = Reconciler(sqlite_store, runtime, Signals(), target="local")
    try:
        await reconciler.first_pass()
        with sqlite_store.session_scope() as session:
            revision = session.get(Revision, revision_id)
            assert revision is not None
            assert revision.ready_replicas == 0
            assert [r["state"] for r in revision.replicas] == ["starting"]
            assert all(r.get("port") != 1 for r in revision.replicas)
    finally:
        runtime.ready_gate.set()
        await runtime.close()
