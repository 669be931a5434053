"""The task state machine: every (from, to) pair, accepted exactly where the table allows."""

from __future__ import annotations

import itertools

import pytest

from greenroom.tasks.models import Task
from greenroom.tasks.states import (
    ALLOWED_TRANSITIONS,
    TERMINAL_TASK_STATUSES,
    TaskStatus,
    transition,
)

PAIRS = list(itertools.product(TaskStatus, TaskStatus))


def make_task(status: TaskStatus) -> Task:
    return Task(id="deploy-1", kind="deploy", embedding_model_id="m", status=status, detail=None)


@pytest.mark.parametrize(("current", "proposed"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_transition_is_accepted_exactly_where_allowed(
    current: TaskStatus, proposed: TaskStatus
) -> None:
    task = make_task(current)
    task.lease_owner = "worker-1"
    allowed = proposed in ALLOWED_TRANSITIONS.get(current, frozenset())

    result = transition(task, proposed, reason="why")

    assert result.accepted is allowed
    if allowed:
        assert task.status == proposed
        assert task.detail == "why"
        assert (task.lease_owner is None) is proposed.is_final()
    else:
        assert task.status == current
        assert task.detail is None
        assert task.lease_owner == "worker-1"
        assert f"is {current} and cannot become {proposed}" in result.reason


def test_a_task_never_goes_back() -> None:
    for final in TERMINAL_TASK_STATUSES:
        assert final.is_final()
        assert not ALLOWED_TRANSITIONS.get(final)
    assert not TaskStatus.PENDING.is_final()
    assert not TaskStatus.PROCESSING.is_final()


def test_a_long_reason_is_cut_to_the_detail_limit() -> None:
    task = make_task(TaskStatus.PROCESSING)
    assert transition(task, TaskStatus.FAILED, reason="x" * 2000).accepted
    assert task.detail is not None and len(task.detail) == 1500
