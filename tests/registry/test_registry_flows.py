"""The registry's flows: registering a model with its config, re-pointing it, deleting it while
nothing runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import add_embedding_model, add_live_revision

from greenroom.deployments import configs as deployments_configs
from greenroom.errors import ConflictError, NotFoundError
from greenroom.registry import flows as registry_flows
from greenroom.registry import service as registry_service
from greenroom.registry.schemas import EmbeddingModelCreate, EmbeddingModelUpdate
from greenroom.registry.store import PINS_DIR
from greenroom.registry.weights import content_hash
from greenroom.store.db import Store
from greenroom.tasks.models import Task

TIMEOUT_S = 120.0


@pytest.fixture
def options(tmp_path: Path, onnx_cache_dir: Path) -> registry_service.CheckOptions:
    return registry_service.CheckOptions(
        store_dir=tmp_path / "models",
        cache_dir=onnx_cache_dir,
        timeout_s=TIMEOUT_S,
        max_bytes=1 << 30,
        max_files=1000,
    )


def test_register(
    store: Store, tiny_model_dir: Path, options: registry_service.CheckOptions
) -> None:
    model_in = EmbeddingModelCreate(id="tiny", source=str(tiny_model_dir), description="d")
    with store.session_scope() as db_session:
        model = registry_flows.register(db_session, model_in=model_in, options=options)
    with store.session_scope() as db_session:
        stored = registry_service.get_or_raise(db_session, embedding_model_id="tiny")
        config = deployments_configs.get_latest_config(db_session, workspace="default", name="tiny")
    assert (stored.dimension, stored.description, stored.path) == (32, "d", model.path)
    assert stored.path == str(options.store_dir / stored.content_hash)
    assert stored.source == str(tiny_model_dir)
    assert config is not None and config.model_revision == stored.content_hash
    assert list((options.store_dir / PINS_DIR).iterdir()) == []  # unpinned at the commit


def test_register_refuses_a_taken_id_before_checking(
    store: Store, tmp_path: Path, options: registry_service.CheckOptions
) -> None:
    model_in = EmbeddingModelCreate(id="tiny", source=str(tmp_path / "not-checked"))
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "tiny")
        with pytest.raises(ConflictError, match="Embedding model 'tiny' already exists"):
            registry_flows.register(db_session, model_in=model_in, options=options)


def test_update_source(
    store: Store, tiny_model_2_dir: Path, options: registry_service.CheckOptions
) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "tiny", description="kept")
        model = registry_flows.update_source(
            db_session,
            embedding_model_id="tiny",
            model_in=EmbeddingModelUpdate(source=str(tiny_model_2_dir)),
            options=options,
        )
        config = deployments_configs.get_latest_config(db_session, workspace="default", name="tiny")
    assert model.content_hash == content_hash(tiny_model_2_dir)
    assert model.path == str(options.store_dir / model.content_hash)
    assert model.description == "kept"
    assert model.source == str(tiny_model_2_dir)
    assert config is not None
    assert (config.entity_version, config.model_revision) == (2, model.content_hash)


def test_delete_removes_the_model_and_its_configs(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "tiny")
    with store.session_scope() as db_session:
        registry_flows.delete(db_session, embedding_model_id="tiny")
    with store.session_scope() as db_session:
        assert registry_service.get(db_session, embedding_model_id="tiny") is None
        assert not deployments_configs.list_config_versions(
            db_session, workspace="default", name="tiny"
        )


def test_delete_refuses_a_deployed_model(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "tiny")
        add_live_revision(db_session, embedding_model_id="tiny", served_name="team/search")
        assert registry_flows.is_deployed(db_session, embedding_model_id="tiny")
        with pytest.raises(ConflictError, match="'tiny' is deployed"):
            registry_flows.delete(db_session, embedding_model_id="tiny")


def test_delete_refuses_a_model_with_a_task_in_progress(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "tiny")
        db_session.add(Task(id="deploy-1", kind="deploy", embedding_model_id="tiny"))
        db_session.flush()
        with pytest.raises(ConflictError, match="'tiny' has a task in progress"):
            registry_flows.delete(db_session, embedding_model_id="tiny")


def test_delete_of_an_unknown_model(store: Store) -> None:
    with store.session_scope() as db_session, pytest.raises(NotFoundError):
        registry_flows.delete(db_session, embedding_model_id="x")
