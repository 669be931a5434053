"""Deployments with the other domains (`deployments.flows`): versions queue deploy tasks, a DELETE
its delete task; the registered model, the live pointers and the tasks come from their services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from factories import add_embedding_model
from sqlalchemy import select
from sqlalchemy.orm import Session

from greenroom.auth.scopes import Scope, effective_scopes
from greenroom.auth.service import Principal
from greenroom.deployments import flows as deployments_flows
from greenroom.deployments import service as deployments_service
from greenroom.deployments.models import Deployment
from greenroom.deployments.schemas import (
    DeploymentConfigUpdate,
    DeploymentCreate,
    DeploymentStatusUpdate,
    DeploymentUpdate,
)
from greenroom.deployments.states import Actor, DeploymentStatus, transition
from greenroom.errors import ConflictError, InvalidRequestError, InvalidTransitionError
from greenroom.store.db import Store
from greenroom.tasks import service as tasks_service
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import TaskKind
from greenroom.workloads.models import LiveRevision, Revision

WS = "team"
ALICE = Principal(id="a-1", name="alice", scopes=effective_scopes([Scope.DEPLOY]))
BOB = Principal(id="b-1", name="bob", scopes=effective_scopes([Scope.DEPLOY]))
CAROL = Principal(id="c-1", name="carol", scopes=effective_scopes([Scope.ADMIN]))


@pytest.fixture
def db_session(store: Store) -> Iterator[Session]:
    with store.session_scope() as session:
        add_embedding_model(session, "m1")
        deployments_flows.create_config(session, workspace=WS, name="c", model_name="m1")
        yield session


def all_tasks(db_session: Session) -> list[Task]:
    return list(db_session.scalars(select(Task).order_by(Task.created_at)))


def test_create_deployment_queues_its_deploy_task(db_session: Session) -> None:
    deployment = deployments_flows.create_deployment(
        db_session,
        workspace=WS,
        deployment_in=DeploymentCreate(name="d", config="c"),
        principal=ALICE,
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
        principal=ALICE,
        deployment_target="local",
    )
    second = deployments_flows.create_deployment_version(
        db_session,
        workspace=WS,
        name="d",
        deployment_in=DeploymentUpdate(config="c"),
        principal=BOB,
        deployment_target="local",
    )
    first_task, second_task = all_tasks(db_session)
    assert second_task.created_at > first_task.created_at
    assert second_task.task_metadata["deployment_revision_id"] == second.revision_id
    assert "strategy" not in second_task.task_metadata  # green, as a deploy always was


def test_a_staged_version_queues_a_staged_deploy(db_session: Session) -> None:
    deployments_flows.create_deployment(
        db_session,
        workspace=WS,
        deployment_in=DeploymentCreate(name="d", config="c"),
        principal=ALICE,
        deployment_target="local",
    )
    staged = deployments_flows.create_deployment_version(
        db_session,
        workspace=WS,
        name="d",
        deployment_in=DeploymentUpdate(config="c", strategy="staged"),
        principal=BOB,
        deployment_target="local",
    )
    task = all_tasks(db_session)[-1]
    assert task.task_metadata["deployment_revision_id"] == staged.revision_id
    assert task.task_metadata["strategy"] == "staged"
    assert task.request["strategy"] == "staged"


def test_delete_queues_the_delete_task_of_the_served_name(db_session: Session) -> None:
    deployments_flows.create_deployment(
        db_session,
        workspace=WS,
        deployment_in=DeploymentCreate(name="d", config="c"),
        principal=ALICE,
        deployment_target="local",
    )
    deletion = deployments_flows.delete_deployment(
        db_session, workspace=WS, name="d", version=None, principal=CAROL
    )
    assert deletion.deployment is not None and deletion.deployment.status == "DELETING"
    task = all_tasks(db_session)[-1]
    assert (task.kind, task.embedding_model_id) == ("delete", "team/d")
    assert task.task_metadata == {
        "deletion_type": "manual",
        "reason": deployments_flows.DELETE_REASON,
        "initiated_by": "carol",
    }


# ----- configs: the registered model comes from the registry -------------------------------------


def test_config_writes_look_the_model_up_in_the_registry(db_session: Session) -> None:
    add_embedding_model(db_session, "m2", content_hash="cd" * 32)
    with pytest.raises(InvalidRequestError, match="'nope' is not registered"):
        deployments_flows.create_config(db_session, workspace=WS, name="x", model_name="nope")
    update = DeploymentConfigUpdate.model_validate({"model_spec": {"model_name": "m2"}})
    second = deployments_flows.update_config(db_session, workspace=WS, name="c", config_in=update)
    assert (second.entity_version, second.model_name, second.model_revision) == (
        2,
        "m2",
        "cd" * 32,
    )
    third = deployments_flows.create_config_version(
        db_session, workspace=WS, name="c", overrides={"replicas": 2}
    )
    same = deployments_flows.ensure_config_version(
        db_session, workspace=WS, name="c", overrides={"replicas": 2}
    )
    assert (third.entity_version, third.model_revision, same.entity_version) == (3, "cd" * 32, 3)


def test_delete_config_reads_the_live_pointers(db_session: Session) -> None:
    deployment = deployments_flows.create_deployment(
        db_session,
        workspace=WS,
        deployment_in=DeploymentCreate(name="d", config="c"),
        principal=ALICE,
        deployment_target="local",
    )
    transition(deployment, DeploymentStatus.ERROR, message="failed", by=Actor.SYSTEM)
    deployments_flows.create_config(db_session, workspace=WS, name="c2", model_name="m1")
    deployments_flows.create_deployment_version(
        db_session,
        workspace=WS,
        name="d",
        deployment_in=DeploymentUpdate(config="c2"),
        principal=ALICE,
        deployment_target="local",
    )
    db_session.add(
        LiveRevision(
            served_name="team/d", revision_id=deployment.revision_id, deployment_id=deployment.id
        )
    )
    db_session.flush()
    with pytest.raises(ConflictError, match="used by deployment 'team/d' \\(ERROR\\)"):
        deployments_flows.delete_config(db_session, workspace=WS, name="c")
    db_session.delete(db_session.get(LiveRevision, "team/d"))
    db_session.flush()
    deployments_flows.delete_config(db_session, workspace=WS, name="c")


# ----- the controller's status: whether something of the version runs ---------------------------


def add_revision(db_session: Session, deployment: Deployment, **fields: object) -> Revision:
    revision = Revision(
        id=deployment.revision_id,
        deployment_id=deployment.id,
        served_name=deployment.served_name,
        embedding_model_id="m1",
        source="/models/fake",
        model_path="/models/fake",
        content_hash="ab" * 32,
        engine="onnx",
        **fields,
    )
    db_session.add(revision)
    db_session.flush()
    return revision


def test_update_status(db_session: Session) -> None:
    for _ in range(2):
        create_or_update(db_session)
    all_done(db_session)
    first = deployments_flows.update_status(
        db_session,
        workspace=WS,
        name="d",
        version=1,
        status_in=DeploymentStatusUpdate(status="LOST", model_provider_id="p"),
    )
    assert (first.entity_version, first.status, first.model_provider_id) == (1, "LOST", "p")
    deployments_flows.update_status(
        db_session,
        workspace=WS,
        name="d",
        version=None,
        status_in=DeploymentStatusUpdate(status="DELETING"),
    )
    with pytest.raises(InvalidTransitionError, match="Only transition to DELETED"):
        deployments_flows.update_status(
            db_session,
            workspace=WS,
            name="d",
            version=2,
            status_in=DeploymentStatusUpdate(status="READY"),
        )


def test_a_controller_cannot_report_deleted_what_may_run(db_session: Session) -> None:
    """Issue 9 item 8: DELETED or DELETING from a controller is refused while the version is
    live, has replicas, or a task names it; accepted once nothing of it runs."""
    deleted = DeploymentStatusUpdate(status="DELETED")
    version = create_or_update(db_session)  # its deploy task is pending: it may run soon
    for status in ("DELETED", "DELETING"):
        with pytest.raises(InvalidTransitionError, match="still runs or is about to"):
            deployments_flows.update_status(
                db_session,
                workspace=WS,
                name="d",
                version=None,
                status_in=DeploymentStatusUpdate(status=status),
            )
    all_done(db_session)
    revision = add_revision(db_session, version, desired_replicas=1, ready_replicas=1)
    db_session.add(
        LiveRevision(served_name="team/d", revision_id=version.revision_id, deployment_id="x")
    )
    db_session.flush()
    with pytest.raises(InvalidTransitionError):
        deployments_flows.update_status(
            db_session, workspace=WS, name="d", version=1, status_in=deleted
        )
    assert version.status == "CREATED"
    db_session.delete(db_session.get(LiveRevision, "team/d"))
    revision.desired_replicas, revision.ready_replicas = 0, 0
    db_session.flush()
    accepted = deployments_flows.update_status(
        db_session, workspace=WS, name="d", version=1, status_in=deleted
    )
    assert accepted.status == "DELETED"


@pytest.mark.parametrize(
    "replicas",
    [{"desired_replicas": 1}, {"ready_replicas": 1}, {"replicas": [{"replica_id": "r"}]}],
)
def test_load_activity_withdrawn_needs_every_revision_of_the_name_stopped(
    db_session: Session, replicas: dict[str, object]
) -> None:
    def withdrawn() -> bool:
        return deployments_flows.load_activity(
            db_session, served="team/d", versions=[version]
        ).withdrawn()

    version = create_or_update(db_session)
    assert not withdrawn()  # its deploy task is pending
    all_done(db_session)
    assert withdrawn()
    revision = add_revision(db_session, version, **replicas)
    assert not withdrawn()
    revision.desired_replicas, revision.ready_replicas, revision.replicas = 0, 0, []
    db_session.flush()
    assert withdrawn()


def test_load_activity_names_the_revisions_tasks_work_on(db_session: Session) -> None:
    first = create_or_update(db_session)
    activity = deployments_flows.load_activity(db_session, served="team/d", versions=[first])
    assert activity.named_by_tasks == {first.revision_id}
    assert (activity.tasks_unfinished, activity.delete_task_unfinished) == (True, False)
    assert activity.may_run(first)
    all_done(db_session)
    idle = deployments_flows.load_activity(db_session, served="team/d", versions=[first])
    assert (idle.named_by_tasks, idle.tasks_unfinished) == (frozenset(), False)


def test_versions_record_the_principal_the_request_acts_for(db_session: Session) -> None:
    first = create_or_update(db_session)
    second = create_or_update(db_session, principal=BOB)
    [task, _] = all_tasks(db_session)
    assert first.auth_context["principal_id"] == ALICE.id
    assert first.auth_context["principal_groups"] == sorted(str(s) for s in ALICE.scopes)
    assert second.auth_context["principal_id"] == BOB.id
    assert task.task_metadata["initiated_by"] == ALICE.name


def create_or_update(db_session: Session, principal: Principal = ALICE) -> Deployment:
    if deployments_service.get_latest_deployment(db_session, workspace=WS, name="d") is None:
        return deployments_flows.create_deployment(
            db_session,
            workspace=WS,
            deployment_in=DeploymentCreate(name="d", config="c"),
            principal=principal,
            deployment_target="local",
        )
    return deployments_flows.create_deployment_version(
        db_session,
        workspace=WS,
        name="d",
        deployment_in=DeploymentUpdate(config="c"),
        principal=principal,
        deployment_target="local",
    )


def all_done(db_session: Session) -> None:
    for task in all_tasks(db_session):
        task.status = "done"
    db_session.flush()
