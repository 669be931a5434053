"""Leadership: one supervisor per runtime target among the `greenroom serve` processes of a store.

Every `greenroom serve` with `GREENROOM_SUPERVISOR` on campaigns, per runtime target it enables
(`local`, `ray`), for a named lock; the holder leads that target, which means it runs the target's
`Reconciler` (desired replicas in the store → the runtime → reports back). The others stand by
and try again every `GREENROOM_LEADER_RETRY_S` (1 s): when the leader dies, its lock frees itself
and a standby takes over within about that long.

- PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on a dedicated connection held
  while leading. The server drops the lock with the connection, so a leader killed by SIGKILL
  loses it at once; TCP keep-alives on that connection bound the time to notice a machine that
  vanished. The key is derived from the lock's name (`supervisor-<target>`).
- SQLite (one machine): `flock` on `<data dir>/<name>.lock`; the kernel drops it with the
  process.

A leader that loses its PostgreSQL connection reconnects and takes the lock again; it steps down
only when it finds the lock held by another process (while the store is unreachable it cannot
tell, and neither can anyone take the lead from it). Stepping down cancels the reconciler and,
for local replicas (which die with the process that owns them), stops them: the new leader starts
its own.

Routers do not follow leadership: with leadership in play every router reads the replicas it
sends batches to from the reports in the store (`serving.replicas.StoreReplicas`), written by
whichever process leads. The same kind of lock, taken blocking (`exclusive`), makes the
first-start bootstrap run once among processes that start together: an advisory lock on
PostgreSQL, a flock of the data dir itself on SQLite (`data_dir_lock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import psycopg

from greenroom.config import Settings
from greenroom.notify import libpq_url
from greenroom.runtime.base import ReplicaStatus, RevisionSpec, RuntimeBackend
from greenroom.runtime.reconcile import Reconciler
from greenroom.runtime.targets import RuntimeTargets
from greenroom.signals import Signals
from greenroom.store.db import Store, ensure_private_dir

log = logging.getLogger("greenroom.leadership")

CONNECT_TIMEOUT_S = 5
# The lock's connection: the client notices a dead server, and the server a dead client, within
# about 5 + 3 × 2 s instead of the systems' two-hour keep-alive default.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
)
# Targets whose replicas die with the process that owns them: a leader that steps down stops them.
PROCESS_BOUND_TARGETS = frozenset({"local"})


class Lock(Protocol):
    """A named lock between processes; held by at most one holder at a time."""

    name: str

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits."""
        ...

    def acquire(self) -> None:
        """Take the lock, waiting while another holder has it."""
        ...

    def still_held(self) -> bool:
        """Whether this holder still has the lock (it retakes a lock it lost but nobody took)."""
        ...

    def release(self) -> None:
        """Let the lock go (a no-op when not held)."""
        ...


def advisory_key(name: str) -> int:
    """The 64-bit advisory lock key of a lock name (stable across processes and versions)."""
    digest = hashlib.sha256(f"greenroom:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLock:
    """A PostgreSQL session advisory lock on a connection of its own."""

    def __init__(self, database_url: str, name: str) -> None:
        self.name = name
        self.key = advisory_key(name)
        self._conninfo = libpq_url(database_url)
        self._conn: psycopg.Connection | None = None
        self._held = False

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT_S,
                application_name=f"greenroom {self.name}",
                options=SERVER_KEEPALIVES,
                **KEEPALIVES,
            )
        return self._conn

    def try_acquire(self) -> bool:
        row = self._connection().execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        self._held = bool(row and row[0])
        return self._held

    def acquire(self) -> None:
        self._connection().execute("SELECT pg_advisory_lock(%s)", (self.key,))
        self._held = True

    def still_held(self) -> bool:
        if not self._held:
            return False
        try:
            self._connection().execute("SELECT 1")
            return True
        except psycopg.Error as exc:
            log.warning("the connection holding lock %s failed (%s); retaking it", self.name, exc)
            self._close()
        try:
            return self.try_acquire()
        except psycopg.Error as exc:  # nobody can take it while nobody reaches the store
            log.warning("cannot reach PostgreSQL to retake lock %s (%s)", self.name, exc)
            self._held = True
            return True

    def release(self) -> None:
        if self._held and self._conn is not None and not self._conn.closed:
            with contextlib.suppress(psycopg.Error):  # a standby may take it at once
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        self._held = False
        self._close()  # the server drops a session's advisory locks with the session anyway

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


class FileLock:
    """`flock` on a file, or on a directory (which leaves no file behind): processes of one
    machine (the SQLite store's)."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        self.name = name or path.stem
        self.path = path
        self._fd: int | None = None

    def _lock(self, flags: int) -> bool:
        is_dir = self.path.is_dir()
        fd = os.open(self.path, os.O_RDONLY if is_dir else os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            os.close(fd)
            return False
        if not is_dir:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for people
        self._fd = fd
        return True

    def try_acquire(self) -> bool:
        return self._fd is not None or self._lock(fcntl.LOCK_EX | fcntl.LOCK_NB)

    def acquire(self) -> None:
        if self._fd is None:
            self._lock(fcntl.LOCK_EX)

    def still_held(self) -> bool:
        """Held while the path still names the locked file (a removed file locks nothing)."""
        if self._fd is None:
            return False
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return True
        self.release()
        return self.try_acquire()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def named_lock(settings: Settings, store: Store, name: str) -> Lock:
    """The lock `name` among the processes of this store: an advisory lock on PostgreSQL, a
    file lock in the data dir on SQLite."""
    if store.is_postgres:
        return AdvisoryLock(store.url, name)
    return FileLock(ensure_private_dir(settings.resolved_data_dir()) / f"{name}.lock")


def data_dir_lock(settings: Settings, store: Store, name: str) -> Lock:
    """The lock `name` among the processes of this store, as a flock of the data dir itself on
    SQLite (nothing is written there): for what runs once at start-up."""
    if store.is_postgres:
        return AdvisoryLock(store.url, name)
    return FileLock(ensure_private_dir(settings.resolved_data_dir()), name)


@contextlib.contextmanager
def exclusive(lock: Lock) -> Iterator[None]:
    """Hold `lock` for the block, waiting for it first (blocking: call it from a thread)."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


Callback = Callable[[], Awaitable[None]]


async def _nothing() -> None:
    return None


class Elector:
    """Campaigns for one lock: leads while it holds it, retries every `retry_s` while not."""

    def __init__(
        self,
        lock: Lock,
        *,
        retry_s: float = 1.0,
        on_elected: Callback = _nothing,
        on_deposed: Callback = _nothing,
    ) -> None:
        self.lock = lock
        self.retry_s = retry_s
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.leading = False

    async def step(self) -> bool:
        """One round: a standby tries to take the lock, a leader checks it still holds it;
        returns whether this process leads."""
        if not self.leading:
            if await asyncio.to_thread(self.lock.try_acquire):
                self.leading = True
                log.info("leading %s (pid %d)", self.lock.name, os.getpid())
                try:
                    await self.on_elected()
                except BaseException:  # e.g. Ray unreachable: let another try, retry next round
                    await self.resign()
                    raise
        elif not await asyncio.to_thread(self.lock.still_held):
            self.leading = False
            log.warning("lost %s to another process; standing by", self.lock.name)
            await self.on_deposed()
        return self.leading

    async def run(self) -> None:
        """Campaign until cancelled."""
        while True:
            try:
                await self.step()
            except Exception:  # an unreachable store: try again next round
                log.exception("campaigning for %s failed; retrying", self.lock.name)
            await asyncio.sleep(self.retry_s)

    async def resign(self) -> None:
        """Let the lock go (a standby takes it at its next round)."""
        self.leading = False
        await asyncio.to_thread(self.lock.release)


class TargetBackend(RuntimeBackend):
    """One runtime target's backend inside `RuntimeTargets`, created on first use: what that
    target's reconciler drives (its `revisions()` are that target's only)."""

    def __init__(self, runtimes: RuntimeTargets, target: str) -> None:
        super().__init__()
        self.name = target
        self._runtimes = runtimes
        self._backend: RuntimeBackend | None = None

    async def _bound(self) -> RuntimeBackend:
        if self._backend is None:
            self._backend = await self._runtimes.backend(self.name)
            self._backend.subscribe(self._notify)
        return self._backend

    async def open(self) -> None:
        await (await self._bound()).open()

    async def start_revision(self, spec: RevisionSpec) -> None:
        await (await self._bound()).start_revision(spec)

    async def stop_revision(self, revision_id: str) -> None:
        if self._backend is not None:
            await self._backend.stop_revision(revision_id)

    def replicas(self, revision_id: str) -> list[ReplicaStatus]:
        return self._backend.replicas(revision_id) if self._backend is not None else []

    def running(self) -> dict[str, RevisionSpec]:
        return self._backend.running() if self._backend is not None else {}

    def scale_up_refusal(self, spec: RevisionSpec, add: int) -> str | None:
        return self._backend.scale_up_refusal(spec, add) if self._backend is not None else None

    async def close(self) -> None:
        """Nothing: `RuntimeTargets.close()` closes the backends."""


class Supervisor:
    """The reconciler of one runtime target, run while this process leads that target."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runtimes: RuntimeTargets,
        signals: Signals,
        target: str,
    ) -> None:
        self.target = target
        self.backend = TargetBackend(runtimes, target)
        # the server's default target opens when elected (Ray: connect, adopt what runs);
        # another one on its first revision, as `RuntimeTargets` does
        self._open_on_election = target == runtimes.default_target
        self.reconciler = Reconciler(
            store, self.backend, signals, lost_after_s=settings.lost_after_s
        )
        self.elector = Elector(
            named_lock(settings, store, f"supervisor-{target}"),
            retry_s=settings.leader_retry_s,
            on_elected=self._lead,
            on_deposed=self._stand_by,
        )
        self._reconciling: asyncio.Task[None] | None = None
        self._campaign: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self.elector.leading

    async def start(self) -> None:
        """The first round at once (a lone server leads before it serves), then campaign."""
        try:
            await self.elector.step()
        except Exception:
            log.exception("campaigning for the %s supervisor failed; retrying", self.target)
        self._campaign = asyncio.create_task(self.elector.run(), name=f"campaign {self.target}")

    async def _lead(self) -> None:
        if self._open_on_election:
            await self.backend.open()
        if self.target in PROCESS_BOUND_TARGETS:
            try:
                await self.reconciler.first_pass()
            except Exception:  # the loop's own passes retry it
                log.exception("the first reconcile pass of the %s target failed", self.target)
        self._reconciling = asyncio.create_task(
            self.reconciler.run(), name=f"reconcile {self.target}"
        )

    async def _stand_by(self) -> None:
        await self._stop_reconciling()
        if self.target in PROCESS_BOUND_TARGETS:
            for revision_id in self.backend.revisions():
                await self.backend.stop_revision(revision_id)

    async def _stop_reconciling(self) -> None:
        task, self._reconciling = self._reconciling, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        """Stop campaigning and reconciling and let the lock go at once (a standby takes over
        while this process stops its replicas)."""
        if self._campaign is not None:
            self._campaign.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._campaign
            self._campaign = None
        await self._stop_reconciling()
        await self.elector.resign()
