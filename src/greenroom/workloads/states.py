"""Revision phases (api/workloads.md). Creating → Initializing → Running · Degraded · Failed;
a retired revision goes Terminating → Stopped and gets `deleted_at`."""

from __future__ import annotations

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


RETIRED_PHASES = frozenset({RevisionPhase.STOPPED})


def set_phase(revision: Revision, phase: RevisionPhase, message: str | None = None) -> bool:
    """Record a phase change as it happens; False when nothing changed."""
    if revision.phase == phase and revision.phase_message == message:
        return False
    revision.phase = phase
    revision.phase_message = message
    revision.phase_updated_at = utcnow()
    return True
