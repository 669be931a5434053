"""Deployment configs: versions, flat overrides, validation (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from factories import add_deployment, add_embedding_model

from greenroom.config import default_threads
from greenroom.db import Store
from greenroom.deployments import service as deployments_service
from greenroom.deployments.schemas import ConfigOverrides, ExecutorConfig
from greenroom.errors import ConflictError, InvalidRequestError, NotFoundError

WS = "default"


def test_registering_a_model_creates_its_default_config(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        config = deployments_service.get_latest_config(db_session, workspace=WS, name="m1")
    assert config is not None
    assert (config.entity_version, config.engine, config.model_name) == (1, "onnx", "m1")
    assert config.model_revision == "ab" * 32
    defaults = ExecutorConfig().model_dump(mode="json", exclude={"threads"})
    assert config.executor_config == defaults  # threads absent: the machine's cores


def test_create_config(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        config = deployments_service.create_config(
            db_session,
            workspace="team",
            name="fast",
            model_name="m1",
            executor_config={"replicas": 2, "threads": 3},
            project="p/q",
        )
    assert (config.workspace, config.name, config.entity_version) == ("team", "fast", 1)
    assert config.executor_config["replicas"] == 2
    assert config.executor_config["threads"] == 3
    assert config.project == "p/q"


def test_create_config_refuses_a_duplicate_and_an_unknown_model(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        with pytest.raises(ConflictError, match="'default/m1' already exists"):
            deployments_service.create_config(db_session, workspace=WS, name="m1", model_name="m1")
        with pytest.raises(InvalidRequestError, match="'nope' is not registered"):
            deployments_service.create_config(
                db_session, workspace=WS, name="other", model_name="nope"
            )


def test_create_config_version_applies_flat_overrides(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = deployments_service.get_latest_config(db_session, workspace=WS, name="m1")
        assert first is not None
        second = deployments_service.create_config_version(
            db_session,
            workspace=WS,
            name="m1",
            overrides={"engine": "torch", "replicas": 2, "threads": 4, "quantization": "int8"},
        )
    assert second.entity_version == 2
    assert second.id == first.id
    assert second.engine == "torch"
    assert second.executor_config["replicas"] == 2
    assert second.executor_config["threads"] == 4
    assert second.executor_config["quantization"] == "int8"
    assert second.executor_config["max_batch_size"] == 32


def test_a_null_override_resets_the_default(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        deployments_service.create_config_version(
            db_session, workspace=WS, name="m1", overrides={"threads": 4, "engine": "torch"}
        )
        third = deployments_service.create_config_version(
            db_session, workspace=WS, name="m1", overrides={"threads": None, "engine": None}
        )
    assert "threads" not in third.executor_config
    assert third.engine == "onnx"
    assert deployments_service.serving_settings(third).threads == default_threads()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"replicas": 0}, "replicas: Input should be greater than or equal to 1"),
        ({"engine": "tensorrt"}, "engine: Input should be 'onnx' or 'torch'"),
        ({"gpu": 1}, r"Unknown deployment config key\(s\) gpu"),
    ],
)
def test_create_config_version_refuses_bad_values(
    store: Store, overrides: dict, message: str
) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        with pytest.raises(InvalidRequestError, match=message):
            deployments_service.create_config_version(
                db_session, workspace=WS, name="m1", overrides=overrides
            )


def test_create_config_version_of_an_unknown_config(store: Store) -> None:
    with store.session_scope() as db_session, pytest.raises(NotFoundError, match="'default/x'"):
        deployments_service.create_config_version(db_session, workspace=WS, name="x", overrides={})


def test_ensure_config_version_adds_one_only_for_a_change(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        same = deployments_service.ensure_config_version(
            db_session, workspace=WS, name="m1", overrides={"replicas": 1}
        )
        changed = deployments_service.ensure_config_version(
            db_session, workspace=WS, name="m1", overrides={"replicas": 3}
        )
    assert (same.entity_version, changed.entity_version) == (1, 2)


def test_list_and_get_config_versions(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        for replicas in (2, 3):
            deployments_service.create_config_version(
                db_session, workspace=WS, name="m1", overrides={"replicas": replicas}
            )
        versions = deployments_service.list_config_versions(db_session, workspace=WS, name="m1")
        second = deployments_service.get_config(db_session, workspace=WS, name="m1", version=2)
        missing = deployments_service.get_config(db_session, workspace=WS, name="m1", version=9)
    assert [v.entity_version for v in versions] == [3, 2, 1]
    assert second is not None and second.executor_config["replicas"] == 2
    assert missing is None


def test_refresh_model_revision(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        unchanged = deployments_service.refresh_model_revision(
            db_session, model_name="m1", content_hash="ab" * 32
        )
        refreshed = deployments_service.refresh_model_revision(
            db_session, model_name="m1", content_hash="cd" * 32
        )
    assert unchanged == []
    assert [(c.entity_version, c.model_revision) for c in refreshed] == [(2, "cd" * 32)]


def test_delete_configs_of_model(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        add_embedding_model(db_session, "m2")
        deployments_service.create_config_version(
            db_session, workspace=WS, name="m1", overrides={"replicas": 2}
        )
        assert deployments_service.delete_configs_of_model(db_session, model_name="m1") == 1
        assert deployments_service.list_config_versions(db_session, workspace=WS, name="m1") == []
        assert deployments_service.get_latest_config(db_session, workspace=WS, name="m2")


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


def test_config_overrides_keep_executor_config_bounds() -> None:
    """ConfigOverrides repeats ExecutorConfig's bounds; this keeps the two equal."""
    for name, field in ConfigOverrides.model_fields.items():
        if name == "engine":
            continue
        assert field.metadata == ExecutorConfig.model_fields[name].metadata, name


# ----- the deployments API's service functions ---------------------------------------------------

from sqlalchemy import event  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from greenroom.deployments.models import Deployment  # noqa: E402
from greenroom.deployments.schemas import (  # noqa: E402
    DeploymentConfigUpdate,
    DeploymentCreate,
    DeploymentStatusUpdate,
    DeploymentUpdate,
    ExecutorConfigUpdate,
)
from greenroom.deployments.service import Caller  # noqa: E402
from greenroom.deployments.states import DeploymentStatus, set_status  # noqa: E402
from greenroom.errors import InvalidTransitionError  # noqa: E402
from greenroom.serving.models import LiveRevision  # noqa: E402
from greenroom.tasks.models import Task  # noqa: E402

TEAM = "team"


def new_deployment(db_session: Session, name: str = "d1", config: str = "m1") -> Deployment:
    return deployments_service.create_deployment(
        db_session,
        workspace=WS,
        deployment_in=DeploymentCreate(name=name, config=config),
        caller=Caller(id="a-1", name="alice"),
    )


def new_version(db_session: Session, name: str = "d1", config: str = "m1") -> Deployment:
    return deployments_service.create_deployment_version(
        db_session,
        workspace=WS,
        name=name,
        deployment_in=DeploymentUpdate(config=config),
        caller=Caller(id="b-1", name="bob"),
    )


def test_executor_config_update_keeps_executor_config_bounds() -> None:
    for name, field in ExecutorConfigUpdate.model_fields.items():
        assert field.metadata == ExecutorConfig.model_fields[name].metadata, name


@pytest.mark.parametrize(("text", "number"), [("1", 1), ("42", 42)])
def test_parse_version(text: str, number: int) -> None:
    assert deployments_service.parse_version(text) == number


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.0", "", " 1"])
def test_parse_version_refuses_what_is_not_a_positive_integer(text: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"Invalid version '{text}'"):
        deployments_service.parse_version(text)


def test_create_config_refuses_another_model_revision(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        with pytest.raises(InvalidRequestError, match="has content hash"):
            deployments_service.create_config(
                db_session, workspace=TEAM, name="c", model_name="m1", model_revision="ff"
            )


def test_update_config_merges_into_the_latest(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        add_embedding_model(db_session, "m2", content_hash="cd" * 32)
        deployments_service.create_config(
            db_session,
            workspace=TEAM,
            name="c",
            model_name="m1",
            executor_config={"replicas": 3},
            project="p",
            description="old",
        )
        update = DeploymentConfigUpdate.model_validate(
            {"description": None, "model_spec": {"model_name": "m2"}, "executor_config": {"gpu": 1}}
        )
        config = deployments_service.update_config(
            db_session, workspace=TEAM, name="c", config_in=update
        )
    assert (config.entity_version, config.model_name, config.model_revision) == (2, "m2", "cd" * 32)
    assert (config.project, config.description) == ("p", None)
    assert (config.executor_config["replicas"], config.executor_config["gpu"]) == (3, 1)


def test_delete_config_refused_while_used_by_the_latest_or_the_live_version(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = new_deployment(db_session)
        deployments_service.create_config(db_session, workspace=WS, name="c2", model_name="m1")
        second = new_version(db_session, config="c2")
        set_status(second, DeploymentStatus.ERROR, "failed")
        db_session.add(
            LiveRevision(served_name="d1", revision_id=first.revision_id, deployment_id=first.id)
        )
        db_session.flush()
        with pytest.raises(ConflictError, match="used by deployment 'default/d1' \\(CREATED\\)"):
            deployments_service.delete_config(db_session, workspace=WS, name="m1")
        with pytest.raises(ConflictError, match="'default/c2' version 1 is used"):
            deployments_service.delete_config(db_session, workspace=WS, name="c2", version=1)


def test_latest_versions_is_one_query_with_a_grouped_subquery(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        for name in ("a", "b"):
            new_deployment(db_session, name)
        new_version(db_session, "a")
        statements: list[str] = []
        listen = event.listens_for(db_session.get_bind(), "before_cursor_execute")

        @listen
        def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
            statements.append(statement)

        page = deployments_service.list_deployments(db_session, workspace=WS, sort="name")
        event.remove(db_session.get_bind(), "before_cursor_execute", record)
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


def test_resolve_config(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        latest = deployments_service.resolve_config(
            db_session, workspace=WS, name="m1", version=None
        )
        assert latest.entity_version == 1
        with pytest.raises(InvalidRequestError, match="'default/m1' version 2 does not exist"):
            deployments_service.resolve_config(db_session, workspace=WS, name="m1", version=2)
        with pytest.raises(InvalidRequestError, match="'default/x' does not exist"):
            deployments_service.resolve_config(db_session, workspace=WS, name="x", version=None)


def test_update_status(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        new_deployment(db_session)
        new_version(db_session)
        first = deployments_service.update_status(
            db_session,
            workspace=WS,
            name="d1",
            version=1,
            status_in=DeploymentStatusUpdate(status="LOST", model_provider_id="p"),
        )
        assert (first.entity_version, first.status, first.model_provider_id) == (1, "LOST", "p")
        deployments_service.update_status(
            db_session,
            workspace=WS,
            name="d1",
            version=None,
            status_in=DeploymentStatusUpdate(status="DELETING"),
        )
        with pytest.raises(InvalidTransitionError, match="Only transition to DELETED"):
            deployments_service.update_status(
                db_session,
                workspace=WS,
                name="d1",
                version=2,
                status_in=DeploymentStatusUpdate(status="READY"),
            )


def test_delete_deployment_marks_then_removes(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        new_deployment(db_session)
        first = deployments_service.delete_deployment(db_session, workspace=WS, name="d1")
        assert (first.removed, first.needs_delete_task) == (False, True)
        assert first.deployment is not None and first.deployment.status == "DELETING"
        db_session.add(Task(id="delete-1", kind="delete", embedding_model_id="d1"))
        db_session.flush()
        while_running = deployments_service.delete_deployment(db_session, workspace=WS, name="d1")
        assert not while_running.needs_delete_task
        db_session.get(Task, "delete-1").status = "done"  # type: ignore[union-attr]
        db_session.flush()
        removed = deployments_service.delete_deployment(db_session, workspace=WS, name="d1")
        assert removed.removed
        assert (
            deployments_service.list_deployment_versions(db_session, workspace=WS, name="d1") == []
        )
        with pytest.raises(NotFoundError, match="Deployment 'default/d1' not found"):
            deployments_service.delete_deployment(db_session, workspace=WS, name="d1")


def test_a_delete_whose_task_ended_with_something_live_needs_another(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        set_status(version, DeploymentStatus.DELETING, "Deployment is being deleted")
        db_session.add(
            LiveRevision(served_name="d1", revision_id=version.revision_id, deployment_id="x")
        )
        db_session.add(Task(id="delete-1", kind="delete", embedding_model_id="d1", status="failed"))
        db_session.flush()
        retry = deployments_service.delete_deployment(db_session, workspace=WS, name="d1")
    assert (retry.removed, retry.needs_delete_task) == (False, True)


def test_activity_may_run(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        idle = deployments_service.Activity(live=None, unfinished=[])
        assert not idle.may_run(db_session, version)
        live = LiveRevision(served_name="d1", revision_id=version.revision_id, deployment_id="x")
        assert deployments_service.Activity(live=live, unfinished=[]).may_run(db_session, version)
        task = Task(
            id="deploy-1",
            kind="deploy",
            embedding_model_id="d1",
            task_metadata={"deployment_revision_id": version.revision_id},
        )
        assert deployments_service.Activity(live=None, unfinished=[task]).may_run(
            db_session, version
        )
