"""The tasks flows: a deploy or delete request checked against the other domains and stored
(idempotent on a client id) — on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import threading

import pytest
from factories import add_deployment, add_embedding_model
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from task_requests import delete, deploy

from greenroom.auth.scopes import Scope
from greenroom.auth.service import Principal
from greenroom.config import Settings
from greenroom.deployments import configs as deployments_configs
from greenroom.deployments import flows as deployments_flows
from greenroom.deployments.configs import ConfigPolicy, RefusedConfigError
from greenroom.errors import ConflictError, NotFoundError
from greenroom.store.db import Store
from greenroom.tasks import flows as tasks_flows
from greenroom.tasks import service as tasks_service
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import (
    ModelDeletionRequest,
    ModelDeploymentRequest,
    TaskKind,
    TaskMetadata,
)
from greenroom.tasks.states import TaskStatus, transition

DEPLOY, DELETE = TaskKind.DEPLOY, TaskKind.DELETE


def test_create_deploy_task(db_session: Session) -> None:
    task = tasks_flows.create_deploy_task(
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
        "strategy": "green",
    }
    assert task.request == {
        "embedding_model_id": "m1",
        "id": None,
        "config": {},
        "allow_embedding_space_change": False,
        "strategy": "green",
    }


def test_config_overrides_become_a_config_version_only_when_the_task_runs(
    db_session: Session,
) -> None:
    """Issue 10: the request checks the overrides and keeps them in the task; the snapshot step
    writes the config version (tests/rollout/test_rollout_steps.py). Before, the version was
    written here and `metadata.config_version` was 2 at once."""
    task = deploy(db_session, config={"replicas": 2, "max_batch_size": 16})
    config = deployments_configs.get_latest_config(db_session, workspace="default", name="m1")
    assert config is not None and config.entity_version == 1
    metadata = tasks_service.metadata_of(task)
    assert metadata.config_overrides == {"replicas": 2, "max_batch_size": 16}
    assert metadata.config_version is None
    assert "config_version" not in task.task_metadata
    assert "config_overrides" not in TaskMetadata.of(task.task_metadata).shown()
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
        task = tasks_flows.create_deploy_task(db_session, request=request, policy=policy)
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
        tasks_flows.create_deploy_task(db_session, request=request, policy=policy)
    assert caught.value.status_code == 422
    config = deployments_configs.get_latest_config(db_session, workspace="default", name="m1")
    assert config is not None and config.entity_version == 1


def test_client_id_is_used_verbatim_and_is_idempotent(db_session: Session) -> None:
    first = deploy(db_session, id="deploy-42")
    again = deploy(db_session, id="deploy-42", allow_embedding_space_change=False, config={})
    assert first.id == again.id == "deploy-42"
    assert again is first
    assert (
        len(deployments_configs.list_config_versions(db_session, workspace="default", name="m1"))
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
    deployments_flows.create_config(db_session, workspace="team", name="cfg", model_name="m1")
    add_deployment(db_session, workspace="team", name="search", config="cfg")
    task = deploy(db_session, embedding_model_id="team/search", config={"replicas": 2})
    assert task.embedding_model_id == "team/search"
    assert task.task_metadata["workspace"] == "team"
    # the overrides wait for the task to run (issue 10): the version is written then, as 2
    assert task.task_metadata["config"] == "cfg"
    assert task.task_metadata["config_overrides"] == {"replicas": 2}


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


def config_versions(db_session: Session) -> int:
    return len(deployments_configs.list_config_versions(db_session, workspace="default", name="m1"))


def test_a_canceled_or_refused_deploy_with_overrides_leaves_no_config_version(
    db_session: Session,
) -> None:
    canceled = deploy(db_session, config={"replicas": 3})
    tasks_service.cancel(db_session, task_id=canceled.id, kind=DEPLOY)
    refused = deploy(db_session, config={"max_batch_size": 8})
    assert transition(refused, TaskStatus.REFUSED, reason="not enough memory").accepted
    db_session.flush()
    assert (canceled.status, refused.status) == ("canceled", "refused")
    assert config_versions(db_session) == 1


def test_overrides_out_of_bounds_or_policy_are_refused_at_request_time(
    db_session: Session,
) -> None:
    policy = ConfigPolicy.of(Settings(runtime="local"))
    with pytest.raises(RefusedConfigError, match="'ray' is not enabled"):
        tasks_flows.create_deploy_task(
            db_session,
            request=ModelDeploymentRequest.model_validate(
                {"embedding_model_id": "m1", "config": {"runtime": "ray"}}
            ),
            policy=policy,
        )
    assert tasks_service.get_latest(db_session, embedding_model_id="m1", kind=DEPLOY) is None


def test_the_principal_of_a_tasks_api_deploy_is_recorded_for_its_version(
    db_session: Session,
) -> None:
    """Issue 10: the version a Tasks API deploy creates records the token's id and scopes;
    `initiated_by` stays the token's name. Neither id nor scopes are shown by the API."""
    principal = Principal(id="tok-1", name="ci-bot", scopes=frozenset({Scope.DEPLOY, Scope.READ}))
    task = tasks_flows.create_deploy_task(
        db_session, request=ModelDeploymentRequest(embedding_model_id="m1"), principal=principal
    )
    metadata = tasks_service.metadata_of(task)
    assert (metadata.initiated_by, metadata.principal_id) == ("ci-bot", "tok-1")
    assert metadata.principal_groups == ["deploy", "read"]
    shown = metadata.shown()
    assert shown["initiated_by"] == "ci-bot"
    assert "principal_id" not in shown and "principal_groups" not in shown


def test_the_principal_of_a_delete_is_its_name(db_session: Session) -> None:
    principal = Principal(id="tok-2", name="ops", scopes=frozenset({Scope.DEPLOY}))
    task = tasks_flows.create_delete_task(
        db_session, request=ModelDeletionRequest(embedding_model_id="m1"), principal=principal
    )
    assert task.task_metadata["initiated_by"] == "ops"
