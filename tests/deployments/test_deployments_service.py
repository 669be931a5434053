"""Deployment versions (`deployments.service`): reading, the one version-creation function, the
controller's status and the system's own moves (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from factories import add_deployment, add_embedding_model
from helpers import statements_run
from sqlalchemy.orm import Session

from greenroom.auth.scopes import Scope, effective_scopes
from greenroom.auth.service import Principal
from greenroom.deployments import configs as deployments_configs
from greenroom.deployments import service as deployments_service
from greenroom.deployments.models import Deployment, DeploymentConfig
from greenroom.deployments.schemas import DeploymentCreate, DeploymentStatusUpdate, DeploymentUpdate
from greenroom.deployments.states import Actor, DeploymentStatus, transition
from greenroom.errors import ConflictError, InvalidRequestError, InvalidTransitionError
from greenroom.store.db import Store

WS = "default"
ALICE = Principal(id="a-1", name="alice", scopes=effective_scopes([Scope.DEPLOY]))
BOB = Principal(id="b-1", name="bob", scopes=effective_scopes([Scope.ADMIN]))


def new_deployment(db_session: Session, name: str = "d1", config: str = "m1") -> Deployment:
    return deployments_service.create_deployment(
        db_session,
        workspace=WS,
        deployment_in=DeploymentCreate(name=name, config=config),
        principal=ALICE,
    )


def new_version(db_session: Session, name: str = "d1", config: str = "m1") -> Deployment:
    return deployments_service.create_deployment_version(
        db_session,
        workspace=WS,
        name=name,
        deployment_in=DeploymentUpdate(config=config),
        principal=BOB,
    )


def config_of(db_session: Session, name: str = "m1") -> DeploymentConfig:
    return deployments_configs.get_latest_config_or_raise(db_session, workspace=WS, name=name)


# ----- reading -----------------------------------------------------------------------------------


def test_get_latest_deployment(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        add_deployment(db_session, workspace="team", name="search", config="m1")
        found = deployments_service.get_latest_deployment(
            db_session, workspace="team", name="search"
        )
        missing = deployments_service.get_latest_deployment(db_session, workspace=WS, name="x")
    assert found is not None and found.config == "m1"
    assert missing is None


def test_get_by_revision_and_list_versions_by_id(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = new_deployment(db_session)
        second = new_version(db_session)
        found = deployments_service.get_by_revision(db_session, revision_id=second.revision_id)
        missing = deployments_service.get_by_revision(db_session, revision_id="nope")
        versions = deployments_service.list_versions_by_id(db_session, deployment_id=first.id)
    assert found is second and missing is None
    assert [version.entity_version for version in versions] == [1, 2]


def test_get_version_or_latest(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        new_deployment(db_session)
        new_version(db_session)
        latest = deployments_service.get_version_or_latest(
            db_session, workspace=WS, name="d1", version=None
        )
        first = deployments_service.get_version_or_latest(
            db_session, workspace=WS, name="d1", version=1
        )
    assert (latest.entity_version, first.entity_version) == (2, 1)


def test_latest_versions_is_one_query_with_a_grouped_subquery(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        for name in ("a", "b"):
            new_deployment(db_session, name)
        new_version(db_session, "a")
        with statements_run(store.engine) as statements:
            page = deployments_service.list_deployments(db_session, workspace=WS, sort="name")
    assert [(d.name, d.entity_version) for d in page.items] == [("a", 2), ("b", 1)]
    assert page.total == 2 and page.total_pages == 1
    assert len(statements) == 2  # the count and the page
    assert all("max(" in s.lower() and "group by" in s.lower() for s in statements)


def test_paginate_refuses_an_unknown_sort_and_filter(store: Store) -> None:
    with store.session_scope() as db_session:
        with pytest.raises(InvalidRequestError, match="Cannot sort by 'pk'"):
            deployments_service.list_deployments(db_session, workspace=WS, sort="pk")
        with pytest.raises(InvalidRequestError, match="Cannot filter by 'revision_id'"):
            deployments_service.list_deployments(
                db_session, workspace=WS, filters={"revision_id": "x"}
            )


# ----- writing a version -------------------------------------------------------------------------


def test_create_deployment_and_versions(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = new_deployment(db_session)
        second = new_version(db_session)
        with pytest.raises(ConflictError, match="name 'd1' already exists"):
            new_deployment(db_session)
    assert (first.status, second.status) == ("CREATED", "PENDING")
    assert second.id == first.id and second.entity_version == 2
    assert first.auth_context["principal_id"] == "a-1"
    assert second.auth_context["principal_id"] == "b-1"
    assert first.created_at == first.updated_at


def test_create_version_is_the_one_version_creation(store: Store) -> None:
    """Version 1 CREATED, later ones PENDING with the deployment's id and project; the history
    starts with that entry; the auth context is the principal's id and scopes."""
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        config = config_of(db_session)
        first = deployments_service.create_version(
            db_session, workspace="team", name="d", config=config, principal=ALICE, project="p"
        )
        second = deployments_service.create_version(
            db_session, workspace="team", name="d", config=config, principal=BOB, project="other"
        )
    assert (first.entity_version, first.status, first.status_message) == (
        1,
        "CREATED",
        "Deployment created",
    )
    assert (second.entity_version, second.status, second.status_message) == (
        2,
        "PENDING",
        "Deployment update pending",
    )
    assert second.id == first.id and second.revision_id != first.revision_id
    assert (first.project, second.project) == ("p", "p")
    assert [entry["status"] for entry in second.status_history] == ["PENDING"]
    assert (first.config, first.config_version) == ("m1", 1)
    assert first.auth_context["principal_id"] == "a-1"
    assert first.auth_context["principal_groups"] == sorted(str(s) for s in ALICE.scopes)
    assert second.auth_context["principal_groups"] == sorted(str(s) for s in BOB.scopes)


def test_create_version_is_refused_while_the_latest_is_deleting(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = new_deployment(db_session)
        transition(first, DeploymentStatus.DELETING, message="going", by=Actor.SYSTEM)
        with pytest.raises(ConflictError, match="marked for deletion"):
            deployments_service.create_version(
                db_session, workspace=WS, name="d1", config=config_of(db_session), principal=ALICE
            )
        with pytest.raises(ConflictError, match="marked for deletion"):
            new_version(db_session)
        transition(first, DeploymentStatus.DELETED, message="gone", by=Actor.SYSTEM)
        again = deployments_service.create_version(
            db_session, workspace=WS, name="d1", config=config_of(db_session), principal=ALICE
        )
    assert (again.entity_version, again.status, again.id) == (2, "PENDING", first.id)


def test_auth_context_is_the_principal_record() -> None:
    context = deployments_service.auth_context(ALICE)
    assert context["principal_id"] == "a-1"
    assert context["principal_groups"] == sorted(str(scope) for scope in ALICE.scopes)
    assert context["principal_groups"] == sorted(context["principal_groups"])
    assert "alice" not in context.values()


def test_a_stored_config_over_todays_bounds_is_not_deployed(store: Store) -> None:
    """`max_queue: 10^30` written before the bounds: a new deployment of it is refused (400)
    before anything is queued, instead of failing in the rollout."""
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        config = deployments_configs.get_latest_config(db_session, workspace=WS, name="m1")
        assert config is not None
        config.executor_config = {**config.executor_config, "max_queue": 10**30}
        db_session.flush()
        with pytest.raises(InvalidRequestError, match="max_queue"):
            new_deployment(db_session)


# ----- status ------------------------------------------------------------------------------------


def test_update_status(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = new_deployment(db_session)
        second = new_version(db_session)
        deployments_service.update_status(
            db_session,
            deployment=first,
            status_in=DeploymentStatusUpdate(status="LOST", model_provider_id="p"),
            runs=False,
        )
        assert (first.entity_version, first.status, first.model_provider_id) == (1, "LOST", "p")
        deployments_service.update_status(
            db_session,
            deployment=second,
            status_in=DeploymentStatusUpdate(status="DELETING"),
            runs=False,
        )
        with pytest.raises(InvalidTransitionError, match="Only transition to DELETED"):
            deployments_service.update_status(
                db_session,
                deployment=second,
                status_in=DeploymentStatusUpdate(status="READY"),
                runs=False,
            )
        with pytest.raises(InvalidTransitionError, match="still runs or is about to"):
            deployments_service.update_status(
                db_session,
                deployment=first,
                status_in=DeploymentStatusUpdate(status="DELETED"),
                runs=True,
            )
    assert first.status == "LOST"


def test_record_status_moves_the_version_of_a_revision(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        deployments_service.record_status(
            db_session,
            revision_id=version.revision_id,
            status=DeploymentStatus.READY,
            message="Deployment is ready",
        )
        assert (version.status, version.status_message) == ("READY", "Deployment is ready")
        deployments_service.record_status(  # no version of that revision: nothing happens
            db_session, revision_id="nope", status=DeploymentStatus.ERROR, message="x"
        )
        transition(version, DeploymentStatus.DELETING, message="going", by=Actor.SYSTEM)
        deployments_service.record_status(  # refused: a version being deleted stays
            db_session,
            revision_id=version.revision_id,
            status=DeploymentStatus.ERROR,
            message="failed",
        )
    assert version.status == "DELETING"
    assert [entry["status"] for entry in version.status_history] == [
        "CREATED",
        "READY",
        "DELETING",
    ]


def test_record_recovered_only_brings_a_lost_version_back(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        deployments_service.record_recovered(db_session, revision_id=version.revision_id)
        assert version.status == "CREATED"
        deployments_service.record_status(
            db_session,
            revision_id=version.revision_id,
            status=DeploymentStatus.LOST,
            message="Every replica of the live revision is down",
        )
        deployments_service.record_recovered(db_session, revision_id=version.revision_id)
    assert (version.status, version.status_message) == ("READY", "Replicas are ready again")


def test_record_step_shows_each_finished_step_until_the_end(store: Store) -> None:
    step = {"name": "start_green", "status": "done", "duration_ms": 12}
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        deployments_service.record_step(db_session, revision_id=version.revision_id, step=step)
        assert (version.status, version.status_message) == ("CREATED", "start_green done in 12 ms")
        transition(version, DeploymentStatus.READY, message="Deployment is ready", by=Actor.SYSTEM)
        deployments_service.record_step(
            db_session, revision_id=version.revision_id, step={**step, "name": "finish"}
        )
        deployments_service.record_step(db_session, revision_id="nope", step=step)
    assert version.status_message == "Deployment is ready"
    assert [entry["status_message"] for entry in version.status_history] == [
        "Deployment created",
        "start_green done in 12 ms",
        "Deployment is ready",
    ]


def test_mark_deleting_marks_the_latest_and_the_live_version(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = new_deployment(db_session)
        second = new_version(db_session)
        deployments_service.mark_deleting(
            db_session, served_name="d1", live_revision_id=first.revision_id
        )
        assert (first.status, second.status) == ("DELETING", "DELETING")
        assert first.status_message == "Deployment is being deleted"
        deployments_service.mark_deleted(db_session, served_name="d1")
        assert (first.status, second.status) == ("DELETED", "DELETED")
        assert second.status_message == "Deployment deleted"
        deployments_service.mark_deleting(db_session, served_name="d1", live_revision_id=None)
    assert second.status == "DELETED"  # a DELETED version stays DELETED


def test_mark_deleting_leaves_versions_neither_latest_nor_live(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = new_deployment(db_session)
        second = new_version(db_session)
        deployments_service.mark_deleting(db_session, served_name="d1", live_revision_id=None)
        deployments_service.mark_deleted(db_session, served_name="d1")
    assert (first.status, second.status) == ("CREATED", "DELETED")


def test_a_workspace_served_name(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = deployments_service.create_version(
            db_session, workspace="team", name="d", config=config_of(db_session), principal=ALICE
        )
        deployments_service.mark_deleting(db_session, served_name="team/d", live_revision_id=None)
    assert (version.served_name, version.status) == ("team/d", "DELETING")
