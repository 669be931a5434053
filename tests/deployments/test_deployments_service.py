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
