"""Keep the router on the live-revision pointers of the store, and report back to it.

Each API process runs one `RouterSync`: it reads `live_revisions`, prepares revisions the router
does not know yet and switches names with `set_live`, removes names that are no longer live, and
forgets old revisions once nothing is in flight to them. It also writes the router's report
(live revision per name, batches in flight per revision) that the rollout's drain waits on.

In a process without a supervisor (`GREENROOM_SUPERVISOR=false`) it also feeds the router's
replica source from the store (`StoreReplicas`): every pass reads the replica reports of the
revisions the router serves, and REPORTED signals start a pass as LIVE ones do. Either way the
router learns each revision's replica secret from its row here, as the supervisor does.

The router also asks for a pass itself (`refresh`, through `Router.on_missed_switch`) when a
request reaches a revision that cannot serve it: a switch this sync missed (its pass had not run
yet, or it was held up) is then followed at once, and the request is sent to the live revision.
Passes never overlap; concurrent `refresh` calls share one pass.

**Migrations.** Each pass also reads the migrations the store has (`migrations.service.followed`):
the staged revision of each name is prepared beside the live one and never dropped while it is
staged, the router follows each name's stage and adapter (`Router.set_migration`), and the
report says, per name, which staged revision and which adapter this router has (`pinned`): the
staged deploy and the promotion wait on it. Live pointers and migrations of one pass come from
one read and are applied without a pause in between, so a promotion's switch (live pointer and
stage together) is one atomic change for requests here too. Every few seconds
(`shadow_summary_interval_s`) the router's shadow recorders are summarised into the store
(`migrations.service.write_shadow_summary`), which the migration API merges.

**Traffic.** Every `traffic_summary_interval_s` the buckets of the router's traffic recorder that
changed since the last write are written to the store, one row per (router id, 10-s bucket), and
rows past the hour are deleted (`serving.traffic.write_traffic_summaries`); `GET /v1/traffic`
merges them. A failed write counts its buckets as changed again: the next one retries them.

The store is read through the workloads and registry services (live pointers, revisions, the
embedding model); the router reports are serving's own rows (`greenroom.serving.models`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from greenroom.migrations import service as migrations_service
from greenroom.migrations.schemas import MigrationFollow
from greenroom.registry import service as registry_service
from greenroom.registry.weights import inspect_model
from greenroom.runtime.base import ReplicaStatus
from greenroom.serving.models import RouterReport
from greenroom.serving.replicas import StoreReplicas, replicas_from_report
from greenroom.serving.router import Router, ServedRevision
from greenroom.serving.traffic import write_traffic_summaries
from greenroom.signals import Signals, Topic
from greenroom.store.db import Store, utcnow
from greenroom.workloads import service as workloads_service

if TYPE_CHECKING:  # the rows the workloads service hands us
    from greenroom.workloads.models import Revision

log = logging.getLogger("greenroom.router.sync")

# how long a revision whose weights could not be read waits before a pass tries it again
UNPREPARABLE_RETRY_S = 10.0


@dataclass(frozen=True)
class LivePointer:
    served_name: str
    revision: ServedRevision


@dataclass
class StoreView:
    """What one pass reads from the store, in one session."""

    pointers: list[LivePointer]
    replicas: dict[str, list[ReplicaStatus]] = field(default_factory=dict)
    migrations: list[MigrationFollow] = field(default_factory=list)
    staged: list[ServedRevision] = field(default_factory=list)  # the revisions to prepare
    unservable: set[str] = field(default_factory=set)  # live names whose revision is unreadable


def new_router_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class RouterSync:
    def __init__(
        self,
        store: Store,
        router: Router,
        signals: Signals,
        *,
        replicas: StoreReplicas | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.signals = signals
        self.replicas = replicas  # fed from the store when this process runs no supervisor
        self._topics = (Topic.LIVE,) if replicas is None else (Topic.LIVE, Topic.REPORTED)
        self.router_id = new_router_id()
        self._known: dict[str, ServedRevision] = {}  # revision id -> prepared revision
        self._last_report: tuple[dict, dict, dict] | None = None
        self._summaries_written_at = float("-inf")  # monotonic time of the last shadow write
        self._traffic_written_at = float("-inf")  # monotonic time of the last traffic write
        self._pass_lock = asyncio.Lock()
        self._passes_started = 0
        self.followed_once = False  # `/readyz` waits for the first pass: what is live, known
        self.unservable: set[str] = set()  # live names the last pass could not prepare
        # revision id -> monotonic time of its last failed preparation (logged once each)
        self._unpreparable: dict[str, float] = {}
        self.unpreparable_retry_s = UNPREPARABLE_RETRY_S
        # a drain waits on our report: send it as soon as a retired revision's last batch is done
        # (a wake-up of this process's pass only; the report itself notifies ROUTERS)
        router.on_drained(lambda _revision_id: signals.wake(Topic.LIVE))
        router.on_missed_switch(self.refresh)

    async def run(self) -> None:
        with self.signals.listen(*self._topics) as changes:  # a change during a pass is kept
            while True:
                try:
                    await self.sync_once()
                    await self.report()
                    await self.write_shadow_summaries()
                    await self.write_traffic()
                except Exception:  # keep following the store; the next pass retries
                    log.exception("router sync failed")
                await changes.wait()

    async def sync_once(self) -> None:
        """One pass: follow the store's live pointers (never two passes at once)."""
        async with self._pass_lock:
            self._passes_started += 1
            await self._follow_store()

    async def refresh(self) -> None:
        """Bring the router up to date with the store: one pass, unless a pass that started
        after this call has finished meanwhile (concurrent callers share it)."""
        asked_at = self._passes_started
        async with self._pass_lock:
            if self._passes_started > asked_at:
                return
            self._passes_started += 1
            await self._follow_store()

    async def _follow_store(self) -> None:
        view = await asyncio.to_thread(self._read_store, self.router.revision_ids())
        if self.replicas is not None:
            self.replicas.update(view.replicas)
        # from here to the drops, no pause: requests see live pointers and stages change together
        for staged in view.staged:
            self.router.add_revision(staged)
        live_names = set(view.unservable)  # kept as they are: not moved, not removed
        self.unservable = view.unservable
        for pointer in view.pointers:
            live_names.add(pointer.served_name)
            current = self.router.live(pointer.served_name)
            if current is None or current.revision_id != pointer.revision.revision_id:
                self.router.add_revision(pointer.revision)
                self.router.set_live(pointer.served_name, pointer.revision.revision_id)
                log.info(
                    "'%s' is now served by %s", pointer.served_name, pointer.revision.revision_id
                )
        self._follow_migrations(view.migrations)
        for name in set(self.router.live_routes()) - live_names:
            self.router.remove(name)
            log.info("'%s' is no longer served", name)
        kept = {route.revision_id for route in self.router.live_routes().values()}
        kept |= self.router.staged_revision_ids()
        for revision_id in self.router.revision_ids() - kept:
            if self.router.in_flight(revision_id) == 0:
                await self.router.drop_revision(revision_id)
        self.followed_once = True

    def _follow_migrations(self, follows: list[MigrationFollow]) -> None:
        followed = self.router.migrations()
        for follow in follows:
            before = followed.get(follow.served_name)
            self.router.set_migration(follow.served_name, follow)
            if before is None or (before.stage, before.staged_revision_id) != (
                follow.stage,
                follow.staged_revision_id,
            ):
                log.info(
                    "'%s' is in a migration: %s (staged %s)",
                    follow.served_name,
                    follow.stage,
                    follow.staged_revision_id,
                )
        for name in followed.keys() - {follow.served_name for follow in follows}:
            self.router.clear_migration(name)
            log.info("'%s' is in no migration any more", name)

    def _read_store(self, known: set[str]) -> StoreView:
        """The live pointers, the migrations with their staged revisions and, when feeding a
        `StoreReplicas`, the replica reports of the live and staged revisions and of those the
        router still knows (draining ones)."""
        with self.store.session_scope() as session:
            view = StoreView(pointers=[], migrations=migrations_service.followed(session))
            for live, revision in workloads_service.live_pointers(session):
                served = self._prepared(session, revision, "live")
                if served is None:  # one unreadable model must not stop the others' serving
                    view.unservable.add(live.served_name)
                else:
                    view.pointers.append(LivePointer(live.served_name, served))
            staged_ids = {f.staged_revision_id for f in view.migrations if f.staged_revision_id}
            for revision in workloads_service.revisions_by_id(session, revision_ids=staged_ids):
                # unreadable weights: the live names keep following, the stage waits for them
                if (staged := self._prepared(session, revision, "staged")) is not None:
                    view.staged.append(staged)
            if self.replicas is not None:
                wanted = known | staged_ids | {p.revision.revision_id for p in view.pointers}
                revisions = workloads_service.revisions_by_id(session, revision_ids=wanted)
                view.replicas = {
                    r.id: replicas_from_report(r.id, r.replicas or []) for r in revisions
                }
            return view

    def _prepared(self, session: Session, revision: Revision, role: str) -> ServedRevision | None:
        """The (`role`: live or staged) revision ready for the router, or None when its weights
        cannot be read (logged once per revision). A revision that failed is tried again
        `unpreparable_retry_s` later, not on every pass: a store with many unreadable revisions
        would otherwise cost a registry read and a look at the disk each, every second."""
        failed_at = self._unpreparable.get(revision.id)
        if failed_at is not None and time.monotonic() - failed_at < self.unpreparable_retry_s:
            return None
        try:
            served = self._served_revision(session, revision)
        except Exception:
            if failed_at is None:
                log.exception("the %s revision %s cannot be prepared", role, revision.id)
            self._unpreparable[revision.id] = time.monotonic()
            return None
        self._unpreparable.pop(revision.id, None)
        return served

    def _served_revision(self, session: Session, revision: Revision) -> ServedRevision:
        if known := self._known.get(revision.id):
            return known
        model = registry_service.get(session, embedding_model_id=revision.embedding_model_id)
        config = revision.config
        served = ServedRevision(
            revision_id=revision.id,
            served_name=revision.served_name,
            embedding_model_id=revision.embedding_model_id,
            content_hash=revision.content_hash,
            info=inspect_model(Path(revision.model_path)),
            max_batch_size=config.get("max_batch_size", 32),
            max_batch_tokens=config.get("max_batch_tokens", 8192),
            max_queue=config.get("max_queue", 1024),
            allow_dimensions=bool(model and model.allow_dimensions),
            cache_mib=config.get("cache_mib") or 0,
            replica_secret=revision.replica_secret,
        )
        self._known[revision.id] = served
        return served

    async def report(self) -> None:
        live = {name: route.revision_id for name, route in self.router.live_routes().items()}
        in_flight = {rid: self.router.in_flight(rid) for rid in self.router.revision_ids()}
        pinned = self.router.pinned_report()
        await asyncio.to_thread(self._write_report, live, in_flight, pinned)
        if (live, in_flight, pinned) != self._last_report:
            self._last_report = (live, in_flight, pinned)
            self.signals.notify(Topic.ROUTERS)

    def _write_report(
        self, live: dict[str, str], in_flight: dict[str, int], pinned: dict[str, dict]
    ) -> None:
        with self.store.session_scope() as session:
            report = session.get(RouterReport, self.router_id)
            if report is None:
                report = RouterReport(router_id=self.router_id)
                session.add(report)
            report.live, report.in_flight, report.pinned = live, in_flight, pinned
            report.heartbeat_at = utcnow()

    async def write_shadow_summaries(self, *, force: bool = False) -> None:
        """Write the summary of each shadow recorder to the store, at most every
        `shadow_summary_interval_s` (unless `force`), and set the shadow gauges."""
        now = time.monotonic()
        interval = self.router.settings.shadow_summary_interval_s
        if not force and now - self._summaries_written_at < interval:
            return
        self._summaries_written_at = now
        summaries = {
            name: await recorder.summary()
            for name, recorder in self.router.shadow_recorders().items()
        }
        self._set_shadow_gauges(summaries)
        if summaries:
            await asyncio.to_thread(self._write_summaries, summaries)

    def _set_shadow_gauges(self, summaries: dict[str, dict]) -> None:
        metrics = self.router.metrics
        for name, summary in summaries.items():
            for gauge, key in (
                (metrics.shadow_neighbour_overlap, "neighbour_overlap_at_10"),
                (metrics.shadow_mean_cosine, "mean_cosine"),
            ):
                if summary[key] is None:
                    gauge.labels(name).set(float("nan"))
                else:
                    gauge.labels(name).set(summary[key])

    def _write_summaries(self, summaries: dict[str, dict]) -> None:
        with self.store.session_scope() as session:
            for name, summary in summaries.items():
                migrations_service.write_shadow_summary(
                    session, served_name=name, router_id=self.router_id, summary=summary
                )

    async def write_traffic(self, *, force: bool = False) -> None:
        """Write the traffic buckets that changed since the last write, at most every
        `traffic_summary_interval_s` (unless `force`); nothing when none changed."""
        now = time.monotonic()
        interval = self.router.settings.traffic_summary_interval_s
        if not force and now - self._traffic_written_at < interval:
            return
        self._traffic_written_at = now
        changed = self.router.traffic.take_changed()  # on the loop: the recorder's own thread
        if not changed:
            return
        try:
            await asyncio.to_thread(self._write_traffic, changed)
        except BaseException:
            self.router.traffic.mark_changed(changed)
            raise

    def _write_traffic(self, changed: dict[int, list[dict]]) -> None:
        with self.store.session_scope() as session:
            write_traffic_summaries(
                session, router_id=self.router_id, buckets=changed, now=time.time()
            )

    def forget_report(self) -> None:
        """On shutdown: a router that stops must not hold up drains."""
        with self.store.session_scope() as session:
            report = session.get(RouterReport, self.router_id)
            if report is not None:
                session.delete(report)
