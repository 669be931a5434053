"""Deleting deployment versions (`deployments.deletion`): DELETING while something runs, DELETED
once nothing does, records removed after (SQLite and PostgreSQL). What runs comes in as an
`Activity`: plain values in the first tests, gathered from the store by
`deployments.flows.load_activity` in the others."""

from __future__ import annotations

import pytest
from factories import add_embedding_model
from sqlalchemy.orm import Session

from greenroom.auth.scopes import Scope
from greenroom.auth.service import Principal
from greenroom.deployments import deletion as deployments_deletion
from greenroom.deployments import flows as deployments_flows
from greenroom.deployments import service as deployments_service
from greenroom.deployments.deletion import Activity, Deletion
from greenroom.deployments.models import Deployment
from greenroom.deployments.schemas import DeploymentCreate, DeploymentUpdate
from greenroom.deployments.states import Actor, DeploymentStatus, transition
from greenroom.errors import NotFoundError
from greenroom.store.db import Store
from greenroom.tasks.models import Task
from greenroom.workloads.models import LiveRevision, Revision

WS = "default"
ALICE = Principal(id="a-1", name="alice", scopes=frozenset({Scope.DEPLOY}))


def new_deployment(db_session: Session, name: str = "d1") -> Deployment:
    return deployments_service.create_deployment(
        db_session,
        workspace=WS,
        deployment_in=DeploymentCreate(name=name, config="m1"),
        principal=ALICE,
    )


def new_version(db_session: Session, name: str = "d1") -> Deployment:
    return deployments_service.create_deployment_version(
        db_session,
        workspace=WS,
        name=name,
        deployment_in=DeploymentUpdate(config="m1"),
        principal=ALICE,
    )


def delete(db_session: Session, name: str = "d1", version: int | None = None) -> Deletion:
    """A DELETE with what runs as the store says."""
    versions = deployments_service.list_deployment_versions(db_session, workspace=WS, name=name)
    activity = deployments_flows.load_activity(db_session, served=name, versions=versions)
    return deployments_deletion.delete_deployment(
        db_session, workspace=WS, name=name, version=version, activity=activity
    )


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


def mark(deployment: Deployment, status: DeploymentStatus, message: str) -> None:
    transition(deployment, status, message=message, by=Actor.SYSTEM)


# ----- Activity: plain values --------------------------------------------------------------------


def test_activity_may_run(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        rid = version.revision_id
    assert not Activity(served="d1").may_run(version)
    assert Activity(served="d1", live_revision_id=rid).may_run(version)
    assert Activity(served="d1", named_by_tasks=frozenset({rid})).may_run(version)
    assert Activity(served="d1", with_replicas=frozenset({rid})).may_run(version)
    assert not Activity(served="d1", live_revision_id="other").may_run(version)


@pytest.mark.parametrize(
    "activity",
    [
        Activity(served="d1", live_revision_id="r"),
        Activity(served="d1", tasks_unfinished=True),
        Activity(served="d1", with_replicas=frozenset({"r"})),
    ],
)
def test_activity_withdrawn_needs_nothing_live_pending_or_running(activity: Activity) -> None:
    assert not activity.withdrawn()
    assert Activity(served="d1").withdrawn()


def test_settle_deleted_waits_for_every_task(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        mark(version, DeploymentStatus.DELETING, "Deployment is being deleted")
        busy = Activity(served="d1", tasks_unfinished=True)
        deployments_deletion.settle_deleted(versions=[version], activity=busy)
        assert version.status == "DELETING"
        running = Activity(served="d1", with_replicas=frozenset({version.revision_id}))
        deployments_deletion.settle_deleted(versions=[version], activity=running)
        assert version.status == "DELETING"
        deployments_deletion.settle_deleted(versions=[version], activity=Activity(served="d1"))
    assert (version.status, version.status_message) == ("DELETED", "Deployment deleted")


# ----- delete_deployment -------------------------------------------------------------------------


def test_delete_deployment_marks_then_removes(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        new_deployment(db_session)
        first = delete(db_session)
        assert (first.removed, first.needs_delete_task) == (False, True)
        assert first.deployment is not None and first.deployment.status == "DELETING"
        db_session.add(Task(id="delete-1", kind="delete", embedding_model_id="d1"))
        db_session.flush()
        while_running = delete(db_session)
        assert not while_running.needs_delete_task
        db_session.get(Task, "delete-1").status = "done"  # type: ignore[union-attr]
        db_session.flush()
        removed = delete(db_session)
        assert removed.removed
        assert (
            deployments_service.list_deployment_versions(db_session, workspace=WS, name="d1") == []
        )
        with pytest.raises(NotFoundError, match="Deployment 'default/d1' not found"):
            delete(db_session)


def test_a_delete_whose_task_ended_with_something_live_needs_another(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        mark(version, DeploymentStatus.DELETING, "Deployment is being deleted")
        db_session.add(
            LiveRevision(served_name="d1", revision_id=version.revision_id, deployment_id="x")
        )
        db_session.add(Task(id="delete-1", kind="delete", embedding_model_id="d1", status="failed"))
        db_session.flush()
        retry = delete(db_session)
    assert (retry.removed, retry.needs_delete_task) == (False, True)


def test_delete_does_not_remove_a_deleted_version_that_still_serves(store: Store) -> None:
    """A version already DELETED (by an earlier controller, say) while its revision serves: the
    DELETE marks it DELETING and needs the delete task; the records stay until it withdrew."""
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        revision = add_revision(db_session, version, desired_replicas=1, ready_replicas=1)
        db_session.add(
            LiveRevision(served_name="d1", revision_id=version.revision_id, deployment_id="x")
        )
        mark(version, DeploymentStatus.DELETED, "set behind the API's back")
        db_session.flush()
        deletion = delete(db_session)
        assert (deletion.removed, deletion.needs_delete_task) == (False, True)
        assert version.status == "DELETING"
        # the delete task under way: nothing changes, nothing is removed
        db_session.add(Task(id="delete-1", kind="delete", embedding_model_id="d1"))
        mark(version, DeploymentStatus.DELETED, "Deployment deleted")
        db_session.flush()
        during = delete(db_session)
        assert (during.removed, during.needs_delete_task) == (False, False)
        assert version.status == "DELETED"
        # the task withdrew everything and ended: now the records go
        db_session.delete(db_session.get(LiveRevision, "d1"))
        revision.desired_replicas, revision.ready_replicas = 0, 0
        db_session.get(Task, "delete-1").status = "done"  # type: ignore[union-attr]
        db_session.flush()
        assert delete(db_session).removed


def test_delete_of_one_deleted_version_that_still_runs(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        new_version(db_session)
        add_revision(db_session, version, desired_replicas=1)
        mark(version, DeploymentStatus.DELETED, "set behind the API's back")
        db_session.flush()
        deletion = delete(db_session, version=1)
    assert (deletion.removed, deletion.needs_delete_task) == (False, True)
    assert version.status == "DELETING"


def test_delete_of_a_version_nothing_of_which_runs_is_deleted_at_once(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = new_deployment(db_session)
        second = new_version(db_session)
        deletion = deployments_deletion.delete_deployment(
            db_session, workspace=WS, name="d1", version=1, activity=Activity(served="d1")
        )
        assert (deletion.removed, deletion.needs_delete_task) == (False, False)
        assert (first.status, first.status_message) == ("DELETED", "Deployment deleted")
        assert second.status == "PENDING"
        removed = deployments_deletion.delete_deployment(
            db_session, workspace=WS, name="d1", version=1, activity=Activity(served="d1")
        )
        assert removed.removed
        versions = deployments_service.list_deployment_versions(db_session, workspace=WS, name="d1")
    assert [version.entity_version for version in versions] == [2]
