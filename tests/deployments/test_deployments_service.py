"""Deployment configs: versions, flat overrides, validation (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from factories import add_deployment, add_embedding_model

from greenroom.config import Settings, default_threads
from greenroom.deployments import service as deployments_service
from greenroom.deployments.schemas import ConfigOverrides, ExecutorConfig
from greenroom.errors import ConflictError, InvalidRequestError, NotFoundError
from greenroom.store.db import Store

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

from sqlalchemy import event, select  # noqa: E402
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
from greenroom.tasks.models import Task  # noqa: E402
from greenroom.workloads.models import LiveRevision, Revision  # noqa: E402

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


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.0", "", " 1", "²", "١", "000"])
def test_parse_version_refuses_what_is_not_a_positive_integer(text: str) -> None:
    with pytest.raises(InvalidRequestError, match=f"Invalid version '{text}': must be a positive"):
        deployments_service.parse_version(text)


@pytest.mark.parametrize("text", ["2147483648", "99999999999999999999999", "9" * 5000])
def test_parse_version_refuses_what_the_store_cannot_hold(text: str) -> None:
    with pytest.raises(InvalidRequestError, match="must be at most 2147483647"):
        deployments_service.parse_version(text)


def test_parse_version_reads_leading_zeros_and_the_largest() -> None:
    assert deployments_service.parse_version("0" * 5000 + "7") == 7
    assert deployments_service.parse_version("2147483647") == 2**31 - 1


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
        idle = deployments_service.Activity(served="d1", live=None, unfinished=[])
        assert not idle.may_run(db_session, version)
        live = LiveRevision(served_name="d1", revision_id=version.revision_id, deployment_id="x")
        activity = deployments_service.Activity(served="d1", live=live, unfinished=[])
        assert activity.may_run(db_session, version)
        task = Task(
            id="deploy-1",
            kind="deploy",
            embedding_model_id="d1",
            task_metadata={"deployment_revision_id": version.revision_id},
        )
        assert deployments_service.Activity(served="d1", live=None, unfinished=[task]).may_run(
            db_session, version
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


@pytest.mark.parametrize(
    "replicas",
    [{"desired_replicas": 1}, {"ready_replicas": 1}, {"replicas": [{"replica_id": "r"}]}],
)
def test_activity_withdrawn_needs_every_revision_of_the_name_stopped(
    store: Store, replicas: dict[str, object]
) -> None:
    def withdrawn() -> bool:
        return deployments_service.Activity.load(db_session, served="d1").withdrawn(db_session)

    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        queue_deploy_of(db_session, version)
        assert not withdrawn()  # its deploy task is pending
        db_session.get(Task, _only_task_id(db_session)).status = "done"  # type: ignore[union-attr]
        db_session.flush()
        assert withdrawn()
        revision = add_revision(db_session, version, **replicas)
        assert not withdrawn()
        revision.desired_replicas, revision.ready_replicas, revision.replicas = 0, 0, []
        db_session.flush()
        assert withdrawn()


def _only_task_id(db_session: Session) -> str:
    [task_id] = db_session.scalars(select(Task.id)).all()
    return task_id


def queue_deploy_of(db_session: Session, deployment: Deployment) -> None:
    """The pending deploy task the deployments API queues with a new version."""
    db_session.add(
        Task(
            id=f"deploy-{deployment.entity_version}",
            kind="deploy",
            embedding_model_id=deployment.served_name,
            task_metadata={"deployment_revision_id": deployment.revision_id},
        )
    )
    db_session.flush()


def test_a_controller_cannot_report_deleted_what_may_run(store: Store) -> None:
    """Issue 9 item 8: DELETED or DELETING from a controller is refused while the version is
    live, has replicas, or a task names it; accepted once nothing of it runs."""
    deleted = DeploymentStatusUpdate(status="DELETED")
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        queue_deploy_of(db_session, version)  # pending: it may run soon
        for status in ("DELETED", "DELETING"):
            with pytest.raises(InvalidTransitionError, match="still runs or is about to"):
                deployments_service.update_status(
                    db_session,
                    workspace=WS,
                    name="d1",
                    version=None,
                    status_in=DeploymentStatusUpdate(status=status),
                )
        db_session.get(Task, _only_task_id(db_session)).status = "done"  # type: ignore[union-attr]
        revision = add_revision(db_session, version, desired_replicas=1, ready_replicas=1)
        db_session.add(
            LiveRevision(served_name="d1", revision_id=version.revision_id, deployment_id="x")
        )
        db_session.flush()
        with pytest.raises(InvalidTransitionError):
            deployments_service.update_status(
                db_session, workspace=WS, name="d1", version=1, status_in=deleted
            )
        assert version.status == "CREATED"
        db_session.delete(db_session.get(LiveRevision, "d1"))
        revision.desired_replicas, revision.ready_replicas = 0, 0
        db_session.flush()
        accepted = deployments_service.update_status(
            db_session, workspace=WS, name="d1", version=1, status_in=deleted
        )
    assert accepted.status == "DELETED"


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
        set_status(version, DeploymentStatus.DELETED, "set behind the API's back")
        db_session.flush()
        deletion = deployments_service.delete_deployment(db_session, workspace=WS, name="d1")
        assert (deletion.removed, deletion.needs_delete_task) == (False, True)
        assert version.status == "DELETING"
        # the delete task under way: nothing changes, nothing is removed
        db_session.add(Task(id="delete-1", kind="delete", embedding_model_id="d1"))
        set_status(version, DeploymentStatus.DELETED, "Deployment deleted")
        db_session.flush()
        during = deployments_service.delete_deployment(db_session, workspace=WS, name="d1")
        assert (during.removed, during.needs_delete_task) == (False, False)
        assert version.status == "DELETED"
        # the task withdrew everything and ended: now the records go
        db_session.delete(db_session.get(LiveRevision, "d1"))
        revision.desired_replicas, revision.ready_replicas = 0, 0
        db_session.get(Task, "delete-1").status = "done"  # type: ignore[union-attr]
        db_session.flush()
        assert deployments_service.delete_deployment(db_session, workspace=WS, name="d1").removed


def test_delete_of_one_deleted_version_that_still_runs(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        version = new_deployment(db_session)
        new_version(db_session)
        add_revision(db_session, version, desired_replicas=1)
        set_status(version, DeploymentStatus.DELETED, "set behind the API's back")
        db_session.flush()
        deletion = deployments_service.delete_deployment(
            db_session, workspace=WS, name="d1", version=1
        )
    assert (deletion.removed, deletion.needs_delete_task) == (False, True)
    assert version.status == "DELETING"


# ----- what a config may name: the server's runtimes and allow-listed variables (issue 9) -------

from greenroom.deployments.service import ConfigPolicy, RefusedConfigError  # noqa: E402
from greenroom.runtime.environment import MAX_ENV_VARS  # noqa: E402

RAY_ENABLED = ConfigPolicy.of(Settings(runtime="local", extra_runtimes="ray"))
LOCAL_ONLY = ConfigPolicy.of(Settings(runtime="local"))


@pytest.mark.parametrize(
    ("executor_config", "named"),
    [
        ({"additional_envs": {"BROWSER": "/bin/sh -c id #%s"}}, "'BROWSER'"),
        ({"additional_envs": {"PYTHONWARNINGS": "all:0:antigravity.x:0:0"}}, "'PYTHONWARNINGS'"),
        ({"additional_envs": {"LD_PRELOAD": "/tmp/x.so"}}, "'LD_PRELOAD'"),
        ({"additional_envs": {"PATH": "/tmp"}}, "'PATH'"),
        ({"additional_envs": {"OMP_NUM_THREADS": "1\0"}}, "'OMP_NUM_THREADS'"),
        ({"runtime": "ray"}, "'ray'"),
    ],
)
def test_a_config_naming_what_the_server_does_not_allow_is_refused(
    store: Store, executor_config: dict, named: str
) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        with pytest.raises(RefusedConfigError, match=named) as caught:
            deployments_service.create_config(
                db_session,
                workspace=TEAM,
                name="c",
                model_name="m1",
                executor_config=executor_config,
                policy=LOCAL_ONLY,
            )
    assert caught.value.status_code == 422


def test_the_operator_widens_the_policy(store: Store) -> None:
    policy = ConfigPolicy.of(
        Settings(runtime="local", extra_runtimes="ray", extra_env_names="MY_FLAG")
    )
    envs = {"OMP_NUM_THREADS": "2", "MY_FLAG": "on"}
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        config = deployments_service.create_config(
            db_session,
            workspace=TEAM,
            name="c",
            model_name="m1",
            executor_config={"runtime": "ray", "additional_envs": envs},
            policy=policy,
        )
    assert config.executor_config["additional_envs"] == envs
    assert config.executor_config["runtime"] == "ray"


def test_the_server_default_runtime_is_always_enabled() -> None:
    assert ConfigPolicy.of(Settings(runtime="ray")).problem({"runtime": "ray"}) is None
    assert ConfigPolicy.of(Settings(runtime="local")).problem({"runtime": "local"}) is None


def test_too_many_or_too_long_variables_are_refused(store: Store) -> None:
    many = {f"VAR_{number}": "1" for number in range(MAX_ENV_VARS + 1)}
    policy = ConfigPolicy(allowed_env_names=frozenset(many))
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        for envs in (many, {"VAR_1": "x" * 1025}):
            with pytest.raises(InvalidRequestError, match="additional_envs"):
                deployments_service.create_config(
                    db_session,
                    workspace=TEAM,
                    name="c",
                    model_name="m1",
                    executor_config={"additional_envs": envs},
                    policy=policy,
                )


def test_new_versions_and_deploys_pass_the_policy(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        with pytest.raises(RefusedConfigError, match="'ray'"):
            deployments_service.create_config_version(
                db_session, workspace=WS, name="m1", overrides={"runtime": "ray"}
            )
        update = DeploymentConfigUpdate.model_validate(
            {"executor_config": {"additional_envs": {"BROWSER": "x"}}}
        )
        with pytest.raises(RefusedConfigError, match="'BROWSER'"):
            deployments_service.update_config(
                db_session, workspace=WS, name="m1", config_in=update, policy=RAY_ENABLED
            )
        deployments_service.ensure_config_version(
            db_session, workspace=WS, name="m1", overrides={"runtime": "ray"}, policy=RAY_ENABLED
        )
        # the operator narrowed the policy since: the stored config is deployed no more
        with pytest.raises(RefusedConfigError, match="'ray'"):
            deployments_service.ensure_config_version(
                db_session, workspace=WS, name="m1", overrides={}, policy=LOCAL_ONLY
            )
        with pytest.raises(RefusedConfigError, match="'ray'"):
            deployments_service.resolve_config(
                db_session, workspace=WS, name="m1", version=None, policy=LOCAL_ONLY
            )


@pytest.mark.parametrize(
    ("field", "too_big"),
    [
        ("gpu", 17),
        ("replicas", 65),
        ("max_batch_size", 2049),
        ("max_batch_tokens", 1_048_577),
        ("max_queue", 65_537),
        ("threads", 257),
    ],
)
def test_executor_settings_have_upper_bounds(field: str, too_big: int) -> None:
    """Issue 9 item 12: `max_queue: 10^30` and the like are refused by every model."""
    from pydantic import ValidationError

    for model in (ExecutorConfig, ExecutorConfigUpdate, ConfigOverrides):
        if field not in model.model_fields:
            continue
        with pytest.raises(ValidationError, match="less than or equal"):
            model.model_validate({field: too_big})
        model.model_validate({field: too_big - 1})
    with pytest.raises(ValidationError):
        ExecutorConfig.model_validate({field: 10**30})


def test_a_stored_config_over_todays_bounds_is_not_deployed(store: Store) -> None:
    """`max_queue: 10^30` written before the bounds: a new deployment of it is refused (400)
    before anything is queued, instead of failing in the rollout."""
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        config = deployments_service.get_latest_config(db_session, workspace=WS, name="m1")
        assert config is not None
        config.executor_config = {**config.executor_config, "max_queue": 10**30}
        db_session.flush()
        with pytest.raises(InvalidRequestError, match="max_queue"):
            new_deployment(db_session)
