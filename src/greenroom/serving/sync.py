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

The store is read through the workloads and registry services (live pointers, revisions, the
embedding model); the router reports are serving's own rows (`greenroom.serving.models`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from greenroom.registry import service as registry_service
from greenroom.registry.weights import inspect_model
from greenroom.runtime.base import ReplicaStatus
from greenroom.serving.models import RouterReport
from greenroom.serving.replicas import StoreReplicas, replicas_from_report
from greenroom.serving.router import Router, ServedRevision
from greenroom.signals import Signals, Topic
from greenroom.store.db import Store, utcnow
from greenroom.workloads import service as workloads_service

if TYPE_CHECKING:  # the rows the workloads service hands us
    from greenroom.workloads.models import Revision

log = logging.getLogger("greenroom.router.sync")


@dataclass(frozen=True)
class LivePointer:
    served_name: str
    revision: ServedRevision


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
        self._last_report: tuple[dict, dict] | None = None
        self._pass_lock = asyncio.Lock()
        self._passes_started = 0
        # a drain waits on our report: send it as soon as a retired revision's last batch is done
        # (a wake-up of this process's pass only; the report itself notifies ROUTERS)
        router.on_drained(lambda _revision_id: signals.wake(Topic.LIVE))
        router.on_missed_switch(self.refresh)

    async def run(self) -> None:
        while True:
            try:
                await self.sync_once()
                await self.report()
            except Exception:  # keep following the store; the next pass retries
                log.exception("router sync failed")
            await self.signals.wait_any(self._topics)

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
        known = self.router.revision_ids()
        pointers, reports = await asyncio.to_thread(self._read_store, known)
        if self.replicas is not None:
            self.replicas.update(reports)
        live_names = set()
        for pointer in pointers:
            live_names.add(pointer.served_name)
            current = self.router.live(pointer.served_name)
            if current is None or current.revision_id != pointer.revision.revision_id:
                self.router.add_revision(pointer.revision)
                self.router.set_live(pointer.served_name, pointer.revision.revision_id)
                log.info(
                    "'%s' is now served by %s", pointer.served_name, pointer.revision.revision_id
                )
        for name in set(self.router.live_routes()) - live_names:
            self.router.remove(name)
            log.info("'%s' is no longer served", name)
        live_ids = {route.revision_id for route in self.router.live_routes().values()}
        for revision_id in self.router.revision_ids() - live_ids:
            if self.router.in_flight(revision_id) == 0:
                await self.router.drop_revision(revision_id)

    def _read_store(
        self, known: set[str]
    ) -> tuple[list[LivePointer], dict[str, list[ReplicaStatus]]]:
        """The live pointers and, when feeding a `StoreReplicas`, the replica reports of the
        live revisions and of those the router still knows (draining ones)."""
        with self.store.session_scope() as session:
            pointers = [
                LivePointer(live.served_name, self._served_revision(session, revision))
                for live, revision in workloads_service.live_pointers(session)
            ]
            reports: dict[str, list[ReplicaStatus]] = {}
            if self.replicas is not None:
                wanted = known | {pointer.revision.revision_id for pointer in pointers}
                revisions = workloads_service.revisions_by_id(session, revision_ids=wanted)
                reports = {r.id: replicas_from_report(r.id, r.replicas or []) for r in revisions}
            return pointers, reports

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
            replica_secret=revision.replica_secret,
        )
        self._known[revision.id] = served
        return served

    async def report(self) -> None:
        live = {name: route.revision_id for name, route in self.router.live_routes().items()}
        in_flight = {rid: self.router.in_flight(rid) for rid in self.router.revision_ids()}
        await asyncio.to_thread(self._write_report, live, in_flight)
        if (live, in_flight) != self._last_report:
            self._last_report = (live, in_flight)
            self.signals.notify(Topic.ROUTERS)

    def _write_report(self, live: dict[str, str], in_flight: dict[str, int]) -> None:
        with self.store.session_scope() as session:
            report = session.get(RouterReport, self.router_id)
            if report is None:
                report = RouterReport(router_id=self.router_id)
                session.add(report)
            report.live, report.in_flight, report.heartbeat_at = live, in_flight, utcnow()

    def forget_report(self) -> None:
        """On shutdown: a router that stops must not hold up drains."""
        with self.store.session_scope() as session:
            report = session.get(RouterReport, self.router_id)
            if report is not None:
                session.delete(report)
