"""serving/sync.py: the router follows the store's live pointers, and a router that missed a
switch loses no request (the fake runtime's in-process replicas, a real store)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from factories import HashEngine, add_embedding_model
from helpers import async_test, wait_until

from greenroom.config import Settings
from greenroom.metrics import Metrics
from greenroom.migrations import service as migrations_service
from greenroom.migrations.adapters import LoadedAdapter
from greenroom.runtime.base import RevisionSpec
from greenroom.runtime.fake import FakeRuntime
from greenroom.runtime.reconcile import replica_report
from greenroom.serving.models import RouterReport
from greenroom.serving.replicas import StoreReplicas
from greenroom.serving.reports import adapter_of, serves, staged_of
from greenroom.serving.router import Router
from greenroom.serving.sync import RouterSync
from greenroom.signals import Signals
from greenroom.store.db import Store, utcnow
from greenroom.workloads import service as workloads_service
from greenroom.workloads.schemas import RevisionSnapshot

NAME = "tiny"
CLIENTS = 4
REQUESTS_AFTER_STOP = 5  # each client's requests once blue has stopped


class OffsetEngine(HashEngine):
    """A model-free engine whose vectors tell the revisions apart (`offset`), held on `gate`."""

    def __init__(self, gate: threading.Event, offset: float) -> None:
        super().__init__()
        self.gate = gate
        self.offset = offset
        self.entered = threading.Event()

    def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        return super().embed(lengths, flat_ids) + self.offset


@dataclass
class Setup:
    store: Store
    runtime: FakeRuntime
    router: Router
    sync: RouterSync
    model_dir: Path
    gate: threading.Event
    offsets: dict[str, float]
    engines: dict[str, OffsetEngine] = field(default_factory=dict)
    reported: StoreReplicas | None = None

    def add_revision(self, offset: float) -> str:
        revision_id = str(uuid.uuid4())
        self.offsets[revision_id] = offset
        snapshot = RevisionSnapshot(
            embedding_model_id=NAME,
            source=str(self.model_dir),
            model_path=str(self.model_dir),
            content_hash="ab" * 32,
            engine="onnx",
            config={"replicas": 1},
            runtime="fake",
        )
        with self.store.session_scope() as session:
            workloads_service.create_revision(
                session,
                revision_id=revision_id,
                deployment_id=str(uuid.uuid4()),
                served_name=NAME,
                snapshot=snapshot,
            )
            workloads_service.want_replicas(session, revision_id=revision_id)
        return revision_id

    async def start(self, revision_id: str) -> None:
        with self.store.session_scope() as session:
            revision = workloads_service.get_revision_or_fail(session, revision_id=revision_id)
            secret = revision.replica_secret
        spec = RevisionSpec(
            revision_id=revision_id,
            model_path=self.model_dir,
            content_hash="ab" * 32,
            replicas=1,
            secret=secret,
        )
        await self.runtime.start_revision(spec)
        await wait_until(
            lambda: len(self.runtime.ready_replicas(revision_id)) == 1, what="a ready replica"
        )
        self.report_replicas(revision_id)

    async def stop(self, revision_id: str) -> None:
        await self.runtime.stop_revision(revision_id)
        self.report_replicas(revision_id)

    def report_replicas(self, revision_id: str) -> None:
        """What a supervisor writes to the store (read by routers without one)."""
        replicas = self.runtime.replicas(revision_id)
        with self.store.session_scope() as session:
            workloads_service.record_replicas(
                session,
                revision_id=revision_id,
                replicas=[replica_report(r) for r in replicas],
                ready=sum(r.state.is_ready() for r in replicas),
                now=utcnow(),
            )

    def point_live(self, revision_id: str) -> None:
        """The rollout's switch, in the store."""
        with self.store.session_scope() as session:
            revision = workloads_service.get_revision_or_fail(session, revision_id=revision_id)
            workloads_service.point_live(
                session,
                served_name=NAME,
                revision_id=revision_id,
                deployment_id=revision.deployment_id,
            )


@asynccontextmanager
async def setup(store: Store, model_dir: Path, *, supervisor_here: bool) -> AsyncIterator[Setup]:
    """A router and its sync; the replicas come from the runtime itself (`supervisor_here`) or
    from the reports in the store, as in an API process without a supervisor."""
    gate = threading.Event()
    gate.set()
    offsets: dict[str, float] = {}
    engines: dict[str, OffsetEngine] = {}

    def factory(spec: RevisionSpec) -> OffsetEngine:
        engines[spec.revision_id] = OffsetEngine(gate, offsets[spec.revision_id])
        return engines[spec.revision_id]

    runtime = FakeRuntime(factory)
    reported = None if supervisor_here else StoreReplicas()
    # a long replica wait: a request that waited it out would fail, which the test would show;
    # one batch out at a time, so that the requests waiting for blue are all in the queue
    router = Router(
        runtime if reported is None else reported,
        Metrics(),
        Settings(replica_wait_s=60, replica_pipeline_depth=1),
    )
    sync = RouterSync(store, router, Signals(), replicas=reported)
    with store.session_scope() as session:
        add_embedding_model(session, NAME)
    try:
        yield Setup(store, runtime, router, sync, model_dir, gate, offsets, engines, reported)
    finally:
        gate.set()
        await router.close()
        await runtime.close()


def expected(setup: Setup, revision_id: str, text: str) -> np.ndarray:
    ids = setup.router.live(NAME).tokenizer.encode(text).ids
    return HashEngine().expected(ids) + setup.offsets[revision_id]


@pytest.mark.parametrize("supervisor_here", [True, False], ids=["supervisor", "store-reports"])
@async_test
async def test_a_router_that_misses_the_switch_loses_no_request(
    store: Store, tiny_model_dir: Path, supervisor_here: bool
) -> None:
    """The router's sync follows the store once (blue live), then never runs on its own again:
    it misses the LIVE signal of the switch. Green goes live in the store and blue stops while a
    batch is in flight to it and requests wait for blue; requests keep coming during and after.
    Every request succeeds: those that reach blue once it is gone go to green, whose vectors
    they carry."""
    async with setup(store, tiny_model_dir, supervisor_here=supervisor_here) as s:
        blue = s.add_revision(offset=0.0)
        green = s.add_revision(offset=1.0)
        await s.start(blue)
        s.point_live(blue)
        await s.sync.sync_once()
        assert s.router.live(NAME).revision_id == blue
        await s.start(green)
        s.point_live(green)  # the switch; this router's sync does not run

        blue_stopped = asyncio.Event()
        errors: list[BaseException] = []
        served_after_stop: list[tuple[str, np.ndarray]] = []

        async def client(index: int) -> None:
            sent_after_stop = 0
            while sent_after_stop < REQUESTS_AFTER_STOP:
                after = blue_stopped.is_set()
                text = f"client {index} says hello"
                try:
                    result = await s.router.embed(NAME, [text])
                except Exception as exc:  # every failure is a lost request
                    errors.append(exc)
                    return
                if after:
                    sent_after_stop += 1
                    served_after_stop.append((text, result.vectors[0]))
                await asyncio.sleep(0)

        s.gate.clear()
        clients = [asyncio.create_task(client(0))]
        await asyncio.to_thread(s.engines[blue].entered.wait, 30)  # a batch in flight to blue
        clients += [asyncio.create_task(client(i)) for i in range(1, CLIENTS)]
        await wait_until(
            lambda: len(s.router.live(NAME).queue) == CLIENTS - 1, what="requests waiting for blue"
        )
        await s.stop(blue)
        blue_stopped.set()
        s.gate.set()
        await asyncio.gather(*clients)

        assert errors == []
        assert len(served_after_stop) == CLIENTS * REQUESTS_AFTER_STOP
        for text, vector in served_after_stop:
            np.testing.assert_allclose(vector, expected(s, green, text), rtol=1e-5)
        assert s.router.live(NAME).revision_id == green


@async_test
async def test_a_pass_follows_the_live_pointer_and_reports(
    store: Store, tiny_model_dir: Path
) -> None:
    async with setup(store, tiny_model_dir, supervisor_here=True) as s:
        blue = s.add_revision(offset=0.0)
        await s.start(blue)
        s.point_live(blue)
        await s.sync.sync_once()
        await s.sync.report()
        assert s.router.live(NAME).revision_id == blue
        with store.session_scope() as session:
            report = session.get(RouterReport, s.sync.router_id)
            assert report is not None and report.live == {NAME: blue}
        with store.session_scope() as session:
            workloads_service.unroute(session, served_name=NAME)
        await s.sync.sync_once()
        assert s.router.live(NAME) is None
        s.sync.forget_report()
        with store.session_scope() as session:
            assert session.get(RouterReport, s.sync.router_id) is None


@async_test
async def test_refreshes_asked_during_a_pass_share_the_next_one(
    store: Store, tiny_model_dir: Path
) -> None:
    async with setup(store, tiny_model_dir, supervisor_here=True) as s:
        passes = 0
        release = asyncio.Event()
        follow = s.sync._follow_store

        async def held() -> None:
            nonlocal passes
            passes += 1
            await release.wait()
            await follow()

        s.sync._follow_store = held  # type: ignore[method-assign]
        first = asyncio.create_task(s.sync.refresh())
        await wait_until(lambda: passes == 1, what="the first pass to start")
        asked_meanwhile = [asyncio.create_task(s.sync.refresh()) for _ in range(4)]
        await asyncio.sleep(0)  # they ask now, while the first pass runs
        release.set()
        await asyncio.gather(first, *asked_meanwhile)
        # the first pass may have read the store before they asked: one more pass, shared
        assert passes == 2
        await s.sync.refresh()
        assert passes == 3  # asked once no pass runs: a pass of its own


# ----- migrations: the staged revision, the adapter, the shadow summaries ----------------------


def report_of(setup: Setup) -> RouterReport:
    with setup.store.session_scope() as session:
        report = session.get(RouterReport, setup.sync.router_id)
        assert report is not None
        session.expunge(report)
        return report


async def shadows_done(router: Router) -> None:
    await wait_until(lambda: not router._shadow_tasks, what="the shadow calls to end")


@pytest.mark.parametrize("supervisor_here", [True, False], ids=["supervisor", "store-reports"])
@async_test
async def test_a_staged_revision_is_prepared_kept_shadowed_and_reported(
    store: Store, tiny_model_dir: Path, supervisor_here: bool
) -> None:
    async with setup(store, tiny_model_dir, supervisor_here=supervisor_here) as s:
        blue, green = s.add_revision(offset=0.0), s.add_revision(offset=1.0)
        await s.start(blue)
        s.point_live(blue)
        await s.start(green)
        with store.session_scope() as session:
            migrations_service.record_staged(session, served_name=NAME, revision_id=green)
            migrations_service.set_shadow_fraction(session, served_name=NAME, fraction=1.0)
        for _ in range(2):  # a later pass keeps the staged revision: it is not live, yet served
            await s.sync.sync_once()
            await s.sync.report()
            assert s.router.live(NAME).revision_id == blue
            assert s.router.staged(NAME).revision_id == green
        await wait_until(lambda: bool(s.router.staged(NAME).workers), what="a worker for green")
        staged = await s.router.embed(f"{NAME}@staged", ["hello"])
        np.testing.assert_allclose(staged.vectors[0], expected(s, green, "hello"), rtol=1e-5)

        report = report_of(s)
        assert report.pinned == {NAME: {"staged": green, "adapter": None}}
        assert set(report.in_flight) == {blue, green}
        assert serves(report, green) and serves(report, blue) and not serves(report, "other")
        assert staged_of(report, NAME) == green and adapter_of(report, NAME) is None

        texts = [f"a shadowed sentence number {i}" for i in range(12)]
        await s.router.embed(NAME, texts)
        await shadows_done(s.router)
        await s.sync.write_shadow_summaries(force=True)
        with store.session_scope() as session:
            shadow = migrations_service.shadow_report(session, served_name=NAME)
        assert shadow is not None
        assert (shadow.requests, shadow.inputs, shadow.dropped, shadow.processes) == (1, 12, 0, 1)
        assert shadow.mean_cosine is not None and shadow.neighbour_overlap_at_10 is not None
        assert shadow.latency_ms.staged_p50 is not None

        with store.session_scope() as session:
            migrations_service.record_aborted(session, served_name=NAME)
        await s.sync.sync_once()
        await s.sync.report()
        assert s.router.staged(NAME) is None and green not in s.router.revision_ids()
        assert report_of(s).pinned == {}
        assert s.router.shadow_recorders() == {}


@async_test
async def test_an_adapted_promotion_switches_the_pointer_and_the_space_in_one_pass(
    store: Store, tiny_model_dir: Path
) -> None:
    async with setup(store, tiny_model_dir, supervisor_here=True) as s:
        blue, green = s.add_revision(offset=0.0), s.add_revision(offset=1.0)
        await s.start(blue)
        s.point_live(blue)
        await s.start(green)
        with store.session_scope() as session:
            migrations_service.record_staged(session, served_name=NAME, revision_id=green)
        await s.sync.sync_once()
        blue_space = s.router.live(NAME).revision.embedding_space()
        weight = np.eye(8, dtype=np.float32)[::-1].copy()  # reverses the components
        parameters = {"weight": weight, "bias": np.zeros(8, dtype=np.float32)}
        with store.session_scope() as session:
            adapter = migrations_service.store_adapter(
                session,
                served_name=NAME,
                revision_id=green,
                target_revision_id=blue,
                kind="procrustes",
                parameters=LoadedAdapter(kind="procrustes", parameters=parameters).to_bytes(),
                evaluation={},
                target_embedding_space=blue_space,
                target_normalize=True,
            )
            adapter_id = adapter.id
            migrations_service.record_promoted(
                session, served_name=NAME, mode="adapted", old_revision_id=blue
            )
        s.point_live(green)
        await s.sync.sync_once()
        await s.sync.report()
        assert s.router.live(NAME).revision_id == green
        report = report_of(s)
        assert report.live == {NAME: green} and adapter_of(report, NAME) == adapter_id
        assert staged_of(report, NAME) is None
        result = await s.router.embed(NAME, ["hello"])
        raw = expected(s, green, "hello")
        mapped = raw[::-1] / np.linalg.norm(raw)
        np.testing.assert_allclose(result.vectors[0], mapped, rtol=1e-5)
        assert result.embedding_space == blue_space
        live = await s.router.embed(f"{NAME}@live", ["hello"])
        assert live.embedding_space == s.router.live(NAME).revision.embedding_space()
        np.testing.assert_allclose(live.vectors[0], raw, rtol=1e-5)


@async_test
async def test_a_live_model_whose_files_are_gone_leaves_the_others_served(
    store: Store, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """One unreadable live revision used to fail the whole pass, so no name was followed."""
    async with setup(store, tiny_model_dir, supervisor_here=True) as s:
        broken_id = str(uuid.uuid4())
        snapshot = RevisionSnapshot(
            embedding_model_id="gone",
            source=str(tmp_path / "gone"),
            model_path=str(tmp_path / "gone"),
            content_hash="cd" * 32,
            engine="onnx",
            config={"replicas": 1},
            runtime="fake",
        )
        with store.session_scope() as session:
            add_embedding_model(session, "gone")
            workloads_service.create_revision(
                session,
                revision_id=broken_id,
                deployment_id=str(uuid.uuid4()),
                served_name="gone",
                snapshot=snapshot,
            )
            workloads_service.point_live(
                session, served_name="gone", revision_id=broken_id, deployment_id="d-gone"
            )
        blue = s.add_revision(offset=0.0)
        await s.start(blue)
        s.point_live(blue)
        await s.sync.sync_once()
        assert s.router.live(NAME).revision_id == blue
        assert s.router.live("gone") is None
        assert s.sync.unservable == {"gone"} and s.sync.followed_once

        # the files come back: not read again on the next pass, but once the retry is due
        shutil.copytree(tiny_model_dir, tmp_path / "gone")
        await s.sync.sync_once()
        assert s.router.live("gone") is None and s.sync.unservable == {"gone"}
        s.sync.unpreparable_retry_s = 0.0
        await s.sync.sync_once()
        assert s.router.live("gone") is not None and s.sync.unservable == set()
