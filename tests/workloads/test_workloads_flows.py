"""The workloads API face: workload and revision views of deployments (docs/api/workloads.md)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from helpers import statements_run

from greenroom.config import Settings
from greenroom.deployments.models import Deployment
from greenroom.errors import InvalidRequestError, NotFoundError
from greenroom.store.db import Store, utcnow
from greenroom.tasks.models import Task
from greenroom.workloads import flows
from greenroom.workloads.models import LiveRevision, Revision

SETTINGS = Settings(tenant_id=7, department_id="dept", project_id="proj")


def add_version(store: Store, *, workload_id: str, version: int, retired: bool) -> str:
    revision_id = str(uuid.uuid4())
    now = utcnow() + timedelta(seconds=version)
    with store.session_scope() as session:
        session.add(
            Deployment(
                id=workload_id, revision_id=revision_id, workspace="default", name="emb",
                entity_version=version, config="emb", config_version=1, status="READY",
                auth_context={"principal_id": "alice"}, created_at=now,
            )
        )  # fmt: skip
        session.add(
            Revision(
                id=revision_id, deployment_id=workload_id, served_name="emb",
                embedding_model_id="emb", source="/models/emb", model_path="/models/emb",
                content_hash="ab" * 32, engine="onnx", config={"replicas": 2, "threads": 1},
                runtime="local", phase="Stopped" if retired else "Running",
                desired_replicas=0 if retired else 2, ready_replicas=0 if retired else 2,
                reported_at=now, created_at=now, deleted_at=now if retired else None,
            )
        )  # fmt: skip
    return revision_id


@pytest.fixture
def workload(store: Store) -> tuple[str, list[str]]:
    workload_id = str(uuid.uuid4())
    old = add_version(store, workload_id=workload_id, version=1, retired=True)
    new = add_version(store, workload_id=workload_id, version=2, retired=False)
    with store.session_scope() as session:
        session.add(LiveRevision(served_name="emb", revision_id=new, deployment_id=workload_id))
    return workload_id, [old, new]


def test_a_malformed_id_is_a_400_with_the_contract_text(store: Store) -> None:
    with store.session_scope() as session, pytest.raises(InvalidRequestError) as caught:
        flows.get_revision_or_raise(session, revision_id="nope", settings=SETTINGS)
    assert caught.value.message == "Invalid id 'nope': must be a UUID"


def test_unknown_ids_are_not_found(store: Store) -> None:
    with store.session_scope() as session:
        with pytest.raises(NotFoundError, match=r"Resource id not found\."):
            flows.get_workload_or_raise(session, workload_id=str(uuid.uuid4()), settings=SETTINGS)
        with pytest.raises(NotFoundError):
            flows.list_revisions(
                session, workload_id=str(uuid.uuid4()), deleted=None, settings=SETTINGS
            )


def test_the_workload_reads_its_deployment(store: Store, workload: tuple[str, list[str]]) -> None:
    workload_id, _ = workload
    with store.session_scope() as session:
        read = flows.get_workload_or_raise(session, workload_id=workload_id, settings=SETTINGS)
    assert (read.name, read.workloadId, read.createdBy) == ("emb", workload_id, "alice")
    assert (read.desiredPhase, read.actualPhase, read.deletedAt) == ("Running", "Running", None)
    assert (read.projectId, read.departmentId) == ("proj", "dept")


def test_the_workload_is_updating_while_a_rollout_runs(
    store: Store, workload: tuple[str, list[str]]
) -> None:
    with store.session_scope() as session:
        session.add(
            Task(id="deploy-1", kind="deploy", embedding_model_id="emb", status="processing")
        )
    with store.session_scope() as session:
        read = flows.get_workload_or_raise(session, workload_id=workload[0], settings=SETTINGS)
    assert read.actualPhase == "Updating"


def test_revisions_list_oldest_first_and_filter_deleted(
    store: Store, workload: tuple[str, list[str]]
) -> None:
    workload_id, (old, new) = workload
    with store.session_scope() as session:
        every = flows.list_revisions(
            session, workload_id=workload_id, deleted=None, settings=SETTINGS
        )
        deleted = flows.list_revisions(
            session, workload_id=workload_id, deleted=True, settings=SETTINGS
        )
        live = flows.list_revisions(
            session, workload_id=workload_id, deleted=False, settings=SETTINGS
        )
        count = flows.count_revisions(session, workload_id=workload_id, deleted=True)
    assert [r.id for r in every] == [old, new]
    assert [r.id for r in deleted] == [old] and count == 1
    assert [r.id for r in live] == [new]


def test_the_revisions_list_reads_their_versions_in_one_query(store: Store) -> None:
    workload_id = str(uuid.uuid4())
    for version in range(1, 6):
        add_version(store, workload_id=workload_id, version=version, retired=version < 5)
    with store.session_scope() as session, statements_run(store.engine) as statements:
        listed = flows.list_revisions(
            session, workload_id=workload_id, deleted=None, settings=SETTINGS
        )
    assert [r.name for r in listed] == ["emb"] * 5
    # the workload's existence, its revisions, their deployment versions: not one per revision
    assert len(statements) == 3


def test_a_revision_shows_what_runs(store: Store, workload: tuple[str, list[str]]) -> None:
    _, (old, new) = workload
    with store.session_scope() as session:
        running = flows.get_revision_or_raise(session, revision_id=new, settings=SETTINGS)
        retired = flows.get_revision_or_raise(session, revision_id=old, settings=SETTINGS)
    assert running.type == "greenroom-revision" and running.tenantId == 7
    assert running.images == [f"/models/emb@sha256:{'ab' * 32}"]
    assert running.requestedPods.number == 2 and running.runningPods == 2
    assert running.requestedNodePools == ["local"] == running.currentNodePools
    assert "--model-path /models/emb" in running.arguments
    assert running.command == "python -m greenroom.runtime.replica"
    assert running.conditions[0].status == "True"
    assert retired.deletedAt is not None and retired.phase == "Stopped"
    assert retired.conditions[0].status == "False"


def test_environment_values_are_masked_unless_revealed(
    store: Store, workload: tuple[str, list[str]]
) -> None:
    """Issue 9 item 1: `environmentVariables` shows values only to a `deploy` caller."""
    workload_id, [_, new] = workload
    with store.session_scope() as session:
        revision = session.get(Revision, new)
        assert revision is not None
        revision.config = {**revision.config, "additional_envs": {"OMP_NUM_THREADS": "3"}}
    with store.session_scope() as session:
        masked = flows.get_revision_or_raise(session, revision_id=new, settings=SETTINGS)
        shown = flows.get_revision_or_raise(
            session, revision_id=new, settings=SETTINGS, reveal_envs=True
        )
        listed = flows.list_revisions(
            session, workload_id=workload_id, deleted=False, settings=SETTINGS
        )
    assert masked.environmentVariables == {"OMP_NUM_THREADS": "***"}
    assert listed[0].environmentVariables == {"OMP_NUM_THREADS": "***"}
    assert shown.environmentVariables == {"OMP_NUM_THREADS": "3"}


def test_the_workload_is_stopped_when_nothing_is_live(
    store: Store, workload: tuple[str, list[str]]
) -> None:
    with store.session_scope() as session:
        session.query(LiveRevision).delete()
    with store.session_scope() as session:
        read = flows.get_workload_or_raise(session, workload_id=workload[0], settings=SETTINGS)
    assert (read.desiredPhase, read.actualPhase) == ("Stopped", "Stopped")


def test_a_deleted_workload_shows_when(store: Store, workload: tuple[str, list[str]]) -> None:
    with store.session_scope() as session:
        latest = session.query(Deployment).filter_by(entity_version=2).one()
        latest.status = "DELETED"
    with store.session_scope() as session:
        read = flows.get_workload_or_raise(session, workload_id=workload[0], settings=SETTINGS)
    assert read.desiredPhase == "Deleted" and read.deletedAt is not None


def test_a_workload_without_revisions_yet_is_found(store: Store) -> None:
    """A version the deployments API created before its deploy task ran has no revision."""
    workload_id = str(uuid.uuid4())
    with store.session_scope() as session:
        session.add(
            Deployment(
                id=workload_id, revision_id=str(uuid.uuid4()), workspace="default", name="new",
                entity_version=1, config="new", config_version=1, status="CREATED",
            )
        )  # fmt: skip
    with store.session_scope() as session:
        count = flows.count_revisions(session, workload_id=workload_id, deleted=None)
        read = flows.get_workload_or_raise(session, workload_id=workload_id, settings=SETTINGS)
    assert count == 0 and (read.name, read.actualPhase) == ("new", "Stopped")
    with store.session_scope() as session, pytest.raises(InvalidRequestError):
        flows.count_revisions(session, workload_id="nope", deleted=None)
