"""The tasks service: create (idempotent), read, latest, cancel — on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from factories import add_deployment, add_embedding_model
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from greenroom.config import Settings
from greenroom.deployments import service as deployments_service
from greenroom.deployments.service import ConfigPolicy, RefusedConfigError
from greenroom.errors import ConflictError, NotFoundError
from greenroom.store.db import Store
from greenroom.tasks import service as tasks_service
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import ModelDeletionRequest, ModelDeploymentRequest, TaskKind
from greenroom.tasks.states import TaskStatus

DEPLOY, DELETE = TaskKind.DEPLOY, TaskKind.DELETE


@pytest.fixture
def db_session(store: Store) -> Iterator[Session]:
    """One session for the test, committed at the end (the store is empty and migrated)."""
    with store.session_scope() as session:
        add_embedding_model(session, "m1")
        yield session


def deploy(db_session: Session, **body: object) -> Task:
    body.setdefault("embedding_model_id", "m1")
    return tasks_service.create_deploy_task(
        db_session, request=ModelDeploymentRequest.model_validate(body)
    )


def delete(db_session: Session, **body: object) -> Task:
    body.setdefault("embedding_model_id", "m1")
    return tasks_service.create_delete_task(
        db_session, request=ModelDeletionRequest.model_validate(body)
    )


def test_create_deploy_task(db_session: Session) -> None:
    task = tasks_service.create_deploy_task(
        db_session,
        request=ModelDeploymentRequest(model_id="m1"),
        initiated_by="ci",
        deployment_target="ray",
    )
    assert re.fullmatch(r"deploy-[0-9a-f]{32}", task.id)
    assert (task.kind, task.embedding_model_id, task.status) == ("deploy", "m1", "pending")
    assert task.created_at == task.updated_at
    assert task.task_metadata == {
        "deployment_target": "ray",
        "initiated_by": "ci",
        "workspace": "default",
        "config": "m1",
        "config_version": 1,
        "allow_embedding_space_change": False,
    }
    assert task.request == {
        "embedding_model_id": "m1",
        "id": None,
        "config": {},
        "allow_embedding_space_change": False,
    }


def test_config_overrides_are_stored_as_a_new_config_version(db_session: Session) -> None:
    task = deploy(db_session, config={"replicas": 2, "max_batch_size": 16})
    config = deployments_service.get_latest_config(db_session, workspace="default", name="m1")
    assert config is not None and config.entity_version == 2
    assert (config.executor_config["replicas"], config.executor_config["max_batch_size"]) == (2, 16)
    assert task.task_metadata["config_version"] == 2
    assert task.request["config"] == {"replicas": 2, "max_batch_size": 16}


def test_overrides_that_change_nothing_add_no_version(db_session: Session) -> None:
    task = deploy(db_session, config={"replicas": 1})
    assert task.task_metadata["config_version"] == 1


def test_a_config_runtime_is_the_deployment_target(db_session: Session) -> None:
    policy = ConfigPolicy.of(Settings(runtime="local", extra_runtimes="ray"))

    def target(runtime: str | None) -> str:
        request = ModelDeploymentRequest.model_validate(
            {"embedding_model_id": "m1", "config": {"runtime": runtime}}
        )
        task = tasks_service.create_deploy_task(db_session, request=request, policy=policy)
        return task.task_metadata["deployment_target"]

    assert target("ray") == "ray"
    assert target(None) == "local"


def test_a_runtime_the_server_does_not_enable_is_refused(db_session: Session) -> None:
    """Issue 9 item 2: `greenroom deploy m1 --set runtime=ray` on a server without
    GREENROOM_EXTRA_RUNTIMES=ray is a 422, and no config version is written."""
    policy = ConfigPolicy.of(Settings(runtime="local"))
    request = ModelDeploymentRequest.model_validate(
        {"embedding_model_id": "m1", "config": {"runtime": "ray"}}
    )
    with pytest.raises(RefusedConfigError, match="'ray' is not enabled") as caught:
        tasks_service.create_deploy_task(db_session, request=request, policy=policy)
    assert caught.value.status_code == 422
    config = deployments_service.get_latest_config(db_session, workspace="default", name="m1")
    assert config is not None and config.entity_version == 1


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


def test_client_id_is_used_verbatim_and_is_idempotent(db_session: Session) -> None:
    first = deploy(db_session, id="deploy-42")
    again = deploy(db_session, id="deploy-42", allow_embedding_space_change=False, config={})
    assert first.id == again.id == "deploy-42"
    assert again is first
    assert (
        len(deployments_service.list_config_versions(db_session, workspace="default", name="m1"))
        == 1
    )


def test_same_id_with_another_body_is_a_conflict(db_session: Session) -> None:
    deploy(db_session, id="job-1")
    with pytest.raises(ConflictError, match="Task `job-1` already exists with a different request"):
        deploy(db_session, id="job-1", allow_embedding_space_change=True)
    with pytest.raises(ConflictError):
        delete(db_session, id="job-1")  # one id space for both kinds


def test_deploy_of_an_unknown_model(db_session: Session) -> None:
    with pytest.raises(NotFoundError, match="Embedding model `nope` is not found"):
        deploy(db_session, embedding_model_id="nope")
    with pytest.raises(NotFoundError, match="Embedding model `team/search` is not found"):
        deploy(db_session, embedding_model_id="team/search")


def test_deploy_of_a_deployment_in_another_workspace(db_session: Session) -> None:
    deployments_service.create_config(db_session, workspace="team", name="cfg", model_name="m1")
    add_deployment(db_session, workspace="team", name="search", config="cfg")
    task = deploy(db_session, embedding_model_id="team/search", config={"replicas": 2})
    assert task.embedding_model_id == "team/search"
    assert task.task_metadata["workspace"] == "team"
    assert (task.task_metadata["config"], task.task_metadata["config_version"]) == ("cfg", 2)


def test_served_names_are_canonical(db_session: Session) -> None:
    task = deploy(db_session, embedding_model_id="default/m1")
    assert task.embedding_model_id == "m1"
    assert tasks_service.get_latest(db_session, embedding_model_id="default/m1", kind=DEPLOY)


def test_create_delete_task(db_session: Session) -> None:
    task = delete(db_session, reason="retired")
    assert re.fullmatch(r"delete-[0-9a-f]{32}", task.id)
    assert (task.kind, task.status) == ("delete", "pending")
    assert task.task_metadata == {
        "deletion_type": "manual",
        "reason": "retired",
        "initiated_by": "admin",
    }
    assert delete(db_session, id="d-1").id == "d-1"
    assert delete(db_session, id="d-1").id == "d-1"


def test_delete_needs_a_model_or_a_deployment(db_session: Session) -> None:
    with pytest.raises(NotFoundError, match="Embedding model `gone` is not found"):
        delete(db_session, embedding_model_id="gone")
    add_deployment(db_session, workspace="default", name="gone", config="gone")
    assert delete(db_session, embedding_model_id="gone").embedding_model_id == "gone"


def test_storage_failure_is_reported_as_such(
    db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    flush = db_session.flush

    def fail_to_insert_tasks() -> None:
        if any(isinstance(row, Task) for row in db_session.new):
            raise OperationalError("INSERT INTO tasks", {}, Exception("disk full"))
        flush()

    monkeypatch.setattr(db_session, "flush", fail_to_insert_tasks)
    with pytest.raises(tasks_service.TaskStorageError) as info:
        deploy(db_session)
    assert info.value.status_code == 500
    assert info.value.message == "Failed to create and send model deployment task"


def test_racing_requests_with_one_id_get_one_task(store: Store) -> None:
    with store.session_scope() as session:
        add_embedding_model(session, "m1")
    results: list[Task | BaseException] = []

    def create() -> None:
        try:
            with store.session_scope() as session:
                results.append(deploy(session, id="race"))
        except BaseException as exc:
            results.append(exc)

    with store.session_scope() as holder:
        winner = deploy(holder, id="race")  # not committed yet: the other insert waits
        thread = threading.Thread(target=create)
        thread.start()
        thread.join(timeout=0.5)
    thread.join(timeout=30)
    assert len(results) == 1 and isinstance(results[0], Task), results
    assert (results[0].id, results[0].created_at) == (winner.id, winner.created_at)


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
    config = deployments_service.get_latest_config(db_session, workspace="default", name="m1")
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


def test_a_rollback_to_settings_the_server_no_longer_allows_is_refused(
    db_session: Session, tmp_path: Path
) -> None:
    """A revision started when Ray (or a variable) was allowed does not come back once the
    operator narrowed the policy: its rollback task is stored `refused` with the reason."""
    from greenroom.registry.weights import content_hash
    from greenroom.tasks.rollback import RollbackRequest, create_rollback_task
    from greenroom.workloads.models import Revision

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.onnx").write_bytes(b"weights")
    revision = Revision(
        id="r-ray",
        deployment_id="d",
        served_name="m1",
        embedding_model_id="m1",
        source=str(weights),
        model_path=str(weights),
        content_hash=content_hash(weights),
        engine="onnx",
        config={"additional_envs": {"OMP_NUM_THREADS": "1"}},
        runtime="ray",
        phase="Stopped",
    )
    db_session.add(revision)
    db_session.flush()
    request = RollbackRequest(embedding_model_id="m1", revision_id="r-ray")
    allowed = ConfigPolicy.of(Settings(runtime="local", extra_runtimes="ray"))
    task = create_rollback_task(db_session, request=request, policy=allowed)
    assert task.status == "pending"
    narrowed = ConfigPolicy.of(Settings(runtime="local"))
    task = create_rollback_task(db_session, request=request, policy=narrowed)
    assert task.status == "refused"
    assert task.detail is not None and "'ray' is not enabled" in task.detail
