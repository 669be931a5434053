"""The composition root: the parts of `greenroom serve` and of `greenroom worker`, built once.

`build_parts(settings, runtime, role=...)` makes the objects and does no I/O beyond the data dir;
`Parts.start()` brings them up in order and `Parts.stop()` takes them down in reverse:

    serve:  store (migrated) · admin token · model store collection · LISTEN/NOTIFY bridge ·
            one supervisor per runtime target (greenroom.leadership: elected, one per store) ·
            router + its sync with the store · embedded worker · first-start bootstrap
    worker: store (migrated) · LISTEN/NOTIFY bridge · worker

`app.create_app` runs a serve `Parts` in its lifespan and puts the parts the views read on
`app.state`; `cli.worker` runs a worker `Parts` until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from greenroom.auth.service import Authenticator
from greenroom.bootstrap import BOOTSTRAP_LOCK, StartupState, bootstrap, ensure_admin_token
from greenroom.config import Settings
from greenroom.leadership import Supervisor, data_dir_lock, exclusive
from greenroom.metrics import Metrics
from greenroom.notify import PostgresBridge
from greenroom.registry.flows import collect_quietly
from greenroom.rollout.runner import TaskRunner
from greenroom.runtime.base import RuntimeBackend
from greenroom.runtime.local import LocalRuntime
from greenroom.runtime.targets import RuntimeTargets
from greenroom.serving.replicas import StoreReplicas
from greenroom.serving.router import Router
from greenroom.serving.sync import RouterSync
from greenroom.signals import Signals
from greenroom.store.db import Store, ensure_private_dir
from greenroom.store.migrations import upgrade
from greenroom.worker.loop import Worker, default_worker_id

log = logging.getLogger("greenroom.compose")
Role = Literal["serve", "worker"]
WORKER_STOP_GRACE_S = 5.0  # a stopping worker lets running tasks end this long, then hands over


@dataclass
class Serving:
    """The parts only `greenroom serve` has."""

    runtime: RuntimeBackend  # the default target's backend
    runtimes: RuntimeTargets
    router: Router
    sync: RouterSync
    supervisors: list[Supervisor]
    authenticator: Authenticator
    startup: StartupState = field(default_factory=StartupState)


@dataclass
class Parts:
    settings: Settings
    store: Store
    signals: Signals
    metrics: Metrics
    bridge: PostgresBridge | None
    worker: Worker | None
    serving: Serving | None
    _loops: list[asyncio.Task[None]] = field(default_factory=list)

    # ----- start -----------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(upgrade, self.store.url)
        if self.serving is not None:
            await asyncio.to_thread(self._first_start)
        if self.bridge is not None:
            await self.bridge.start()  # other processes' changes wake this one (LISTEN/NOTIFY)
        if self.serving is not None:
            for supervisor in self.serving.supervisors:
                await supervisor.start()  # a lone server leads before it serves
            self._spawn(self.serving.sync.run(), "router sync")
        if self.worker is not None:
            self._spawn(self.worker.run(), "worker")
        if self.serving is not None:
            self._start_bootstrap(self.serving.startup)

    def _first_start(self) -> None:
        ensure_admin_token(self.settings, self.store)  # before anything else is served
        # model copies that no model or revision names any more (a crash between a delete and
        # its collection leaves some behind)
        with exclusive(data_dir_lock(self.settings, self.store, BOOTSTRAP_LOCK)):
            collect_quietly(self.store, self.settings.resolved_data_dir())

    def _start_bootstrap(self, startup: StartupState) -> None:
        if self.settings.default_model_id:
            self._spawn(bootstrap(self.settings, self.store, self.signals, startup), "bootstrap")
        else:
            startup.pending = None

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        self._loops.append(asyncio.create_task(coroutine, name=name))

    async def worker_stopped(self) -> None:
        """Return once the worker loop has ended (after `worker.stop()`)."""
        for task in self._loops:
            if task.get_name() == "worker":
                await asyncio.gather(task, return_exceptions=True)

    # ----- stop ------------------------------------------------------------------------------
    async def stop(self) -> None:
        if self.worker is not None:
            await self.worker.stop(WORKER_STOP_GRACE_S)
        serving = self.serving
        if serving is not None:  # a standby takes the lead while this one stops its replicas
            for supervisor in serving.supervisors:
                await supervisor.stop()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        if serving is not None:
            with contextlib.suppress(Exception):  # the last seconds of traffic, then goodbye
                await serving.sync.write_traffic(force=True)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(serving.sync.forget_report)
            await serving.router.close()
            await serving.runtimes.close()
        if self.bridge is not None:
            await self.bridge.stop()
        self.store.dispose()


def build_parts(
    settings: Settings, runtime: RuntimeBackend | None = None, *, role: Role = "serve"
) -> Parts:
    """The parts of one process; `runtime` replaces the default target's backend (tests)."""
    ensure_private_dir(settings.resolved_data_dir())  # 0700: token hashes, configs, logs
    store = Store(settings.resolved_database_url())
    signals, metrics = Signals(), Metrics()
    return Parts(
        settings=settings,
        store=store,
        signals=signals,
        metrics=metrics,
        bridge=PostgresBridge(store.url, signals) if store.is_postgres else None,
        worker=build_worker(settings, store, signals, metrics)
        if role == "worker" or settings.worker_enabled
        else None,
        serving=build_serving(settings, store, signals, metrics, runtime)
        if role == "serve"
        else None,
    )


def build_worker(settings: Settings, store: Store, signals: Signals, metrics: Metrics) -> Worker:
    runner = TaskRunner(store, signals, settings, metrics, worker_id=default_worker_id())
    return Worker(
        store,
        runner,
        worker_id=runner.worker_id,
        signals=signals,
        metrics=metrics,
        concurrency=settings.worker_concurrency,
        lease_s=settings.lease_s,
    )


def build_serving(
    settings: Settings,
    store: Store,
    signals: Signals,
    metrics: Metrics,
    runtime: RuntimeBackend | None,
) -> Serving:
    default = runtime or make_runtime(settings, settings.runtime)
    runtimes = build_runtimes(settings, default)
    # Whoever leads, every router routes to the replicas the leader reports to the store.
    reported = StoreReplicas()
    router = Router(reported, metrics, settings)
    metrics.watch(router, runtimes)
    supervisors = (
        [
            Supervisor(settings, store, runtimes, signals, target)
            for target in sorted(runtimes.targets)
        ]
        if settings.supervisor
        else []
    )
    return Serving(
        runtime=default,
        runtimes=runtimes,
        router=router,
        sync=RouterSync(store, router, signals, replicas=reported),
        supervisors=supervisors,
        authenticator=Authenticator(store),
    )


def build_runtimes(settings: Settings, default: RuntimeBackend) -> RuntimeTargets:
    """A revision runs on the backend its target names; the other one starts on first use (only
    where the operator enabled it: GREENROOM_EXTRA_RUNTIMES)."""
    other = "ray" if settings.runtime == "local" else "local"
    factories = (
        {other: lambda: make_runtime(settings, other)}
        if other in settings.enabled_runtimes()
        else {}
    )
    return RuntimeTargets(settings.runtime, default, factories)


def make_runtime(settings: Settings, target: str) -> RuntimeBackend:
    """The runtime backend of a target: `local` processes, or Ray Serve (the `ray` extra)."""
    if target == "ray":
        from greenroom.runtime.ray import RayRuntime

        return RayRuntime(settings)
    return LocalRuntime(settings)
