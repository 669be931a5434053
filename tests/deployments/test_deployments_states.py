"""The deployment status machine (docs/api/deployments.md): every (from, to) pair for both actors,
each guard refusing and silent, and the history rules."""

from __future__ import annotations

import itertools

import pytest

from greenroom.deployments.models import Deployment
from greenroom.deployments.states import (
    CONTROLLER_TRANSITIONS,
    HISTORY_LIMIT,
    LEAVING_DELETING,
    NOT_IN_TABLE,
    POLICY,
    STILL_RUNS,
    SYSTEM_TRANSITIONS,
    TERMINAL_DEPLOYMENT_STATUSES,
    Actor,
    DeploymentStatus,
    Proposal,
    refusal,
    refuse_deleting_what_runs,
    refuse_leaving_deleting,
    transition,
)

S = DeploymentStatus
ALL = list(DeploymentStatus)
DELETION = (S.DELETING, S.DELETED)
DELETING_MESSAGE = (
    "Deployment is marked for deletion (DELETING). Only transition to DELETED is allowed."
)
OUTCOMES = {S.READY, S.ERROR, S.LOST, S.DELETING, S.DELETED}


def version_in(status: DeploymentStatus, message: str | None = "before") -> Deployment:
    deployment = Deployment(workspace="w", name="n", entity_version=1, config="c", config_version=1)
    deployment.status = status
    deployment.status_message = message
    deployment.status_history = [
        {
            "timestamp": "2024-01-01T00:00:00+00:00",
            "status": status.value,
            "status_message": message,
        }
    ]
    return deployment


def controller_allows(current: DeploymentStatus, to: DeploymentStatus, *, runs: bool) -> bool:
    """The controller's column, written out: any status may follow any other, except that
    DELETING only becomes DELETED (or stays), and a version of which something runs is not
    moved into DELETING or DELETED."""
    if current is S.DELETING and to not in DELETION:
        return False
    return not (runs and to in DELETION and to is not current)


def system_allows(current: DeploymentStatus, to: DeploymentStatus) -> bool:
    """The system's column, written out from what greenroom does itself: a new version starts
    CREATED or PENDING; a rollout ends READY or ERROR, the reconciler says LOST, a delete says
    DELETING then DELETED (from any status outside the deletion); DELETING only becomes
    DELETED; a DELETED version that still runs goes back to DELETING; and every status takes a
    new message in place (a rollout step)."""
    if to is current:
        return True
    if current is S.DELETING:
        return to is S.DELETED
    if current is S.DELETED:
        return to is S.DELETING
    if to in (S.CREATED, S.PENDING):
        return current is S.UNKNOWN
    return to in OUTCOMES


@pytest.mark.parametrize(
    ("current", "to", "runs"), list(itertools.product(ALL, ALL, (False, True)))
)
def test_every_pair_for_a_controller(
    current: DeploymentStatus, to: DeploymentStatus, runs: bool
) -> None:
    deployment = version_in(current)
    change = transition(deployment, to, message="after", by=Actor.CONTROLLER, runs=runs)
    assert change.accepted is controller_allows(current, to, runs=runs)
    if change.accepted:
        assert change.changed
        assert (deployment.status, deployment.status_message) == (to, "after")
        assert deployment.status_history[-1]["status"] == to.value
        assert deployment.status_history[-1]["status_message"] == "after"
        assert len(deployment.status_history) == 2
    elif current is S.DELETING and to not in DELETION:
        assert change.reason == DELETING_MESSAGE
    else:
        assert change.reason == STILL_RUNS.format(status=to.value)
    if not change.accepted:
        assert (deployment.status, deployment.status_message) == (current, "before")
        assert len(deployment.status_history) == 1


@pytest.mark.parametrize(
    ("current", "to", "runs"), list(itertools.product(ALL, ALL, (False, True)))
)
def test_every_pair_for_the_system(
    current: DeploymentStatus, to: DeploymentStatus, runs: bool
) -> None:
    """`runs` does not hold the system back: its deletion moves the status as it withdraws."""
    deployment = version_in(current)
    change = transition(deployment, to, message="after", by=Actor.SYSTEM, runs=runs)
    assert change.accepted is system_allows(current, to)
    if change.accepted:
        assert (deployment.status, deployment.status_message) == (to, "after")
        assert len(deployment.status_history) == 2
    else:
        assert (deployment.status, len(deployment.status_history)) == (current, 1)
        if current is S.DELETING:
            assert change.reason == DELETING_MESSAGE
        else:
            assert change.reason == NOT_IN_TABLE.format(
                current=current.value, to=to.value, by="system"
            )


@pytest.mark.parametrize(("current", "to"), list(itertools.product(ALL, ALL)))
def test_the_tables_are_the_written_rules(current: DeploymentStatus, to: DeploymentStatus) -> None:
    assert (to in SYSTEM_TRANSITIONS[current]) is system_allows(current, to)
    assert (to in CONTROLLER_TRANSITIONS[current]) is controller_allows(current, to, runs=False)


@pytest.mark.parametrize(
    ("current", "to", "by", "runs"),
    list(itertools.product(ALL, ALL, list(Actor), (False, True))),
)
def test_refusal_asks_the_guards_then_the_table(
    current: DeploymentStatus, to: DeploymentStatus, by: Actor, runs: bool
) -> None:
    proposal = Proposal(current=current, to=to, by=by, runs=runs)
    reasons = [reason for guard in POLICY if (reason := guard(proposal))]
    table = {Actor.SYSTEM: SYSTEM_TRANSITIONS, Actor.CONTROLLER: CONTROLLER_TRANSITIONS}[by]
    reason = refusal(proposal)
    if reasons:
        assert reason == reasons[0]
    elif to in table[current]:
        assert reason is None
    else:
        assert reason is not None and reason.startswith("A deployment version cannot go")


def test_deleted_is_the_terminal_status() -> None:
    assert {S.DELETED} == TERMINAL_DEPLOYMENT_STATUSES
    assert [s for s in ALL if s.is_final()] == [S.DELETED]
    assert {s for s in ALL if s.is_deletion()} == set(DELETION)


# ----- the guards: each refuses where it governs and is silent elsewhere -------------------------


class TestRefuseLeavingDeleting:
    @pytest.mark.parametrize("by", list(Actor))
    def test_refuses_a_status_out_of_deleting(self, by: Actor) -> None:
        proposal = Proposal(current=S.DELETING, to=S.READY, by=by)
        assert refuse_leaving_deleting(proposal) == LEAVING_DELETING

    @pytest.mark.parametrize(
        ("current", "to"), [(S.DELETING, S.DELETED), (S.DELETING, S.DELETING), (S.READY, S.LOST)]
    )
    def test_is_silent_on_the_deletion_and_elsewhere(
        self, current: DeploymentStatus, to: DeploymentStatus
    ) -> None:
        assert refuse_leaving_deleting(Proposal(current=current, to=to, by=Actor.SYSTEM)) is None


class TestRefuseDeletingWhatRuns:
    @pytest.mark.parametrize("to", DELETION)
    def test_refuses_a_controller_deleting_a_running_version(self, to: DeploymentStatus) -> None:
        proposal = Proposal(current=S.READY, to=to, by=Actor.CONTROLLER, runs=True)
        assert refuse_deleting_what_runs(proposal) == STILL_RUNS.format(status=to.value)

    @pytest.mark.parametrize(
        "proposal",
        [
            Proposal(current=S.READY, to=S.DELETED, by=Actor.CONTROLLER, runs=False),
            Proposal(current=S.READY, to=S.DELETED, by=Actor.SYSTEM, runs=True),
            Proposal(current=S.DELETED, to=S.DELETED, by=Actor.CONTROLLER, runs=True),
            Proposal(current=S.READY, to=S.LOST, by=Actor.CONTROLLER, runs=True),
        ],
    )
    def test_is_silent_when_nothing_runs_for_the_system_or_outside_the_deletion(
        self, proposal: Proposal
    ) -> None:
        assert refuse_deleting_what_runs(proposal) is None


@pytest.mark.parametrize("to", DELETION)
@pytest.mark.parametrize("current", [s for s in ALL if s not in DELETION])
def test_a_version_that_runs_is_not_reported_deleted(
    current: DeploymentStatus, to: DeploymentStatus
) -> None:
    deployment = version_in(current)
    change = transition(deployment, to, message="gone?", by=Actor.CONTROLLER, runs=True)
    assert not change.accepted
    assert "still runs" in change.reason
    assert (deployment.status, len(deployment.status_history)) == (current, 1)


# ----- the history -------------------------------------------------------------------------------


@pytest.mark.parametrize("by", list(Actor))
@pytest.mark.parametrize("status", ALL)
def test_an_unchanged_update_writes_nothing(status: DeploymentStatus, by: Actor) -> None:
    deployment = version_in(status)
    history = list(deployment.status_history)
    change = transition(deployment, status, message="before", by=by)
    assert (change.accepted, change.changed) == (True, False)
    assert deployment.status_history == history
    assert deployment.updated_at is None  # not even touched


def test_a_new_message_alone_is_a_change() -> None:
    deployment = version_in(S.READY)
    assert transition(deployment, S.READY, message="still ready", by=Actor.CONTROLLER).changed
    assert [e["status_message"] for e in deployment.status_history] == ["before", "still ready"]


def test_adjacent_duplicates_collapse_and_the_first_timestamp_wins() -> None:
    deployment = version_in(S.READY, "up")
    deployment.status_message = "changed elsewhere"  # current differs from the last entry
    first = dict(deployment.status_history[-1])
    change = transition(deployment, S.READY, message="up", by=Actor.SYSTEM)
    assert change.changed
    assert deployment.status_history == [first]


def test_the_history_keeps_the_last_100_oldest_first() -> None:
    deployment = version_in(S.CREATED)
    for number in range(150):
        transition(deployment, S.CREATED, message=f"step {number}", by=Actor.SYSTEM)
    history = deployment.status_history
    assert len(history) == HISTORY_LIMIT
    assert history[0]["status_message"] == "step 50"
    assert history[-1]["status_message"] == "step 149"
    stamps = [entry["timestamp"] for entry in history]
    assert stamps == sorted(stamps)


def test_a_version_without_status_is_unknown() -> None:
    deployment = Deployment(workspace="w", name="n", entity_version=1, config="c", config_version=1)
    change = transition(deployment, S.CREATED, message="Deployment created", by=Actor.SYSTEM)
    assert change.changed
    assert [e["status"] for e in deployment.status_history] == ["CREATED"]
