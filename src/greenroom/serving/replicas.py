"""The router's replica source in an API process without a supervisor: the store's reports.

With `GREENROOM_SUPERVISOR=false` an API process owns no replicas; it routes to the replicas the
supervisor of another process on the same machine reports to the store (`Revision.replicas`:
replica id, state, host, port, restarts). `RouterSync` reads those reports on every pass and on
every REPORTED signal and feeds them here; the router subscribes as it would to a runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from greenroom.runtime.base import ChangeListener, ReplicaState, ReplicaStatus


class StoreReplicas:
    """Replicas as last reported to the store, per revision; a `ReplicaSource`."""

    def __init__(self) -> None:
        self._replicas: dict[str, list[ReplicaStatus]] = {}
        self._listeners: list[ChangeListener] = []

    def replicas(self, revision_id: str) -> list[ReplicaStatus]:
        return list(self._replicas.get(revision_id, ()))

    def revisions(self) -> list[str]:
        return list(self._replicas)

    def subscribe(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def update(self, reports: Mapping[str, list[ReplicaStatus]]) -> None:
        """Take these reports as the whole picture (revisions left out are forgotten); each
        revision whose replicas changed is announced to the listeners."""
        changed = [
            revision_id
            for revision_id in self._replicas.keys() | reports.keys()
            if self._replicas.get(revision_id, []) != reports.get(revision_id, [])
        ]
        self._replicas = {revision_id: list(r) for revision_id, r in reports.items()}
        for revision_id in sorted(changed):
            for listener in list(self._listeners):
                listener(revision_id)


def replicas_from_report(
    revision_id: str, report: Iterable[Mapping[str, Any]]
) -> list[ReplicaStatus]:
    """The `ReplicaStatus` values of a revision's stored report (`reconcile.replica_report`)."""
    return [
        ReplicaStatus(
            replica_id=str(entry["replica_id"]),
            revision_id=revision_id,
            state=ReplicaState(entry["state"]),
            host=entry.get("host"),
            port=entry.get("port"),
            restarts=int(entry.get("restarts") or 0),
            message=str(entry.get("message") or ""),
        )
        for entry in report
    ]
