"""The tasks service: read, latest, cancel, queue, metadata — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session
from task_requests import delete, deploy

from greenroom.deployments import configs as deployments_configs
from greenroom.errors import ConflictError, NotFoundError
from greenroom.tasks import service as tasks_service
from greenroom.tasks.schemas import (
    ModelDeletionRequest,
    ModelDeploymentRequest,
    TaskKind,
    TaskMetadata,
)
from greenroom.tasks.states import TaskStatus

DEPLOY, DELETE = TaskKind.DEPLOY, TaskKind.DELETE


@pytest.mark.parametrize(
    "name", ["..", ".", "team/..", "../x", "ｍ1", "m\u0131", "a/b/c", "/m1", "m1/", "m 1"]
)
def test_served_names_are_ascii_parts(name: str) -> None:
    with pytest.raises(ValidationError):
        ModelDeploymentRequest.model_validate({"embedding_model_id": name})
    with pytest.raises(ValidationError):
        ModelDeletionRequest.model_validate({"embedding_model_id": name})


@pytest.mark.parametrize("name", ["m1", "team-a/emb", "default/m1", "a.b/c_d-1", ".../x"])
def test_served_names_that_stay_allowed(name: str) -> None:
    assert ModelDeploymentRequest.model_validate({"embedding_model_id": name})


def test_get_or_raise_finds_only_its_kind(db_session: Session) -> None:
    task = deploy(db_session)
    assert tasks_service.get(db_session, task_id=task.id) is task
    assert tasks_service.get_or_raise(db_session, task_id=task.id, kind=DEPLOY) is task
    with pytest.raises(NotFoundError, match=f"Deletion task with ID `{task.id}` is not found"):
        tasks_service.get_or_raise(db_session, task_id=task.id, kind=DELETE)
    with pytest.raises(NotFoundError, match="Deployment task with ID `x` is not found"):
        tasks_service.get_or_raise(db_session, task_id="x", kind=DEPLOY)


def test_get_latest_is_the_last_created_even_within_one_microsecond(
    db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = datetime(2030, 1, 1, tzinfo=UTC)
    monkeypatch.setattr(tasks_service, "utcnow", lambda: frozen)
    tasks = [deploy(db_session) for _ in range(3)]
    delete(db_session)
    assert tasks[0].created_at < tasks[1].created_at < tasks[2].created_at
    latest = tasks_service.get_latest(db_session, embedding_model_id="m1", kind=DEPLOY)
    assert latest is tasks[2]


def test_get_latest_or_raise(db_session: Session) -> None:
    deploy(db_session)
    with pytest.raises(
        NotFoundError, match="Deletion task with embedding model ID `m1` is not found"
    ):
        tasks_service.get_latest_or_raise(db_session, embedding_model_id="m1", kind=DELETE)
    with pytest.raises(
        NotFoundError, match="Deployment task with embedding model ID `m2` is not found"
    ):
        tasks_service.get_latest_or_raise(db_session, embedding_model_id="m2", kind=DEPLOY)


def test_cancel_a_pending_task(db_session: Session) -> None:
    task = deploy(db_session)
    canceled = tasks_service.cancel(db_session, task_id=task.id, kind=DEPLOY)
    assert canceled.status == TaskStatus.CANCELED
    assert canceled.updated_at >= canceled.created_at


@pytest.mark.parametrize("status", [s for s in TaskStatus if s != TaskStatus.PENDING])
def test_cancel_refuses_a_task_that_is_not_pending(db_session: Session, status: str) -> None:
    task = delete(db_session)
    task.status = status
    db_session.flush()
    with pytest.raises(ConflictError, match=f"Task `{task.id}` is {status} and cannot be canceled"):
        tasks_service.cancel(db_session, task_id=task.id, kind=DELETE)


def test_cancel_of_another_kind_is_not_found(db_session: Session) -> None:
    task = deploy(db_session)
    with pytest.raises(NotFoundError, match="Deletion task with ID"):
        tasks_service.cancel(db_session, task_id=task.id, kind=DELETE)


# ----- tasks queued by the deployments API -------------------------------------------------------


def test_queue_deploy(db_session: Session) -> None:
    config = deployments_configs.get_latest_config(db_session, workspace="default", name="m1")
    assert config is not None
    task = tasks_service.queue_deploy(
        db_session,
        served_name="default/m1",
        config=config,
        deployment_revision_id="rev-1",
        initiated_by="alice",
        deployment_target="ray",
    )
    assert (task.kind, task.embedding_model_id, task.status) == ("deploy", "m1", "pending")
    assert task.id.startswith("deploy-")
    assert task.task_metadata == {
        "deployment_target": "ray",
        "initiated_by": "alice",
        "workspace": "default",
        "config": "m1",
        "config_version": 1,
        "allow_embedding_space_change": False,
        "deployment_revision_id": "rev-1",
    }
    assert tasks_service.get_latest(db_session, embedding_model_id="m1", kind=DEPLOY) is task


def test_queue_delete(db_session: Session) -> None:
    task = tasks_service.queue_delete(
        db_session, served_name="team/x", reason="why", deployment_revision_id="rev-1"
    )
    assert (task.kind, task.embedding_model_id, task.status) == ("delete", "team/x", "pending")
    assert task.task_metadata == {
        "deletion_type": "manual",
        "reason": "why",
        "initiated_by": "admin",
        "deployment_revision_id": "rev-1",
    }


# ----- what other domains ask of the tasks ------------------------------------------------------


def test_unfinished_lists_pending_and_processing_tasks(db_session: Session) -> None:
    first, second, ended = deploy(db_session), delete(db_session), deploy(db_session)
    second.status = TaskStatus.PROCESSING
    tasks_service.cancel(db_session, task_id=ended.id, kind=DEPLOY)
    db_session.flush()
    unfinished = tasks_service.unfinished(db_session, served_name="default/m1")
    assert [task.id for task in unfinished] == [first.id, second.id]
    assert tasks_service.unfinished(db_session, served_name="m2") == []


def test_is_rolling_out_only_while_a_deploy_is_processing(db_session: Session) -> None:
    task = deploy(db_session)
    assert not tasks_service.is_rolling_out(db_session, served_name="m1")
    task.status = TaskStatus.PROCESSING
    db_session.flush()
    assert tasks_service.is_rolling_out(db_session, served_name="m1")
    assert not tasks_service.is_rolling_out(db_session, served_name="m2")


def test_names_revision(db_session: Session) -> None:
    config = deployments_configs.get_latest_config(db_session, workspace="default", name="m1")
    assert config is not None
    queued = tasks_service.queue_deploy(
        db_session, served_name="m1", config=config, deployment_revision_id="rev-a"
    )
    assert tasks_service.names_revision(queued, "rev-a")
    assert not tasks_service.names_revision(queued, "rev-b")
    tasks_service.save_metadata(
        db_session, task_id=queued.id, updates=TaskMetadata(revision_id="rev-b")
    )
    assert tasks_service.names_revision(queued, "rev-b")


def test_save_metadata_merges_the_keys_given(db_session: Session) -> None:
    task = delete(db_session, reason="old")
    merged = tasks_service.save_metadata(
        db_session, task_id=task.id, updates=TaskMetadata(revision_id="r1", result="failed")
    )
    assert merged.reason == "old" and merged.revision_id == "r1"
    stored = tasks_service.get(db_session, task_id=task.id)
    assert stored is not None
    assert stored.task_metadata == {
        "deletion_type": "manual",
        "reason": "old",
        "initiated_by": "admin",
        "revision_id": "r1",
        "result": "failed",
    }
    with pytest.raises(NotFoundError):
        tasks_service.save_metadata(db_session, task_id="nope", updates=TaskMetadata())
