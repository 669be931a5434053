"""Deployment status: one function applies every status change, the system's own included.

Rules (api/deployments.md): status, message and history belong to a version; an update that
changes neither status nor message writes nothing; the history gets the new entry (adjacent
duplicates collapse, the first timestamp wins; the last 100 are kept). Which changes are allowed
is `refusal`'s one rule set: from DELETING only DELETED; and a version of which something runs
or may soon is not reported DELETING or DELETED (a controller's update says whether it runs;
the system's own deletion moves the status itself, as it withdraws the replicas).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from greenroom.deployments.models import Deployment
from greenroom.store.db import utcnow

HISTORY_LIMIT = 100


class DeploymentStatus(StrEnum):
    UNKNOWN = "UNKNOWN"
    CREATED = "CREATED"
    PENDING = "PENDING"
    READY = "READY"
    ERROR = "ERROR"
    DELETING = "DELETING"
    DELETED = "DELETED"
    LOST = "LOST"


@dataclass(frozen=True)
class StatusChange:
    accepted: bool
    changed: bool = False
    reason: str = ""


DELETION_STATUSES = frozenset({DeploymentStatus.DELETING, DeploymentStatus.DELETED})
LEAVING_DELETING = (
    "Deployment is marked for deletion (DELETING). Only transition to DELETED is allowed."
)
STILL_RUNS = (
    "The deployment version still runs or is about to (it is live, has replicas, or a task "
    "names it), so it cannot be {status}; delete it with DELETE, whose delete task withdraws it."
)


def refusal(current: DeploymentStatus, to: DeploymentStatus, *, runs: bool = False) -> str | None:
    """Why a version may not go from `current` to `to` (one sentence), or None. `runs`: whether
    something of the version runs or may soon, when the caller (a controller's update) asks."""
    if current is DeploymentStatus.DELETING and to not in DELETION_STATUSES:
        return LEAVING_DELETING
    if runs and to in DELETION_STATUSES and to is not current:
        return STILL_RUNS.format(status=to.value)
    return None


def set_status(
    deployment: Deployment, to: DeploymentStatus, message: str | None = None, *, runs: bool = False
) -> StatusChange:
    """Apply a status change if `refusal` allows it (`runs`: see there)."""
    current = DeploymentStatus(deployment.status or DeploymentStatus.UNKNOWN)
    if reason := refusal(current, to, runs=runs):
        return StatusChange(False, reason=reason)
    if current is to and deployment.status_message == message:
        return StatusChange(True, changed=False)
    now = utcnow()
    deployment.status = to
    deployment.status_message = message
    deployment.updated_at = now
    history = list(deployment.status_history or [])
    last = history[-1] if history else None
    if not (last and last["status"] == to and last.get("status_message") == message):
        history.append(
            {"timestamp": now.isoformat(), "status": to.value, "status_message": message}
        )
    deployment.status_history = history[-HISTORY_LIMIT:]
    return StatusChange(True, changed=True)
