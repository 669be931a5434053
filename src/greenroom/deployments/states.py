"""The status of a deployment version, as a state machine: the enum, the terminal set, the
table of allowed transitions (two columns: what the system may do, what a controller may post),
the named guards, and `transition()`, the one function that changes a version's status.

Rules (docs/api/deployments.md): status, message and history belong to a version; a change that
alters neither status nor message writes nothing; otherwise the history gets the new entry
(adjacent duplicates collapse, the first timestamp wins; the last 100 are kept). Nothing else
assigns `Deployment.status`.

The system's column is what greenroom does itself: a new version starts CREATED (version 1) or
PENDING; a rollout records its steps as messages in the same status, ends READY, or ERROR when
it rolls back; the reconciler marks the live version LOST when every replica is down and READY
again when one is back; a delete marks a version DELETING while something of it runs and
DELETED once nothing does. A controller (`POST .../status`) may post any contract status,
except that out of DELETING only DELETED is accepted, and neither DELETING nor DELETED while
something of the version runs or may soon (only a DELETE, whose delete task withdraws the
replicas, gets it there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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

    def is_final(self) -> bool:
        return self in TERMINAL_DEPLOYMENT_STATUSES

    def is_deletion(self) -> bool:
        return self in DELETION_STATUSES


class Actor(StrEnum):
    """Who proposes a status: greenroom itself, or a controller through the deployments API."""

    SYSTEM = "system"
    CONTROLLER = "controller"


# DELETED ends a version: nothing of it runs and a DELETE removes its record. Only a DELETE that
# finds something of it still running (the store said DELETED behind the API's back) moves it
# back to DELETING, so that its delete task withdraws what runs.
TERMINAL_DEPLOYMENT_STATUSES = frozenset({DeploymentStatus.DELETED})
DELETION_STATUSES = frozenset({DeploymentStatus.DELETING, DeploymentStatus.DELETED})

_S = DeploymentStatus
_ALL = frozenset(DeploymentStatus)
# Where the system's own outcomes may land from a version that is not being deleted: a rollout's
# READY or ERROR, the reconciler's LOST (a controller may have posted any status meanwhile, so
# each of these follows every status outside the deletion).
_OUTCOMES = frozenset({_S.READY, _S.ERROR, _S.LOST, _S.DELETING, _S.DELETED})


def _with_self(table: Mapping[DeploymentStatus, frozenset[DeploymentStatus]]) -> dict:
    """Every status may follow itself: a new message in the same status (a rollout step)."""
    return {current: allowed | {current} for current, allowed in table.items()}


SYSTEM_TRANSITIONS: dict[DeploymentStatus, frozenset[DeploymentStatus]] = _with_self(
    {
        _S.UNKNOWN: _OUTCOMES | {_S.CREATED, _S.PENDING},  # a new version starts here
        _S.CREATED: _OUTCOMES,
        _S.PENDING: _OUTCOMES,
        _S.READY: _OUTCOMES,
        _S.ERROR: _OUTCOMES,
        _S.LOST: _OUTCOMES,
        _S.DELETING: frozenset({_S.DELETED}),
        _S.DELETED: frozenset({_S.DELETING}),  # a DELETE finds something of it still running
    }
)
CONTROLLER_TRANSITIONS: dict[DeploymentStatus, frozenset[DeploymentStatus]] = _with_self(
    {current: _ALL for current in DeploymentStatus} | {_S.DELETING: frozenset({_S.DELETED})}
)
TRANSITIONS: dict[Actor, dict[DeploymentStatus, frozenset[DeploymentStatus]]] = {
    Actor.SYSTEM: SYSTEM_TRANSITIONS,
    Actor.CONTROLLER: CONTROLLER_TRANSITIONS,
}

LEAVING_DELETING = (
    "Deployment is marked for deletion (DELETING). Only transition to DELETED is allowed."
)
STILL_RUNS = (
    "The deployment version still runs or is about to (it is live, has replicas, or a task "
    "names it), so it cannot be {status}; delete it with DELETE, whose delete task withdraws it."
)
NOT_IN_TABLE = "A deployment version cannot go from {current} to {to} ({by})."


@dataclass(frozen=True)
class Proposal:
    """A proposed change: where the version is, where it would go, who asks, and whether
    something of the version runs or may soon (asked for a controller's DELETING or DELETED)."""

    current: DeploymentStatus
    to: DeploymentStatus
    by: Actor
    runs: bool = False


@dataclass(frozen=True)
class TransitionResult:
    accepted: bool
    changed: bool = False
    reason: str = ""


Guard = Callable[[Proposal], str | None]


def refuse_leaving_deleting(proposal: Proposal) -> str | None:
    """From DELETING to anything but DELETED (or a new message in DELETING). A version marked
    for deletion is being withdrawn by its delete task: a READY posted now would announce a
    version that is about to vanish, and a new rollout would race the withdrawal."""
    if proposal.current is _S.DELETING and not proposal.to.is_deletion():
        return LEAVING_DELETING
    return None


def refuse_deleting_what_runs(proposal: Proposal) -> str | None:
    """A controller's DELETING or DELETED while something of the version runs or may soon. The
    store would then disagree with what runs, and a DELETE would remove the records of a
    revision that still serves; only a DELETE (its delete task withdraws the replicas) gets a
    running version there. The system's own deletion moves the status as it withdraws."""
    if (
        proposal.by is Actor.CONTROLLER
        and proposal.runs
        and proposal.to.is_deletion()
        and proposal.to is not proposal.current
    ):
        return STILL_RUNS.format(status=proposal.to.value)
    return None


# The policy: the guards in the order they are asked; the first reason refuses.
POLICY: tuple[Guard, ...] = (refuse_leaving_deleting, refuse_deleting_what_runs)


def refusal(proposal: Proposal) -> str | None:
    """Why the proposal is refused (one sentence), or None: the guards first (their reasons are
    the contract's), then the table of the proposing actor."""
    for guard in POLICY:
        if reason := guard(proposal):
            return reason
    if proposal.to not in TRANSITIONS[proposal.by][proposal.current]:
        return NOT_IN_TABLE.format(
            current=proposal.current.value, to=proposal.to.value, by=proposal.by.value
        )
    return None


def current_status(deployment: Deployment) -> DeploymentStatus:
    """A version's status (a version not written yet is UNKNOWN)."""
    return DeploymentStatus(deployment.status or _S.UNKNOWN)


def transition(
    deployment: Deployment,
    to: DeploymentStatus,
    *,
    message: str | None,
    by: Actor,
    runs: bool = False,
) -> TransitionResult:
    """Move a version to `to` with `message` if the table and the guards allow it, and record
    it in its history. `runs`: whether something of the version runs or may soon (see
    `refuse_deleting_what_runs`)."""
    proposal = Proposal(current=current_status(deployment), to=to, by=by, runs=runs)
    if reason := refusal(proposal):
        return TransitionResult(False, reason=reason)
    if proposal.current is to and deployment.status_message == message:
        return TransitionResult(True, changed=False)
    now = utcnow()
    deployment.status = to
    deployment.status_message = message
    deployment.updated_at = now
    deployment.status_history = _with_entry(
        deployment.status_history or [],
        {"timestamp": now.isoformat(), "status": to.value, "status_message": message},
    )
    return TransitionResult(True, changed=True)


def _with_entry(history: list[dict], entry: dict) -> list[dict]:
    """The history with `entry` appended, unless the last entry says the same (adjacent
    duplicates collapse: the first timestamp wins); the last HISTORY_LIMIT kept."""
    last = history[-1] if history else None
    same = last and (last["status"], last.get("status_message")) == (
        entry["status"],
        entry["status_message"],
    )
    updated = list(history) if same else [*history, entry]
    return updated[-HISTORY_LIMIT:]


def set_status(
    deployment: Deployment, to: DeploymentStatus, message: str | None = None
) -> TransitionResult:
    """Thin alias while callers outside the package move to the deployments service: the
    system's transition."""
    return transition(deployment, to, message=message, by=Actor.SYSTEM)
