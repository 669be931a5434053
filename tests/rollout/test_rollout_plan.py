"""The rollout's plan: the named steps in order, each with its function, and the step records."""

from __future__ import annotations

from datetime import datetime

from greenroom.rollout import migration_steps, plan, steps
from greenroom.rollout.plan import (
    DELETE_PLAN,
    DEPLOY_PLAN,
    initial_steps,
    mark,
    next_step,
    plan_of,
    with_message,
)
from greenroom.tasks.schemas import StepStatus, TaskMetadata


def test_the_deploy_plan_is_design_md_s_steps_in_order() -> None:
    assert [(step.name, step.run) for step in DEPLOY_PLAN] == [
        ("snapshot", steps.snapshot),
        ("start_green", steps.start_green),
        ("smoke_test", steps.smoke_test),
        ("compatibility_gate", steps.compatibility_gate),
        ("switch", steps.switch),
        ("drain_blue", steps.drain_blue),
        ("finish", steps.finish),
    ]


def test_only_the_steps_before_the_switch_roll_back() -> None:
    rolls_back = [step.name for step in DEPLOY_PLAN if step.rolls_back]
    assert rolls_back == ["snapshot", "start_green", "smoke_test", "compatibility_gate"]
    assert not any(step.rolls_back for step in DELETE_PLAN)


def test_the_delete_plan() -> None:
    assert [(step.name, step.run) for step in DELETE_PLAN] == [
        ("unroute", steps.unroute),
        ("drain", steps.drain_deleted),
        ("stop", steps.stop_deleted),
        ("finish", steps.finish_delete),
    ]
    assert plan_of("delete") is DELETE_PLAN and plan_of("deploy") is DEPLOY_PLAN
    assert [step.name for step in DEPLOY_PLAN] == plan.DEPLOY_STEPS


def test_initial_steps_are_pending() -> None:
    records = initial_steps(DELETE_PLAN)
    assert [r.name for r in records] == ["unroute", "drain", "stop", "finish"]
    assert {r.status for r in records} == {StepStatus.PENDING}
    assert next_step(records) == "unroute"


def test_mark_times_a_step_and_resume_starts_at_the_first_unfinished() -> None:
    records = mark(initial_steps(DELETE_PLAN), "unroute", StepStatus.RUNNING)
    running = records[0]
    assert running.started_at is not None and running.finished_at is None
    assert next_step(records) == "unroute"  # interrupted: run it again
    records = mark(records, "unroute", StepStatus.DONE, "removed")
    finished = records[0]
    assert finished.started_at == running.started_at and finished.message == "removed"
    assert finished.finished_at is not None and finished.duration_ms is not None
    started = datetime.fromisoformat(running.started_at)
    assert datetime.fromisoformat(finished.finished_at) >= started
    records = mark(records, "drain", StepStatus.SKIPPED, "nothing to drain")
    assert next_step(records) == "stop"
    records = mark(records, "stop", StepStatus.FAILED, "boom")
    assert next_step(records) == "stop"
    for name in ("stop", "finish"):
        records = mark(records, name, StepStatus.DONE)
    assert next_step(records) is None


def test_a_step_finished_without_running_gets_both_times() -> None:
    (record, *_) = mark(initial_steps(DEPLOY_PLAN), "snapshot", StepStatus.SKIPPED, "unchanged")
    assert record.started_at == record.finished_at and record.duration_ms == 0


def test_with_message_changes_only_that_step() -> None:
    records = mark(initial_steps(DEPLOY_PLAN), "switch", StepStatus.RUNNING)
    updated = with_message(records, "switch", "waiting for router(s) r1 to serve green")
    assert updated[4].message == "waiting for router(s) r1 to serve green"
    assert updated[4].started_at == records[4].started_at
    assert [r.message for r in updated[:4]] == [None] * 4


def test_the_plans_of_an_embedding_migration() -> None:
    """docs/api/migrations.md: each task's steps in order; a deploy's and an abort's plan follow
    its metadata."""
    staged = plan_of("deploy", TaskMetadata(strategy="staged"))
    assert staged is plan.STAGED_DEPLOY_PLAN
    assert [s.name for s in staged] == [
        "snapshot", "start_green", "smoke_test", "compatibility_gate", "stage", "finish",
    ]  # fmt: skip
    assert plan_of("deploy", TaskMetadata(strategy="green")) is DEPLOY_PLAN
    assert plan_of("promote") is plan.PROMOTE_PLAN
    assert plan.PROMOTE_STEPS == ["gate", "start_live", "switch", "drain_blue", "finish"]
    assert [s.name for s in plan_of("finish")] == ["switch_space", "retire_adapter", "finish"]
    assert [s.name for s in plan_of("abort", TaskMetadata(abort_of="staged"))] == [
        "withdraw_staged",
        "finish",
    ]
    adapted = plan_of("abort", TaskMetadata(abort_of="adapted"))
    assert [s.name for s in adapted] == plan.DEPLOY_STEPS


def test_what_a_migration_s_failure_rolls_back() -> None:
    """A promotion's gate and start_live keep the staged revision staged (and say so); an
    abort's rollback withdraws the old model's new revision before its switch, never after."""
    promote = {s.name: s for s in plan.PROMOTE_PLAN}
    for name in ("gate", "start_live"):
        assert promote[name].rolls_back and promote[name].undo is migration_steps.keep_staged
        assert promote[name].failure_note == plan.STAYS_STAGED
    assert not any(promote[name].rolls_back for name in ("switch", "drain_blue", "finish"))
    adapted = plan_of("abort", TaskMetadata(abort_of="adapted"))
    assert [s.name for s in adapted if s.rolls_back] == [
        "snapshot", "start_green", "smoke_test", "compatibility_gate",
    ]  # fmt: skip
    assert {s.undo for s in adapted} == {None}  # the deploy's roll back: withdraw green
    assert not any(s.rolls_back for s in plan.FINISH_PLAN + plan.ABORT_STAGED_PLAN)
