"""Deployments and tasks as one system: versions queue deploy tasks, DELETE a delete task."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from factories import add_embedding_model
from sqlalchemy import select
from sqlalchemy.orm import Session

from greenroom.deployments import flows as deployments_flows
from greenroom.deployments import service as deployments_service
from greenroom.deployments.schemas import DeploymentCreate, DeploymentUpdate
from greenroom.deployments.service import Caller
from greenroom.store.db import Store
from greenroom.tasks import service as tasks_service
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import TaskKind

WS = "team"


@pytest.fixture
def db_session(store: Store) -> Iterator[Session]:
    with store.session_scope() as session:
        add_embedding_model(session, "m1")
        deployments_service.create_config(session, workspace=WS, name="c", model_name="m1")
        yield session


def all_tasks(db_session: Session) -> list[Task]:
    return list(db_session.scalars(select(Task).order_by(Task.created_at)))


def test_create_deployment_queues_its_deploy_task(db_session: Session) -> None:
    deployment = deployments_flows.create_deployment(
        db_session,
        workspace=WS,
        deployment_in=DeploymentCreate(name="d", config="c"),
        caller=Caller(id="a-1", name="alice"),
        deployment_target="ray",
    )
    [task] = all_tasks(db_session)
    assert (task.kind, task.embedding_model_id, task.status) == ("deploy", "team/d", "pending")
    assert task.task_metadata["deployment_revision_id"] == deployment.revision_id
    assert task.task_metadata["initiated_by"] == "alice"
    assert task.task_metadata["deployment_target"] == "ray"
    latest = tasks_service.get_latest(db_session, embedding_model_id="team/d", kind=TaskKind.DEPLOY)
    assert latest is not None and latest.id == task.id


def test_a_new_version_queues_the_next_deploy_task(db_session: Session) -> None:
    deployments_flows.create_deployment(
        db_session,
        workspace=WS,
        deployment_in=DeploymentCreate(name="d", config="c"),
        caller=Caller(id="a-1", name="alice"),
        deployment_target="local",
    )
    second = deployments_flows.create_deployment_version(
        db_session,
        workspace=WS,
        name="d",
        deployment_in=DeploymentUpdate(config="c"),
        caller=Caller(id="b-1", name="bob"),
        deployment_target="local",
    )
    first_task, second_task = all_tasks(db_session)
    assert second_task.created_at > first_task.created_at
    assert second_task.task_metadata["deployment_revision_id"] == second.revision_id


def test_delete_queues_the_delete_task_of_the_served_name(db_session: Session) -> None:
    deployments_flows.create_deployment(
        db_session,
        workspace=WS,
        deployment_in=DeploymentCreate(name="d", config="c"),
        caller=Caller(id="a-1", name="alice"),
        deployment_target="local",
    )
    deletion = deployments_flows.delete_deployment(
        db_session, workspace=WS, name="d", version=None, caller=Caller(id="c-1", name="carol")
    )
    assert deletion.deployment is not None and deletion.deployment.status == "DELETING"
    task = all_tasks(db_session)[-1]
    assert (task.kind, task.embedding_model_id) == ("delete", "team/d")
    assert task.task_metadata == {
        "deletion_type": "manual",
        "reason": deployments_flows.DELETE_REASON,
        "initiated_by": "carol",
    }
