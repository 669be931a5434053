"""Deployment status rules (api/deployments.md), walked over every (from, to) pair."""

from __future__ import annotations

import itertools

import pytest

from greenroom.deployments.models import Deployment
from greenroom.deployments.states import (
    HISTORY_LIMIT,
    STILL_RUNS,
    DeploymentStatus,
    refusal,
    set_status,
)

ALL = list(DeploymentStatus)
DELETING_MESSAGE = (
    "Deployment is marked for deletion (DELETING). Only transition to DELETED is allowed."
)


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


DELETION = (DeploymentStatus.DELETING, DeploymentStatus.DELETED)


def allowed(current: DeploymentStatus, to: DeploymentStatus, *, runs: bool = False) -> bool:
    """The table: any status may follow any other, except that DELETING only becomes DELETED,
    and a version of which something runs only stays where it is among DELETING and DELETED."""
    if current is DeploymentStatus.DELETING and to not in DELETION:
        return False
    return not (runs and to in DELETION and to is not current)


@pytest.mark.parametrize(("current", "to"), list(itertools.product(ALL, ALL)))
def test_every_pair(current: DeploymentStatus, to: DeploymentStatus) -> None:
    deployment = version_in(current)
    change = set_status(deployment, to, "after")
    assert change.accepted is allowed(current, to)
    if change.accepted:
        assert change.changed
        assert (deployment.status, deployment.status_message) == (to, "after")
        assert deployment.status_history[-1]["status"] == to.value
        assert deployment.status_history[-1]["status_message"] == "after"
        assert len(deployment.status_history) == 2
    else:
        assert change.reason == DELETING_MESSAGE
        assert (deployment.status, deployment.status_message) == (current, "before")
        assert len(deployment.status_history) == 1


@pytest.mark.parametrize(
    ("current", "to", "runs"), list(itertools.product(ALL, ALL, (False, True)))
)
def test_refusal_is_the_table(current: DeploymentStatus, to: DeploymentStatus, runs: bool) -> None:
    reason = refusal(current, to, runs=runs)
    assert (reason is None) is allowed(current, to, runs=runs)
    if reason is not None and current is not DeploymentStatus.DELETING:
        assert reason == STILL_RUNS.format(status=to.value)


@pytest.mark.parametrize("to", DELETION)
@pytest.mark.parametrize("current", [s for s in ALL if s not in DELETION])
def test_a_version_that_runs_is_not_reported_deleted(
    current: DeploymentStatus, to: DeploymentStatus
) -> None:
    deployment = version_in(current)
    change = set_status(deployment, to, "gone?", runs=True)
    assert not change.accepted
    assert "still runs" in change.reason
    assert (deployment.status, len(deployment.status_history)) == (current, 1)


@pytest.mark.parametrize("status", ALL)
def test_an_unchanged_update_writes_nothing(status: DeploymentStatus) -> None:
    deployment = version_in(status)
    history = list(deployment.status_history)
    change = set_status(deployment, status, "before")
    assert (change.accepted, change.changed) == (True, False)
    assert deployment.status_history == history
    assert deployment.updated_at is None  # not even touched


def test_a_new_message_alone_is_a_change() -> None:
    deployment = version_in(DeploymentStatus.READY)
    assert set_status(deployment, DeploymentStatus.READY, "still ready").changed
    assert [e["status_message"] for e in deployment.status_history] == ["before", "still ready"]


def test_adjacent_duplicates_collapse_and_the_first_timestamp_wins() -> None:
    deployment = version_in(DeploymentStatus.READY, "up")
    deployment.status_message = "changed elsewhere"  # current differs from the last entry
    first = dict(deployment.status_history[-1])
    change = set_status(deployment, DeploymentStatus.READY, "up")
    assert change.changed
    assert deployment.status_history == [first]


def test_the_history_keeps_the_last_100_oldest_first() -> None:
    deployment = version_in(DeploymentStatus.CREATED)
    for number in range(150):
        set_status(deployment, DeploymentStatus.PENDING, f"step {number}")
    history = deployment.status_history
    assert len(history) == HISTORY_LIMIT
    assert history[0]["status_message"] == "step 50"
    assert history[-1]["status_message"] == "step 149"
    stamps = [entry["timestamp"] for entry in history]
    assert stamps == sorted(stamps)


def test_a_version_without_status_is_unknown() -> None:
    deployment = Deployment(workspace="w", name="n", entity_version=1, config="c", config_version=1)
    change = set_status(deployment, DeploymentStatus.CREATED, "Deployment created")
    assert change.changed
    assert [e["status"] for e in deployment.status_history] == ["CREATED"]
