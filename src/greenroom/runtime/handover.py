"""A running revision's new spec, with a ready replica throughout (local and fake runtimes).

A revision's spec changes while it runs when a promoted staged revision goes back to normal CPU
priority. Its replicas are started again under the new spec, beside the old ones, which keep
serving (pinned names, shadow traffic) until every new replica is ready, or the start timeout
has passed; then the old ones stop, and routers move their queued batches to the new ones. So
no request that a replica could serve finds none ready, as a deployment's rolling update.

A change of the replica count alone (the autoscaler's) is no hand-over: the runtime adds
replicas beside the running ones, or drains and stops the `surplus`; the others go on untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Generic, Protocol, TypeVar

from greenroom.runtime.base import ReplicaStatus, RevisionSpec

log = logging.getLogger("greenroom.runtime")
POLL_S = 0.1


class Slot(Protocol):
    """A replica as a runtime keeps it."""

    status: ReplicaStatus

    async def stop(self) -> None: ...


S = TypeVar("S", bound=Slot)


def count_change_only(running: RevisionSpec | None, spec: RevisionSpec) -> bool:
    """Whether `spec` differs from the running one in its replica count alone."""
    return (
        running is not None
        and running.replicas != spec.replicas
        and replace(running, replicas=spec.replicas) == spec
    )


def surplus(slots: list[S], keep: int) -> list[S]:
    """The slots a scale-down to `keep` replicas stops: the ones not ready first, then the
    newest, so the oldest ready replicas keep serving."""
    ranked = sorted(enumerate(slots), key=lambda pair: (pair[1].status.state.is_ready(), -pair[0]))
    return [slot for _, slot in ranked[: max(len(slots) - keep, 0)]]


class Handovers(Generic[S]):
    """The hand-overs in progress, one per revision at most."""

    def __init__(self, notify: Callable[[str], None]) -> None:
        self._notify = notify
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def start(self, revision_id: str, slots: list[S], new: list[S], timeout_s: float) -> None:
        """Add `new` to `slots` (the runtime's own list of the revision's replicas); every
        other slot in it stops once all of `new` are ready, or after `timeout_s`. A hand-over
        still in progress is cut short: its replicas, old and new, are the old ones now."""
        await self.cancel(revision_id)
        old = list(slots)
        slots.extend(new)
        self._notify(revision_id)
        self._tasks[revision_id] = asyncio.create_task(
            self._hand_over(revision_id, slots, old, new, timeout_s),
            name=f"hand-over of revision {revision_id}",
        )

    def active(self, revision_id: str) -> bool:
        """Whether a hand-over of the revision is in progress."""
        return revision_id in self._tasks

    async def cancel(self, revision_id: str) -> None:
        """Stop the revision's hand-over where it is (the revision stops, or changes again)."""
        task = self._tasks.pop(revision_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _hand_over(
        self,
        revision_id: str,
        slots: list[S],
        old: list[S],
        new: list[S],
        timeout_s: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not all(slot.status.state.is_ready() for slot in new):
            if loop.time() >= deadline:
                log.warning(
                    "revision %s: its new replicas were not ready within %.0f s; the old ones "
                    "stop anyway",
                    revision_id,
                    timeout_s,
                )
                break
            await asyncio.sleep(POLL_S)
        await asyncio.gather(*(slot.stop() for slot in old))
        slots[:] = [slot for slot in slots if slot not in old]
        self._tasks.pop(revision_id, None)
        self._notify(revision_id)
