"""The workloads service: workload and revision views of deployments (api/workloads.md)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from greenroom.config import Settings
from greenroom.deployments.models import Deployment
from greenroom.errors import InvalidRequestError, NotFoundError
from greenroom.store.db import Store, utcnow
from greenroom.tasks.models import Task
from greenroom.workloads import service
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
        service.get_revision_or_raise(session, revision_id="nope", settings=SETTINGS)
    assert caught.value.message == "Invalid id 'nope': must be a UUID"


def test_unknown_ids_are_not_found(store: Store) -> None:
    with store.session_scope() as session:
        with pytest.raises(NotFoundError, match=r"Resource id not found\."):
            service.get_workload_or_raise(session, workload_id=str(uuid.uuid4()), settings=SETTINGS)
        with pytest.raises(NotFoundError):
            service.list_revisions(
                session, workload_id=str(uuid.uuid4()), deleted=None, settings=SETTINGS
            )


def test_the_workload_reads_its_deployment(store: Store, workload: tuple[str, list[str]]) -> None:
    workload_id, _ = workload
    with store.session_scope() as session:
        read = service.get_workload_or_raise(session, workload_id=workload_id, settings=SETTINGS)
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
        read = service.get_workload_or_raise(session, workload_id=workload[0], settings=SETTINGS)
    assert read.actualPhase == "Updating"


def test_revisions_list_oldest_first_and_filter_deleted(
    store: Store, workload: tuple[str, list[str]]
) -> None:
    workload_id, (old, new) = workload
    with store.session_scope() as session:
        every = service.list_revisions(
            session, workload_id=workload_id, deleted=None, settings=SETTINGS
        )
        deleted = service.list_revisions(
            session, workload_id=workload_id, deleted=True, settings=SETTINGS
        )
        live = service.list_revisions(
            session, workload_id=workload_id, deleted=False, settings=SETTINGS
        )
        count = service.count_revisions(session, workload_id=workload_id, deleted=True)
    assert [r.id for r in every] == [old, new]
    assert [r.id for r in deleted] == [old] and count == 1
    assert [r.id for r in live] == [new]


def test_a_revision_shows_what_runs(store: Store, workload: tuple[str, list[str]]) -> None:
    _, (old, new) = workload
    with store.session_scope() as session:
        running = service.get_revision_or_raise(session, revision_id=new, settings=SETTINGS)
        retired = service.get_revision_or_raise(session, revision_id=old, settings=SETTINGS)
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
        masked = service.get_revision_or_raise(session, revision_id=new, settings=SETTINGS)
        shown = service.get_revision_or_raise(
            session, revision_id=new, settings=SETTINGS, reveal_envs=True
        )
        listed = service.list_revisions(
            session, workload_id=workload_id, deleted=False, settings=SETTINGS
        )
    assert masked.environmentVariables == {"OMP_NUM_THREADS": "***"}
    assert listed[0].environmentVariables == {"OMP_NUM_THREADS": "***"}
    assert shown.environmentVariables == {"OMP_NUM_THREADS": "3"}
