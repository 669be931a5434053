"""The revision phase machine: every (from, to) pair against the table, each guard refusing and
silent, and `transition()` as the only writer of `Revision.phase`."""

from __future__ import annotations

import itertools
import re
from datetime import timedelta
from pathlib import Path

import pytest

from greenroom.store.db import utcnow
from greenroom.workloads.models import Revision
from greenroom.workloads.states import (
    ALLOWED_TRANSITIONS,
    GUARDS,
    TERMINAL_REVISION_PHASES,
    RevisionPhase,
    guards_for,
    refuse_reviving_a_retired_revision,
    require_a_reason_to_fail,
    require_replicas_wanted,
    transition,
)

P = RevisionPhase
PAIRS = list(itertools.product(RevisionPhase, RevisionPhase))
LONG_AGO = utcnow() - timedelta(days=1)
SRC = Path(__file__).resolve().parents[2] / "src" / "greenroom"


def revision_in(phase: RevisionPhase, **fields: object) -> Revision:
    """A revision in `phase` that every guard lets move: replicas wanted, not retired."""
    values: dict[str, object] = {
        "id": "rev-1",
        "phase": phase,
        "phase_message": "before",
        "phase_updated_at": LONG_AGO,
        "desired_replicas": 1,
        "deleted_at": None,
    }
    values.update(fields)
    return Revision(**values)


# ----- the table --------------------------------------------------------------------------------


def test_the_table_names_every_phase() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(RevisionPhase)


@pytest.mark.parametrize(("current", "to"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_a_move_is_allowed_exactly_where_the_table_says(
    current: RevisionPhase, to: RevisionPhase
) -> None:
    revision = revision_in(current)
    result = transition(revision, to, message="after")
    allowed = to in ALLOWED_TRANSITIONS[current]
    assert result.accepted is allowed
    assert result.changed is allowed
    if allowed:
        assert (revision.phase, revision.phase_message) == (to, "after")
        assert revision.phase_updated_at > LONG_AGO and result.reason == ""
    else:
        assert (revision.phase, revision.phase_message) == (current, "before")
        assert revision.phase_updated_at == LONG_AGO
        assert result.reason == f"Revision rev-1 is {current} and cannot become {to}"


@pytest.mark.parametrize("phase", list(RevisionPhase))
def test_repeating_the_current_phase_and_message_is_accepted_and_changes_nothing(
    phase: RevisionPhase,
) -> None:
    """A resumed step repeats its move: harmless, even out of a final phase."""
    revision = revision_in(phase)
    result = transition(revision, phase, message="before")
    assert (result.accepted, result.changed) == (True, False)
    assert revision.phase_updated_at == LONG_AGO


def test_the_moves_todays_code_makes_are_allowed() -> None:
    """The rollout, roll back, retirement and the reconciler (see the module docstring)."""
    made = {
        (P.CREATING, P.INITIALIZING),
        (P.INITIALIZING, P.RUNNING),
        (P.DEGRADED, P.RUNNING),
        (P.CREATING, P.FAILED),
        (P.INITIALIZING, P.FAILED),
        (P.CREATING, P.TERMINATING),
        (P.INITIALIZING, P.TERMINATING),
        (P.RUNNING, P.TERMINATING),
        (P.DEGRADED, P.TERMINATING),
        (P.TERMINATING, P.STOPPED),
        (P.TERMINATING, P.FAILED),
        (P.FAILED, P.FAILED),
        (P.RUNNING, P.DEGRADED),
        (P.DEGRADED, P.DEGRADED),
        (P.RUNNING, P.INITIALIZING),
        (P.DEGRADED, P.INITIALIZING),
    }
    assert all(to in ALLOWED_TRANSITIONS[current] for current, to in made)


def test_a_failed_revision_is_never_initialized_again() -> None:
    """A step resumed after its roll back began must not bring the failed green back."""
    revision = revision_in(P.FAILED)
    assert not transition(revision, P.INITIALIZING, message="loading").accepted
    assert revision.phase == P.FAILED


def test_final_phases_never_serve_again() -> None:
    assert {P.STOPPED, P.FAILED} == TERMINAL_REVISION_PHASES
    assert [p for p in RevisionPhase if p.is_final()] == [P.FAILED, P.STOPPED]
    assert [p for p in RevisionPhase if p.is_serving()] == [P.RUNNING, P.DEGRADED]
    for phase in TERMINAL_REVISION_PHASES:
        assert ALLOWED_TRANSITIONS[phase] <= {phase}


# ----- the guards: one class each -------------------------------------------------------------


def test_the_policy_lists_each_guard_once_by_name() -> None:
    assert [guard.name for guard in GUARDS] == [
        "refuse_reviving_a_retired_revision",
        "require_replicas_wanted",
        "require_a_reason_to_fail",
    ]


class TestRequireReplicasWanted:
    def test_refuses_initializing_a_revision_that_asks_for_no_replicas(self) -> None:
        revision = revision_in(P.CREATING, desired_replicas=0)
        result = transition(revision, P.INITIALIZING, message="loading")
        assert not result.accepted and revision.phase == P.CREATING
        assert (
            result.reason == "Revision rev-1 asks for no replicas, so it cannot become Initializing"
        )

    def test_is_silent_once_replicas_are_wanted(self) -> None:
        revision = revision_in(P.CREATING, desired_replicas=2)
        assert require_replicas_wanted(revision, P.INITIALIZING, "loading") is None
        assert transition(revision, P.INITIALIZING, message="loading").accepted

    def test_is_silent_on_moves_it_does_not_govern(self) -> None:
        revision = revision_in(P.INITIALIZING, desired_replicas=0)
        assert require_replicas_wanted not in [
            g.refusal for g in guards_for(P.INITIALIZING, P.TERMINATING)
        ]
        assert transition(revision, P.TERMINATING, message="draining").accepted


class TestRequireAReasonToFail:
    @pytest.mark.parametrize("message", [None, "", "   "])
    def test_refuses_failing_without_a_reason(self, message: str | None) -> None:
        revision = revision_in(P.INITIALIZING)
        result = transition(revision, P.FAILED, message=message)
        assert not result.accepted and revision.phase == P.INITIALIZING
        assert result.reason == "Revision rev-1 cannot become Failed without a reason"

    def test_is_silent_with_a_reason(self) -> None:
        revision = revision_in(P.INITIALIZING)
        assert require_a_reason_to_fail(revision, P.FAILED, "smoke test failed") is None
        assert transition(revision, P.FAILED, message="smoke test failed").accepted

    def test_is_silent_on_moves_it_does_not_govern(self) -> None:
        revision = revision_in(P.DEGRADED)
        assert transition(revision, P.RUNNING, message=None).accepted


class TestRefuseRevivingARetiredRevision:
    @pytest.mark.parametrize("to", [P.INITIALIZING, P.RUNNING, P.DEGRADED, P.TERMINATING])
    def test_refuses_bringing_a_retired_revision_back(self, to: RevisionPhase) -> None:
        current = P.CREATING if to is P.INITIALIZING else P.RUNNING
        revision = revision_in(current, deleted_at=utcnow())
        result = transition(revision, to, message="late")
        assert not result.accepted and revision.phase == current
        assert result.reason == f"Revision rev-1 is retired and cannot become {to}"

    def test_is_silent_while_the_revision_is_not_retired(self) -> None:
        revision = revision_in(P.RUNNING)
        assert refuse_reviving_a_retired_revision(revision, P.DEGRADED, "1 of 2") is None
        assert transition(revision, P.DEGRADED, message="1 of 2").accepted

    def test_is_silent_on_final_phases(self) -> None:
        """A retired Failed revision still takes a new reason."""
        revision = revision_in(P.FAILED, deleted_at=utcnow())
        assert refuse_reviving_a_retired_revision not in [
            g.refusal for g in guards_for(P.FAILED, P.FAILED)
        ]
        assert transition(revision, P.FAILED, message="another reason").accepted


# ----- one writer -------------------------------------------------------------------------------


def test_nothing_but_transition_assigns_a_phase() -> None:
    assigning = re.compile(r"\.phase\s*=(?!=)")
    writers = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if assigning.search(path.read_text())
    )
    assert writers == ["workloads/states.py"]
