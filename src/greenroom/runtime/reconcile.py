"""The supervisor's reconcile loop: desired replicas in the store → the runtime → reports back.

Like the Serve controller: the target comes from the store (revisions with `desired_replicas`
> 0 for this supervisor's runtime targets, as `RevisionSpec`s), the actual state from the
backend (`RuntimeBackend.running()`: the spec each revision runs); `plan` turns the difference
into start, update and stop requests, a pure function, and `act` carries them out. One pass is
idempotent (an unchanged spec is left alone) and also runs at start-up, so after a restart of
`greenroom serve` the replicas of live revisions come back (Ray's are re-adopted: nothing to do).

Every replica change the backend reports goes to the workloads service (`record_replicas`),
where the worker waits for it; the live revision's health it returns decides its deployment
version's LOST (no replica ready for `lost_after_s`) and its recovery, through the deployments
service. This module reads and writes no table itself.

Autoscaling (`greenroom.runtime.autoscale`): each pass, before reconciling, every serving
revision whose config gives `min_replicas`/`max_replicas` gets one load sample (its ongoing
requests summed over the fresh routers' reports) and the count `decide` returns is written
through the workloads service (`scale_replicas`); the pass that follows carries it out, in
place (local: replica processes; Ray: the Serve application's `num_replicas`). A scale-up the
runtime refuses (`scale_up_refusal`: not enough memory, or on Ray not enough free CPUs) is
logged and shown as the revision's phase message instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session

from greenroom.config import default_threads
from greenroom.deployments import service as deployments_service
from greenroom.deployments.states import DeploymentStatus
from greenroom.runtime.autoscale import AutoscalePolicy, LoadHistory, Sample, decide
from greenroom.runtime.base import ReplicaStatus, RevisionSpec, RuntimeBackend
from greenroom.runtime.handover import count_change_only
from greenroom.serving.reports import fresh_reports
from greenroom.signals import Signals, Topic
from greenroom.store.db import Store, utcnow
from greenroom.workloads import service as workloads_service
from greenroom.workloads.schemas import LiveHealth
from greenroom.workloads.states import RevisionPhase

log = logging.getLogger("greenroom.reconcile")
# The runtime targets whose backend changes a replica count in place (adds replicas, or drains
# the surplus): the local one, and Ray, which sets the Serve application's `num_replicas` (its
# router calls replicas directly, so Serve's own autoscaler would see no load). A revision with
# a range on any other target keeps its count.
IN_PLACE_TARGETS = frozenset({"local", "ray"})


class DesiredRevision(Protocol):
    """What the reconciler reads of a revision the workloads service returns."""

    id: str
    model_path: str
    content_hash: str
    engine: str
    config: dict[str, Any]
    desired_replicas: int
    runtime: str
    priority: str
    replica_secret: str


def revision_spec(revision: DesiredRevision) -> RevisionSpec:
    config = revision.config
    return RevisionSpec(
        revision_id=revision.id,
        model_path=Path(revision.model_path),
        content_hash=revision.content_hash,
        engine=revision.engine,
        quantization=config.get("quantization", "none"),
        replicas=revision.desired_replicas,
        threads=config.get("threads") or default_threads(),
        gpu=config.get("gpu", 0),
        environment=dict(config.get("additional_envs") or {}),
        runtime=revision.runtime,
        max_batch_size=config.get("max_batch_size", 32),
        priority=revision.priority or "normal",
        secret=revision.replica_secret,
    )


# ----- deciding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one pass asks of the backend: revisions to start (not running), to update (running
    another spec: restarted with the desired one) and to stop (running, not desired)."""

    start: tuple[RevisionSpec, ...] = ()
    update: tuple[RevisionSpec, ...] = ()
    stop: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.start or self.update or self.stop)


def plan(desired: Iterable[RevisionSpec], running: Mapping[str, RevisionSpec]) -> Plan:
    """Desired minus actual, apart from acting. Specs compare by what a revision runs (its
    secret takes no part: an adopted Ray application's spec has none)."""
    wanted = {spec.revision_id: spec for spec in desired}
    start = tuple(spec for rid, spec in wanted.items() if rid not in running)
    update = tuple(spec for rid, spec in wanted.items() if rid in running and running[rid] != spec)
    stop = tuple(sorted(rid for rid in running if rid not in wanted))
    return Plan(start=start, update=update, stop=stop)


async def act(runtime: RuntimeBackend, step: Plan) -> None:
    """Carry a plan out: stops first (they free what the starts need), then updates and starts.
    A request that fails is logged and the others still run; the next pass retries it."""
    for revision_id in step.stop:
        log.info("stopping the replicas of revision %s", revision_id)
        await _attempt(runtime.stop_revision(revision_id), "stopping", revision_id)
    running = runtime.running()
    for spec in step.update:
        if count_change_only(running.get(spec.revision_id), spec):
            log.info("scaling revision %s to %d replica(s)", spec.revision_id, spec.replicas)
        else:
            log.info("updating revision %s to its new spec", spec.revision_id)
        await _attempt(runtime.start_revision(spec), "updating", spec.revision_id)
    for spec in step.start:
        log.info("starting %d replica(s) of revision %s", spec.replicas, spec.revision_id)
        await _attempt(runtime.start_revision(spec), "starting", spec.revision_id)


async def _attempt(request: Any, doing: str, revision_id: str) -> None:
    try:
        await request
    except Exception:
        log.exception("%s revision %s failed", doing, revision_id)


# ----- the loop ----------------------------------------------------------------------------------


class Reconciler:
    def __init__(
        self,
        store: Store,
        runtime: RuntimeBackend,
        signals: Signals,
        *,
        target: str | None = None,
        lost_after_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lost_after_s = lost_after_s
        self._clock = clock
        self._load: dict[str, LoadHistory] = {}  # autoscaled revisions' samples
        self._refused: dict[str, str] = {}  # autoscaled revisions refused a scale-up: why
        self._fixed: set[str] = set()  # revisions with a range on a runtime that cannot scale
        self._down_since: dict[str, datetime] = {}  # live revisions with no ready replica
        self.store = store
        self.runtime = runtime
        # the runtime targets (`local`, `ray`) whose revisions it reconciles
        self.targets = {target} if target else set(getattr(runtime, "targets", {runtime.name}))
        self.signals = signals
        self._dirty: set[str] = set()
        self._report_now = asyncio.Event()
        runtime.subscribe(self._on_runtime_change)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        reporter = asyncio.create_task(self._report_loop())
        try:
            with self.signals.listen(Topic.DESIRED) as desired:
                while True:
                    try:
                        await self.autoscale_once()
                    except Exception:
                        log.exception("autoscaling pass failed")
                    try:
                        await self.reconcile_once()
                    except Exception:  # the loop must survive a bad pass; the next one retries
                        log.exception("reconcile pass failed")
                    await desired.wait()  # at once if the desired state changed meanwhile
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    async def reconcile_once(self) -> None:
        """One pass: observe the target and the actual state, decide, act."""
        desired = await asyncio.to_thread(self._desired_specs)
        await act(self.runtime, plan(desired, self.runtime.running()))

    def _desired_specs(self) -> list[RevisionSpec]:
        with self.store.session_scope() as session:
            revisions = workloads_service.desired_revisions(session, runtimes=self.targets)
            return [revision_spec(r) for r in revisions]

    # ----- autoscaling -----------------------------------------------------------------------
    async def autoscale_once(self) -> dict[str, int]:
        """Sample the load of every autoscaled revision, decide, and write the counts that
        change (returned by revision id); the next `reconcile_once` carries them out."""
        scaled, load = await asyncio.to_thread(self._autoscaled)
        now = self._clock()
        changes: dict[str, int] = {}
        refusals: dict[str, str] = {}
        for revision_id, (spec, policy) in scaled.items():
            history = self._load.setdefault(revision_id, LoadHistory())
            keep_s = max(policy.upscale_delay_s, policy.downscale_delay_s)
            history.add(Sample(at=now, ongoing=load.get(revision_id, 0.0)), keep_s=keep_s)
            current = spec.replicas
            wanted = decide(history.samples, current=current, policy=policy, now=now)
            if wanted > current and (
                reason := self.runtime.scale_up_refusal(spec, wanted - current)
            ):
                if revision_id not in self._refused:  # once, not every pass
                    log.warning("revision %s: %s", revision_id, reason)
                    refusals[revision_id] = reason
                self._refused[revision_id] = reason
                continue
            self._refused.pop(revision_id, None)
            if wanted != current:
                log.info(
                    "revision %s: %d → %d replicas (%.1f ongoing requests, target %.1f each)",
                    revision_id,
                    current,
                    wanted,
                    load.get(revision_id, 0.0),
                    policy.target_ongoing_requests,
                )
                changes[revision_id] = wanted
        for revision_id in set(self._load) - set(scaled):
            del self._load[revision_id]
            self._refused.pop(revision_id, None)
        if changes or refusals:
            await asyncio.to_thread(self._write_scaling, changes, refusals)
        for revision_id in changes:
            self._load[revision_id].reset()  # each step waits its delay afresh
        return changes

    def _autoscaled(
        self,
    ) -> tuple[dict[str, tuple[RevisionSpec, AutoscalePolicy]], dict[str, float]]:
        """The serving revisions with an autoscaling range (spec and policy) and the ongoing
        requests of each, summed over the routers that reported recently."""
        with self.store.session_scope() as session:
            scaled = {}
            for revision in workloads_service.desired_revisions(session, runtimes=self.targets):
                policy = AutoscalePolicy.from_config(revision.config)
                if policy is None or not RevisionPhase(revision.phase).is_serving():
                    continue
                if revision.runtime not in IN_PLACE_TARGETS:
                    if revision.id not in self._fixed:
                        self._fixed.add(revision.id)
                        log.warning(
                            "revision %s: not autoscaled: the %s runtime cannot change its "
                            "replica count in place yet",
                            revision.id,
                            revision.runtime,
                        )
                    continue
                scaled[revision.id] = (revision_spec(revision), policy)
            load: dict[str, float] = {}
            if scaled:
                for report in fresh_reports(session):
                    for revision_id, ongoing in (report.in_flight or {}).items():
                        if revision_id in scaled:
                            load[revision_id] = load.get(revision_id, 0.0) + float(ongoing)
            return scaled, load

    def _write_scaling(self, changes: dict[str, int], refusals: dict[str, str]) -> None:
        with self.store.session_scope() as session:
            for revision_id, replicas in changes.items():
                workloads_service.scale_replicas(
                    session, revision_id=revision_id, replicas=replicas
                )
            for revision_id, reason in refusals.items():
                workloads_service.record_scaling_refused(
                    session, revision_id=revision_id, reason=reason
                )

    # ----- reporting -----------------------------------------------------------------------
    def _on_runtime_change(self, revision_id: str) -> None:
        self._dirty.add(revision_id)
        self._report_now.set()

    async def first_pass(self) -> None:
        """At election, before this process's router reads the store: one pass, and its
        replicas reported at once. The reports a previous leader of a process-bound target
        left (a restart) name replicas that died with it; a router that read them would send
        its first requests to ports nobody listens on."""
        self._loop = asyncio.get_running_loop()
        await self.reconcile_once()
        await self.report_dirty()

    async def report_dirty(self) -> None:
        """Write the reports of the revisions whose replicas changed; raises when the store
        does (they stay to be written)."""
        self._report_now.clear()
        dirty, self._dirty = self._dirty, set()
        reports = {rid: self.runtime.replicas(rid) for rid in dirty}
        try:
            await asyncio.to_thread(self._write_reports, reports)
        except BaseException:
            self._dirty |= dirty
            raise
        self.signals.notify(Topic.REPORTED)

    async def _report_loop(self) -> None:
        while True:
            await self._report_now.wait()
            try:
                await self.report_dirty()
            except Exception:
                log.exception("writing replica reports failed; retrying")
                await asyncio.sleep(1)
                self._report_now.set()

    def _write_reports(self, reports: dict[str, list[ReplicaStatus]]) -> None:
        now = utcnow()
        with self.store.session_scope() as session:
            for revision_id, replicas in reports.items():
                health = workloads_service.record_replicas(
                    session,
                    revision_id=revision_id,
                    replicas=[replica_report(r) for r in replicas],
                    ready=sum(r.state.is_ready() for r in replicas),
                    now=now,
                )
                if health is not None:
                    self._record_health(session, health, now)

    def _record_health(self, session: Session, health: LiveHealth, now: datetime) -> None:
        """The live revision's deployment version: LOST once none of its replicas has been
        ready for `lost_after_s`, READY again as soon as one is."""
        if health.ready >= health.wanted or health.ready > 0:
            self._down_since.pop(health.revision_id, None)
            deployments_service.record_recovered(session, revision_id=health.revision_id)
            return
        down_since = self._down_since.setdefault(health.revision_id, now)
        if (now - down_since).total_seconds() < self.lost_after_s:
            self._recheck_later(health.revision_id)
            return
        deployments_service.record_status(
            session,
            revision_id=health.revision_id,
            status=DeploymentStatus.LOST,
            message="Every replica of the live revision is down: "
            f"{health.reasons or 'no replica ready'}",
        )

    def _recheck_later(self, revision_id: str) -> None:
        def recheck() -> None:
            self._dirty.add(revision_id)
            self._report_now.set()

        self._loop.call_soon_threadsafe(self._loop.call_later, self.lost_after_s, recheck)


def replica_report(replica: ReplicaStatus) -> dict[str, object]:
    return {
        "replica_id": replica.replica_id,
        "state": replica.state.value,
        "host": replica.host,
        "port": replica.port,
        "restarts": replica.restarts,
        "message": replica.message,
    }
