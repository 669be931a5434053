"""Deployment status: one function applies every status change, the system's own included.

Rules (api/deployments.md): status, message and history belong to a version; an update that
changes neither status nor message writes nothing; the history gets the new entry (adjacent
duplicates collapse, the first timestamp wins; the last 100 are kept); from DELETING only DELETED.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from greenroom.db import utcnow
from greenroom.deployments.models import Deployment

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


def refuse_leaving_deleting(current: DeploymentStatus, to: DeploymentStatus) -> str | None:
    """A version marked for deletion may only become DELETED."""
    leaving = to not in (DeploymentStatus.DELETING, DeploymentStatus.DELETED)
    if current is DeploymentStatus.DELETING and leaving:
        return (
            "Deployment is marked for deletion (DELETING). Only transition to DELETED is allowed."
        )
    return None


def set_status(
    deployment: Deployment, to: DeploymentStatus, message: str | None = None
) -> StatusChange:
    current = DeploymentStatus(deployment.status or DeploymentStatus.UNKNOWN)
    if reason := refuse_leaving_deleting(current, to):
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
