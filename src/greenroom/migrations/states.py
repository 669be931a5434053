"""A served name's migration stage (docs/api/migrations.md), one state machine.

none → staged (a staged deploy); staged → staged (a second staged deploy replaces the staged
revision), staged → none (a raw promotion, an abort, a delete), staged → adapted (an adapted
promotion); adapted → none (finish, abort, delete). Nothing goes from none straight to adapted
(there is nothing to promote) or from adapted back to staged (a migration moves one model at a
time: finish or abort it first).

`transition()` is the only code that assigns `Migration.stage`. Repeating the current stage is
accepted: staged → staged is a move of its own (the stage is entered again, its time recorded),
none → none and adapted → adapted change nothing (a resumed step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from greenroom.migrations.models import Migration
from greenroom.store.db import utcnow

log = logging.getLogger("greenroom.migrations")


class MigrationStage(StrEnum):
    NONE = "none"
    STAGED = "staged"
    ADAPTED = "adapted"


_S = MigrationStage
ALLOWED: dict[MigrationStage, frozenset[MigrationStage]] = {
    _S.NONE: frozenset({_S.STAGED}),
    _S.STAGED: frozenset({_S.STAGED, _S.NONE, _S.ADAPTED}),
    _S.ADAPTED: frozenset({_S.NONE}),
}
"""Where each stage may go. A pair missing here is refused, except a repeat of the current
stage, which changes nothing and is accepted."""

REFUSALS: dict[tuple[MigrationStage, MigrationStage], str] = {
    (_S.NONE, _S.ADAPTED): "`{name}` has no staged revision: deploy with "
    '"strategy": "staged" first',
    (_S.ADAPTED, _S.STAGED): "`{name}` is in a migration (adapted): finish or abort it first",
}
"""The sentence of each refused pair; one sentence that says what to do."""


@dataclass(frozen=True)
class TransitionResult:
    accepted: bool
    changed: bool = False
    reason: str = ""


def stage_of(migration: Migration | None) -> MigrationStage:
    """The stage of a row; a served name without one (or a row not flushed yet) is at `none`."""
    if migration is None or migration.stage is None:
        return MigrationStage.NONE
    return MigrationStage(migration.stage)


def refusal(migration: Migration, to: MigrationStage) -> str | None:
    """Why `migration` may not move to `to` (one sentence), or None when it may."""
    current = stage_of(migration)
    if current == to or to in ALLOWED[current]:
        return None
    template = REFUSALS.get((current, to), "`{name}` is {current} and cannot become {to}")
    return template.format(name=migration.served_name, current=current, to=to)


def transition(
    migration: Migration, to: MigrationStage, *, reason: str | None = None
) -> TransitionResult:
    """Move `migration` to `to` if the table allows it, recording `stage` and
    `stage_updated_at`; `reason` (why it moves) goes to the log. A repeat of the current stage
    that the table does not list changes nothing and is accepted."""
    current = stage_of(migration)
    if current == to and to not in ALLOWED[current]:
        return TransitionResult(True, changed=False)
    if why_not := refusal(migration, to):
        return TransitionResult(False, reason=why_not)
    migration.stage = to
    migration.stage_updated_at = utcnow()
    log.info("'%s': migration %s → %s%s", migration.served_name, current, to, _why(reason))
    return TransitionResult(True, changed=True)


def _why(reason: str | None) -> str:
    return f" ({reason})" if reason else ""
