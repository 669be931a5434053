"""The supervisor's reconcile loop: desired replicas in the store → the runtime → reports back.

Like the Serve controller: the target comes from the store (revisions with `desired_replicas`
> 0 for this runtime), the actual state from the backend; the difference becomes starts and
stops. One pass is idempotent and also runs at start-up, so after a restart of `greenroom serve`
the replicas of live revisions come back. Every replica change the backend reports is written
to the revision's row (`ready_replicas`, `replicas`), where the worker waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from greenroom.config import default_threads
from greenroom.deployments.models import Deployment
from greenroom.deployments.states import DeploymentStatus, set_status
from greenroom.runtime.base import ReplicaStatus, RevisionSpec, RuntimeBackend
from greenroom.signals import Signals, Topic
from greenroom.store.db import Store, utcnow
from greenroom.workloads.models import LiveRevision, Revision
from greenroom.workloads.states import RevisionPhase, set_phase

log = logging.getLogger("greenroom.reconcile")


def revision_spec(revision: Revision) -> RevisionSpec:
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
        secret=revision.replica_secret,
    )


@dataclass(frozen=True)
class Plan:
    """What one pass changes: revisions to (re)start with their spec, revisions to stop."""

    start: list[RevisionSpec]
    stop: list[str]


def plan(desired: list[RevisionSpec], running: set[str]) -> Plan:
    """Deciding, apart from acting: start every desired spec (a no-op when unchanged), stop the
    rest."""
    wanted = {spec.revision_id for spec in desired}
    return Plan(start=desired, stop=sorted(running - wanted))


class Reconciler:
    def __init__(
        self,
        store: Store,
        runtime: RuntimeBackend,
        signals: Signals,
        *,
        target: str | None = None,
        lost_after_s: float = 10.0,
    ) -> None:
        self.lost_after_s = lost_after_s
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
            while True:
                try:
                    await self.reconcile_once()
                except Exception:  # the loop must survive a bad pass; the next one retries
                    log.exception("reconcile pass failed")
                await self.signals.wait(Topic.DESIRED)
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    async def reconcile_once(self) -> None:
        desired = await asyncio.to_thread(self._desired_specs)
        step = plan(desired, set(self.runtime.revisions()))
        for revision_id in step.stop:
            log.info("stopping the replicas of revision %s", revision_id)
            await self.runtime.stop_revision(revision_id)
        for spec in step.start:
            await self.runtime.start_revision(spec)

    def _desired_specs(self) -> list[RevisionSpec]:
        with self.store.session_scope() as session:
            revisions = session.scalars(
                select(Revision).where(
                    Revision.desired_replicas > 0, Revision.runtime.in_(self.targets)
                )
            ).all()
            return [revision_spec(r) for r in revisions]

    # ----- reporting -----------------------------------------------------------------------
    def _on_runtime_change(self, revision_id: str) -> None:
        self._dirty.add(revision_id)
        self._report_now.set()

    async def _report_loop(self) -> None:
        while True:
            await self._report_now.wait()
            self._report_now.clear()
            dirty, self._dirty = self._dirty, set()
            reports = {rid: self.runtime.replicas(rid) for rid in dirty}
            try:
                await asyncio.to_thread(self._write_reports, reports)
            except Exception:
                log.exception("writing replica reports failed; retrying")
                self._dirty |= dirty
                await asyncio.sleep(1)
                self._report_now.set()
                continue
            self.signals.notify(Topic.REPORTED)

    def _write_reports(self, reports: dict[str, list[ReplicaStatus]]) -> None:
        now = utcnow()
        with self.store.session_scope() as session:
            for revision_id, replicas in reports.items():
                revision = session.get(Revision, revision_id)
                if revision is None:
                    continue
                revision.replicas = [replica_report(r) for r in replicas]
                revision.ready_replicas = sum(r.state.is_ready() for r in replicas)
                revision.reported_at = now
                self._record_health(session, revision, now)

    def _record_health(self, session: Session, revision: Revision, now: datetime) -> None:
        """A live revision: Running with every replica ready, Degraded with fewer; its deployment
        version LOST once none has been ready for `lost_after_s`, READY again on recovery."""
        live = session.get(LiveRevision, revision.served_name)
        if live is None or live.revision_id != revision.id:
            return
        if revision.phase not in (RevisionPhase.RUNNING, RevisionPhase.DEGRADED):
            return
        deployment = session.scalars(
            select(Deployment).where(Deployment.revision_id == revision.id)
        ).first()
        ready, wanted = revision.ready_replicas, revision.desired_replicas
        if ready >= wanted:
            self._down_since.pop(revision.id, None)
            set_phase(revision, RevisionPhase.RUNNING)
            if deployment is not None and deployment.status == DeploymentStatus.LOST:
                set_status(deployment, DeploymentStatus.READY, "Replicas are ready again")
            return
        reasons = "; ".join(sorted({r["message"] for r in revision.replicas if r["message"]}))
        set_phase(
            revision, RevisionPhase.DEGRADED, f"{ready} of {wanted} replicas ready: {reasons}"
        )
        if ready > 0:
            self._down_since.pop(revision.id, None)
            if deployment is not None and deployment.status == DeploymentStatus.LOST:
                set_status(deployment, DeploymentStatus.READY, "Replicas are ready again")
            return
        down_since = self._down_since.setdefault(revision.id, now)
        if (now - down_since).total_seconds() < self.lost_after_s:
            self._recheck_later(revision.id)
        elif deployment is not None:
            set_status(
                deployment,
                DeploymentStatus.LOST,
                f"Every replica of the live revision is down: {reasons or 'no replica ready'}",
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
