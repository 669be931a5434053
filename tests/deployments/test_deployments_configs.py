"""Deployment configs (`deployments.configs`): versions, flat overrides, validation, what a
server allows, and deleting (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from factories import add_embedding_model
from sqlalchemy.orm import Session

from greenroom.auth.scopes import Scope
from greenroom.auth.service import Principal
from greenroom.config import Settings, default_threads
from greenroom.deployments import configs as deployments_configs
from greenroom.deployments import service as deployments_service
from greenroom.deployments.configs import ConfigPolicy, RefusedConfigError
from greenroom.deployments.models import Deployment, DeploymentConfig
from greenroom.deployments.schemas import (
    DeploymentConfigUpdate,
    DeploymentCreate,
    DeploymentUpdate,
    RegisteredModel,
)
from greenroom.deployments.states import Actor, DeploymentStatus, transition
from greenroom.errors import ConflictError, InvalidRequestError, NotFoundError
from greenroom.registry import service as registry_service
from greenroom.schemas import MAX_ENV_VARS, ExecutorConfig
from greenroom.store.db import Store

WS = "default"
TEAM = "team"
RAY_ENABLED = ConfigPolicy.of(Settings(runtime="local", extra_runtimes="ray"))
LOCAL_ONLY = ConfigPolicy.of(Settings(runtime="local"))
ALICE = Principal(id="a-1", name="alice", scopes=frozenset({Scope.DEPLOY}))


# The registered model a config serves comes in as a value (deployments.flows looks it up in
# the registry); these helpers do the same for the tests.


def model_of(db_session: Session, name: str) -> RegisteredModel | None:
    return registry_service.get(db_session, embedding_model_id=name)


def create_config(db_session: Session, **fields: Any) -> DeploymentConfig:
    model = model_of(db_session, fields["model_name"])
    return deployments_configs.create_config(db_session, model=model, **fields)


def _model_of_latest(db_session: Session, fields: dict[str, Any]) -> RegisteredModel | None:
    latest = deployments_configs.get_latest_config(
        db_session, workspace=fields["workspace"], name=fields["name"]
    )
    return model_of(db_session, latest.model_name) if latest else None


def create_config_version(db_session: Session, **fields: Any) -> DeploymentConfig:
    model = _model_of_latest(db_session, fields)
    return deployments_configs.create_config_version(db_session, model=model, **fields)


def ensure_config_version(db_session: Session, **fields: Any) -> DeploymentConfig:
    model = _model_of_latest(db_session, fields)
    return deployments_configs.ensure_config_version(db_session, model=model, **fields)


def update_config(db_session: Session, **fields: Any) -> DeploymentConfig:
    latest = deployments_configs.get_latest_config_or_raise(
        db_session, workspace=fields["workspace"], name=fields["name"]
    )
    name = deployments_configs.model_name_after(latest, fields["config_in"])
    return deployments_configs.update_config(db_session, model=model_of(db_session, name), **fields)


def delete_config(db_session: Session, *, live: set[str], **fields: Any) -> None:
    deployments_configs.delete_config(db_session, live_revision_ids=live, **fields)


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
        principal=ALICE,
    )


def test_registering_a_model_creates_its_default_config(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        config = deployments_configs.get_latest_config(db_session, workspace=WS, name="m1")
    assert config is not None
    assert (config.entity_version, config.engine, config.model_name) == (1, "onnx", "m1")
    assert config.model_revision == "ab" * 32
    defaults = ExecutorConfig().model_dump(mode="json", exclude={"threads"})
    assert config.executor_config == defaults  # threads absent: the machine's cores


def test_create_config(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        config = create_config(
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
            create_config(db_session, workspace=WS, name="m1", model_name="m1")
        with pytest.raises(InvalidRequestError, match="'nope' is not registered"):
            create_config(db_session, workspace=WS, name="other", model_name="nope")


def test_create_config_version_applies_flat_overrides(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = deployments_configs.get_latest_config(db_session, workspace=WS, name="m1")
        assert first is not None
        second = create_config_version(
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
        create_config_version(
            db_session, workspace=WS, name="m1", overrides={"threads": 4, "engine": "torch"}
        )
        third = create_config_version(
            db_session, workspace=WS, name="m1", overrides={"threads": None, "engine": None}
        )
    assert "threads" not in third.executor_config
    assert third.engine == "onnx"
    assert deployments_configs.serving_settings(third).threads == default_threads()


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
            create_config_version(db_session, workspace=WS, name="m1", overrides=overrides)


def test_create_config_version_of_an_unknown_config(store: Store) -> None:
    with store.session_scope() as db_session, pytest.raises(NotFoundError, match="'default/x'"):
        create_config_version(db_session, workspace=WS, name="x", overrides={})


def test_ensure_config_version_adds_one_only_for_a_change(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        same = ensure_config_version(db_session, workspace=WS, name="m1", overrides={"replicas": 1})
        changed = ensure_config_version(
            db_session, workspace=WS, name="m1", overrides={"replicas": 3}
        )
    assert (same.entity_version, changed.entity_version) == (1, 2)


def test_list_and_get_config_versions(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        for replicas in (2, 3):
            create_config_version(
                db_session, workspace=WS, name="m1", overrides={"replicas": replicas}
            )
        versions = deployments_configs.list_config_versions(db_session, workspace=WS, name="m1")
        second = deployments_configs.get_config(db_session, workspace=WS, name="m1", version=2)
        missing = deployments_configs.get_config(db_session, workspace=WS, name="m1", version=9)
    assert [v.entity_version for v in versions] == [3, 2, 1]
    assert second is not None and second.executor_config["replicas"] == 2
    assert missing is None


def test_refresh_model_revision(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        unchanged = deployments_configs.refresh_model_revision(
            db_session, model_name="m1", content_hash="ab" * 32
        )
        refreshed = deployments_configs.refresh_model_revision(
            db_session, model_name="m1", content_hash="cd" * 32
        )
    assert unchanged == []
    assert [(c.entity_version, c.model_revision) for c in refreshed] == [(2, "cd" * 32)]


def test_delete_configs_of_model(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        add_embedding_model(db_session, "m2")
        create_config_version(db_session, workspace=WS, name="m1", overrides={"replicas": 2})
        assert deployments_configs.delete_configs_of_model(db_session, model_name="m1") == 1
        assert deployments_configs.list_config_versions(db_session, workspace=WS, name="m1") == []
        assert deployments_configs.get_latest_config(db_session, workspace=WS, name="m2")


def test_create_config_refuses_another_model_revision(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        with pytest.raises(InvalidRequestError, match="has content hash"):
            create_config(
                db_session, workspace=TEAM, name="c", model_name="m1", model_revision="ff"
            )


def test_update_config_merges_into_the_latest(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        add_embedding_model(db_session, "m2", content_hash="cd" * 32)
        create_config(
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
        config = update_config(db_session, workspace=TEAM, name="c", config_in=update)
    assert (config.entity_version, config.model_name, config.model_revision) == (2, "m2", "cd" * 32)
    assert (config.project, config.description) == ("p", None)
    assert (config.executor_config["replicas"], config.executor_config["gpu"]) == (3, 1)


def test_delete_config_refused_while_used_by_the_latest_or_the_live_version(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        first = new_deployment(db_session)
        create_config(db_session, workspace=WS, name="c2", model_name="m1")
        second = new_version(db_session, config="c2")
        transition(second, DeploymentStatus.ERROR, message="failed", by=Actor.SYSTEM)
        db_session.flush()
        live = {first.revision_id}  # the first version is live
        with pytest.raises(ConflictError, match="used by deployment 'default/d1' \\(CREATED\\)"):
            delete_config(db_session, live=live, workspace=WS, name="m1")
        with pytest.raises(ConflictError, match="'default/c2' version 1 is used"):
            delete_config(db_session, live=live, workspace=WS, name="c2", version=1)
        # the version that named it is DELETED and nothing else is live: the config may go
        transition(second, DeploymentStatus.DELETED, message="gone", by=Actor.SYSTEM)
        delete_config(db_session, live=set(), workspace=WS, name="c2")
        assert deployments_configs.list_config_versions(db_session, workspace=WS, name="c2") == []


def test_resolve_config(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
        latest = deployments_configs.resolve_config(
            db_session, workspace=WS, name="m1", version=None
        )
        assert latest.entity_version == 1
        with pytest.raises(InvalidRequestError, match="'default/m1' version 2 does not exist"):
            deployments_configs.resolve_config(db_session, workspace=WS, name="m1", version=2)
        with pytest.raises(InvalidRequestError, match="'default/x' does not exist"):
            deployments_configs.resolve_config(db_session, workspace=WS, name="x", version=None)


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
            create_config(
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
        config = create_config(
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
                create_config(
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
            create_config_version(db_session, workspace=WS, name="m1", overrides={"runtime": "ray"})
        update = DeploymentConfigUpdate.model_validate(
            {"executor_config": {"additional_envs": {"BROWSER": "x"}}}
        )
        with pytest.raises(RefusedConfigError, match="'BROWSER'"):
            update_config(db_session, workspace=WS, name="m1", config_in=update, policy=RAY_ENABLED)
        ensure_config_version(
            db_session, workspace=WS, name="m1", overrides={"runtime": "ray"}, policy=RAY_ENABLED
        )
        # the operator narrowed the policy since: the stored config is deployed no more
        with pytest.raises(RefusedConfigError, match="'ray'"):
            ensure_config_version(
                db_session, workspace=WS, name="m1", overrides={}, policy=LOCAL_ONLY
            )
        with pytest.raises(RefusedConfigError, match="'ray'"):
            deployments_configs.resolve_config(
                db_session, workspace=WS, name="m1", version=None, policy=LOCAL_ONLY
            )
