"""Revision phases (`docs/api/workloads.md`), one state machine.

Creating (snapshot stored) → Initializing (replicas loading, warm-up) → Running (live) ⇄
Degraded (fewer ready replicas than asked); a retired revision goes Terminating (draining) →
Stopped; a revision that did not come up, or was rolled back, is Failed. Stopped and Failed are
final: a Failed revision only takes a new reason (`phase_message`).

`transition()` is the only code that assigns `Revision.phase`: it checks the table
`ALLOWED_TRANSITIONS`, then every guard of `GUARDS` that governs the (from, to) pair, records
the phase with its message and time, and returns accepted or refused with a reason.

Moves the system makes today, and who makes them:
- the rollout: Creating → Initializing (`start_green` asks for replicas), Initializing → Running
  (`switch`), Creating | Initializing → Failed (roll back), Running | Degraded | Creating |
  Initializing → Terminating (a withdrawn revision drains), Terminating → Stopped | Failed and
  Failed → Failed (the revision is retired once its replicas stopped);
- the reconciler: Running ⇄ Degraded for the live revision, as replicas come and go;
- a resumed step repeats its move: the same phase with the same message changes nothing and is
  accepted. Degraded → Running is also what a resumed `switch` does after the reconciler saw a
  replica down, and Running | Degraded → Initializing what a resumed `start_green` does when the
  snapshot found the live revision unchanged and the worker died before the task ended (the
  revision is Running again at the switch).

Refused although a crash window of today's rollout could ask for it: Failed → Initializing (a
worker that dies while rolling back leaves the failed step to be run again); a Failed revision
stays Failed and `service.want_replicas` then asks no replicas of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from greenroom.store.db import utcnow
from greenroom.workloads.models import Revision


class RevisionPhase(StrEnum):
    CREATING = "Creating"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    TERMINATING = "Terminating"
    STOPPED = "Stopped"

    def is_final(self) -> bool:
        """Stopped or Failed: the revision never serves again."""
        return self in TERMINAL_REVISION_PHASES

    def is_serving(self) -> bool:
        """Running or Degraded: the phases of a revision the routers may send requests to."""
        return self in SERVING_PHASES


TERMINAL_REVISION_PHASES = frozenset({RevisionPhase.STOPPED, RevisionPhase.FAILED})
SERVING_PHASES = frozenset({RevisionPhase.RUNNING, RevisionPhase.DEGRADED})

_P = RevisionPhase
ALLOWED_TRANSITIONS: dict[RevisionPhase, frozenset[RevisionPhase]] = {
    _P.CREATING: frozenset({_P.INITIALIZING, _P.FAILED, _P.TERMINATING}),
    _P.INITIALIZING: frozenset({_P.INITIALIZING, _P.RUNNING, _P.FAILED, _P.TERMINATING}),
    _P.RUNNING: frozenset({_P.RUNNING, _P.DEGRADED, _P.INITIALIZING, _P.TERMINATING, _P.FAILED}),
    _P.DEGRADED: frozenset({_P.DEGRADED, _P.RUNNING, _P.INITIALIZING, _P.TERMINATING, _P.FAILED}),
    _P.TERMINATING: frozenset({_P.TERMINATING, _P.STOPPED, _P.FAILED}),
    _P.FAILED: frozenset({_P.FAILED}),
    _P.STOPPED: frozenset(),
}
"""Where each phase may go. A pair missing here is refused, except a repeat of the current
phase with the current message, which changes nothing (a resumed step) and is accepted."""


@dataclass(frozen=True)
class TransitionResult:
    accepted: bool
    changed: bool = False
    reason: str = ""


# ----- guards: named rules over some (from, to) pairs ------------------------------------------


@dataclass(frozen=True)
class Guard:
    """A rule that governs the moves from `from_phases` to `to_phases`; `refusal` says why such a
    move is refused (one sentence), or None to let it pass."""

    refusal: Callable[[Revision, RevisionPhase, str | None], str | None]
    from_phases: frozenset[RevisionPhase]
    to_phases: frozenset[RevisionPhase]

    @property
    def name(self) -> str:
        return self.refusal.__name__

    def governs(self, current: RevisionPhase, to: RevisionPhase) -> bool:
        return current in self.from_phases and to in self.to_phases


def require_replicas_wanted(
    revision: Revision, to: RevisionPhase, message: str | None
) -> str | None:
    """A revision initialises only once replicas are asked of it (`desired_replicas` > 0):
    otherwise it would show Initializing while the reconciler starts nothing, forever."""
    if revision.desired_replicas > 0:
        return None
    return f"Revision {revision.id} asks for no replicas, so it cannot become {to}"


def require_a_reason_to_fail(
    revision: Revision, to: RevisionPhase, message: str | None
) -> str | None:
    """A Failed revision says why (its `phaseMessage`): the API's only account of what broke."""
    if message and message.strip():
        return None
    return f"Revision {revision.id} cannot become {to} without a reason"


def refuse_reviving_a_retired_revision(
    revision: Revision, to: RevisionPhase, message: str | None
) -> str | None:
    """A retired revision (`deleted_at` set: its replicas were stopped) never starts or serves
    again: a late write from a step that another worker has already finished must not bring it
    back to life in the API."""
    if revision.deleted_at is None:
        return None
    return f"Revision {revision.id} is retired and cannot become {to}"


_ALL = frozenset(RevisionPhase)
GUARDS: tuple[Guard, ...] = (
    Guard(refuse_reviving_a_retired_revision, _ALL, frozenset(_ALL - TERMINAL_REVISION_PHASES)),
    Guard(require_replicas_wanted, _ALL, frozenset({_P.INITIALIZING})),
    Guard(require_a_reason_to_fail, _ALL, frozenset({_P.FAILED})),
)
"""The policy, in the order its guards are asked: the first refusal wins."""


def guards_for(current: RevisionPhase, to: RevisionPhase) -> list[Guard]:
    """The guards that govern the move from `current` to `to`."""
    return [guard for guard in GUARDS if guard.governs(current, to)]


def refusal(revision: Revision, to: RevisionPhase, message: str | None) -> str | None:
    """Why `revision` may not move to `to` with `message`, or None when it may."""
    current = RevisionPhase(revision.phase)
    if to not in ALLOWED_TRANSITIONS[current]:
        return f"Revision {revision.id} is {current} and cannot become {to}"
    for guard in guards_for(current, to):
        if reason := guard.refusal(revision, to, message):
            return reason
    return None


def transition(
    revision: Revision, to: RevisionPhase, *, message: str | None = None
) -> TransitionResult:
    """Move `revision` to `to` with `message` if the table and the guards allow it, recording
    `phase`, `phase_message` and `phase_updated_at`. Repeating the current phase and message
    changes nothing and is accepted."""
    if revision.phase == to and revision.phase_message == message:
        return TransitionResult(True, changed=False)
    if reason := refusal(revision, to, message):
        return TransitionResult(False, reason=reason)
    revision.phase = to
    revision.phase_message = message
    revision.phase_updated_at = utcnow()
    return TransitionResult(True, changed=True)
