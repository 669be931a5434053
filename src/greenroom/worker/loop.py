"""The worker loop: claim → run → record, with a lease kept alive for every running task.

`Worker.run()` claims tasks while fewer than `concurrency` run, hands each task id to the task
handler and renews the task's lease every third of its length. The handler ends the task itself
(`done` or `failed`, through `tasks.leases.end`). The worker steps in only when something
goes wrong:

- the lease was lost (taken over elsewhere, or not renewable before it ran out): the handler is
  cancelled, since another worker now runs the task;
- the handler raised: the task is marked `failed` ("Internal error while running the task: …");
- the handler returned but left the task `processing`: marked `failed` too (a handler bug);
- `stop()` or cancellation of `run()`: handlers are cancelled and their leases released, so
  another worker takes the tasks over at once.

Metrics: `greenroom_lease_takeovers_total` per take-over this worker makes, and
`greenroom_tasks_total{kind,status}` for each task this worker sees end in `done` or `failed`
(tasks canceled or refused while pending never reach a worker and are not counted here).

Database calls are synchronous SQLAlchemy, run in threads so the event loop never blocks.
A standalone worker process is `asyncio.run(worker.run())`, with `stop()` wired to SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from greenroom.metrics import Metrics
from greenroom.signals import MAX_WAIT_S, Listener, Signals, Topic
from greenroom.store.db import Store
from greenroom.tasks import leases
from greenroom.tasks import service as tasks_service
from greenroom.tasks.states import TaskStatus

log = logging.getLogger("greenroom.worker")

TaskHandler = Callable[[str], Awaitable[None]]
"""Runs the task with this id, which the calling worker holds, and ends it (done or failed)."""

INTERNAL_ERROR = "Internal error while running the task: {}"
UNFINISHED = "Internal error while running the task: the task handler returned without ending it"


def default_worker_id() -> str:
    """`<host>-<pid>-<random>`: unique per process, and within `lease_owner`'s 64 characters."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


@dataclass(eq=False)
class _Running:
    """A task this worker runs: its handler, the supervisor around it, and how its lease fares."""

    task_id: str
    kind: str
    lease_deadline: float  # loop time by which the lease runs out unless renewed
    handler: asyncio.Task[None]
    supervisor: asyncio.Task[None] | None = None
    lease_lost: bool = False


class Worker:
    def __init__(
        self,
        store: Store,
        handler: TaskHandler,
        *,
        signals: Signals | None = None,
        metrics: Metrics | None = None,
        worker_id: str | None = None,
        concurrency: int = 4,
        lease_s: float = 15.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease_s <= 0:
            raise ValueError("lease_s must be positive")
        self.store = store
        self.handler = handler
        self.signals = signals
        self.metrics = metrics
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency
        self.lease_s = lease_s
        self._running: dict[str, _Running] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._done = asyncio.Event()
        self._stopping = False

    # ----- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run tasks until `stop()`. If `run()` itself is cancelled, running handlers
        are cancelled and their leases released before it ends."""
        if self._loop is not None:
            raise RuntimeError("Worker.run() can be called once")
        self._loop = asyncio.get_running_loop()
        log.info("worker %s started (concurrency %d)", self.worker_id, self.concurrency)
        try:
            with contextlib.ExitStack() as stack:
                # held across each claim, so that a new task's signal during one is kept
                tasks = (
                    stack.enter_context(self.signals.listen(Topic.TASKS)) if self.signals else None
                )
                while not self._stopping:
                    self._wakeup.clear()  # before claiming, so a wake-up during it is kept
                    if len(self._running) < self.concurrency and await self._claim_one():
                        continue
                    await self._idle(tasks)
            # stop() cancels what is left after its grace period
            while self._running:
                await asyncio.wait([r.supervisor for r in self._running.values() if r.supervisor])
        finally:
            await self._cancel_running()
            self._done.set()
            log.info("worker %s stopped", self.worker_id)

    def wake(self) -> None:
        """Look for a task now rather than at the next poll; safe from any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            self._wakeup.set()
        else:
            loop.call_soon_threadsafe(self._wakeup.set)

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop claiming; give running tasks `grace_s` to end, then cancel their handlers and
        release their leases (another worker takes them over at once). Returns once `run()` has."""
        self._stopping = True
        self.wake()
        supervisors = [r.supervisor for r in self._running.values() if r.supervisor]
        if grace_s > 0 and supervisors:
            await asyncio.wait(supervisors, timeout=grace_s)
        await self._cancel_running()
        if self._loop is not None:
            await self._done.wait()

    def running(self) -> set[str]:
        """Ids of the tasks this worker runs now."""
        return set(self._running)

    # ----- claiming -------------------------------------------------------------------------------

    async def _claim_one(self) -> bool:
        """Claim a task and start it; False when there was none (or the store failed)."""
        assert self._loop is not None
        claimed_at = self._loop.time()
        try:
            claimed = await asyncio.to_thread(self._claim)
        except Exception:
            log.exception("claiming a task failed; retrying")
            return False
        if claimed is None:
            return False
        task = claimed.task
        if self._stopping:  # stop() came while claiming: hand it straight back
            await asyncio.to_thread(self._release, task.id)
            return False
        if claimed.taken_over:
            log.warning("took over task %s (attempt %d)", task.id, task.attempts)
            if self.metrics is not None:
                self.metrics.lease_takeovers.inc()
        else:
            log.info("claimed task %s (%s %s)", task.id, task.kind, task.embedding_model_id)
        self._start(task.id, task.kind, claimed_at + self.lease_s)
        return True

    async def _idle(self, tasks: Listener | None) -> None:
        """Wait for a reason to claim again: `wake()`, a freed slot, a TASKS signal, or a second."""
        waits: list[asyncio.Future[bool]] = [asyncio.ensure_future(self._wakeup.wait())]
        if tasks is not None:
            waits.append(asyncio.ensure_future(tasks.wait()))
        try:
            await asyncio.wait(waits, timeout=MAX_WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            await asyncio.wait(waits)

    def _start(self, task_id: str, kind: str, lease_deadline: float) -> None:
        handler = asyncio.create_task(self._call_handler(task_id), name=f"task {task_id}")
        running = _Running(task_id, kind, lease_deadline, handler)
        running.supervisor = asyncio.create_task(self._supervise(running))
        self._running[task_id] = running

    async def _call_handler(self, task_id: str) -> None:
        await self.handler(task_id)

    # ----- one running task -----------------------------------------------------------------------

    async def _supervise(self, running: _Running) -> None:
        keeper = asyncio.create_task(self._keep_lease(running))
        try:
            await asyncio.wait([running.handler])
        finally:
            keeper.cancel()
            if not running.handler.done():  # the supervisor itself was cancelled
                running.handler.cancel()
            await asyncio.wait([keeper, running.handler])
            try:
                await self._settle(running)
            except Exception:
                log.exception("recording the end of task %s failed", running.task_id)
            del self._running[running.task_id]
            self._wakeup.set()  # a slot is free

    async def _keep_lease(self, running: _Running) -> None:
        """Renew the lease every third of its length; on losing it, cancel the handler."""
        assert self._loop is not None
        while True:
            await asyncio.sleep(self.lease_s / 3)
            asked_at = self._loop.time()
            try:
                renewed = await asyncio.to_thread(self._renew, running.task_id)
            except Exception:
                log.exception("renewing the lease of task %s failed", running.task_id)
                if self._loop.time() < running.lease_deadline:
                    continue  # keep trying while the lease lasts
                renewed = False  # past it, another worker may own the task
            if not renewed:
                log.warning("lost the lease of task %s; stopping its handler", running.task_id)
                running.lease_lost = True
                running.handler.cancel()
                return
            running.lease_deadline = asked_at + self.lease_s

    async def _settle(self, running: _Running) -> None:
        """Record how the handler ended: release, fail, or just count the end it recorded."""
        handler = running.handler
        if handler.cancelled():
            if not running.lease_lost:
                await asyncio.to_thread(self._release, running.task_id)
                log.info("released task %s", running.task_id)
            return
        error = handler.exception()
        if error is not None:
            log.error("task %s raised", running.task_id, exc_info=error)
            detail = INTERNAL_ERROR.format(error)
            failed = await asyncio.to_thread(self._fail, running.task_id, detail)
            status = TaskStatus.FAILED if failed else None
        else:
            status = await asyncio.to_thread(self._ended_status, running.task_id)
        if status is not None and self.metrics is not None:
            self.metrics.tasks.labels(running.kind, status.value).inc()

    # ----- store calls (run in threads) -----------------------------------------------------------

    def _claim(self) -> leases.Claim | None:
        with self.store.session_scope() as db_session:
            return leases.claim(db_session, worker_id=self.worker_id, lease_s=self.lease_s)

    def _renew(self, task_id: str) -> bool:
        with self.store.session_scope() as db_session:
            return leases.renew_lease(
                db_session, task_id=task_id, worker_id=self.worker_id, lease_s=self.lease_s
            )

    def _release(self, task_id: str) -> None:
        with self.store.session_scope() as db_session:
            leases.release(db_session, task_id=task_id, worker_id=self.worker_id)

    def _fail(self, task_id: str, detail: str) -> bool:
        with self.store.session_scope() as db_session:
            return leases.mark_failed(
                db_session, task_id=task_id, worker_id=self.worker_id, detail=detail
            )

    def _ended_status(self, task_id: str) -> TaskStatus | None:
        """The final status the handler left, failing the task if it left it running."""
        with self.store.session_scope() as db_session:
            task = tasks_service.get(db_session, task_id=task_id)
            if task is None:
                return None
            status = TaskStatus(task.status)
            left_running = status is TaskStatus.PROCESSING and task.lease_owner == self.worker_id
            if left_running and leases.mark_failed(
                db_session, task_id=task_id, worker_id=self.worker_id, detail=UNFINISHED
            ):
                log.error("the handler of task %s returned without ending it", task_id)
                return TaskStatus.FAILED
            return status if status.is_final() else None

    async def _cancel_running(self) -> None:
        """Cancel every handler; their supervisors release the leases."""
        supervisors = [r.supervisor for r in self._running.values() if r.supervisor]
        for running in self._running.values():
            running.handler.cancel()
        if supervisors:
            await asyncio.wait(supervisors)
