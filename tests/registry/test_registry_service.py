"""The model registry service: the load check, reading, and the registry's own rows (the
flows that also touch configs, revisions and tasks are in test_registry_flows.py)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from factories import add_embedding_model, checked_model

from greenroom.config import Settings
from greenroom.deployments import configs as deployments_configs
from greenroom.errors import ConflictError, ModelSourceError, NotFoundError
from greenroom.registry import service as registry_service
from greenroom.registry.schemas import EmbeddingModelCreate, EmbeddingModelUpdate
from greenroom.registry.store import PINS_DIR
from greenroom.registry.weights import UNUSABLE_SOURCE, content_hash
from greenroom.store.db import Store

TIMEOUT_S = 120.0


def check_options(
    data_dir: Path, cache_dir: Path, *, timeout_s: float = TIMEOUT_S
) -> registry_service.CheckOptions:
    return registry_service.CheckOptions(
        store_dir=data_dir / "models",
        cache_dir=cache_dir,
        timeout_s=timeout_s,
        max_bytes=1 << 30,
        max_files=1000,
    )


@pytest.fixture
def options(tmp_path: Path, onnx_cache_dir: Path) -> registry_service.CheckOptions:
    return check_options(tmp_path, onnx_cache_dir)


@pytest.fixture(scope="module")
def checked_tiny(
    tiny_model_dir: Path, onnx_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> registry_service.CheckedModel:
    options = check_options(tmp_path_factory.mktemp("data"), onnx_cache_dir)
    return registry_service.check_source(source=str(tiny_model_dir), options=options)


def test_check_source_loads_and_stores_the_model(
    checked_tiny: registry_service.CheckedModel, tiny_model_dir: Path, onnx_cache_dir: Path
) -> None:
    assert checked_tiny.content_hash == content_hash(tiny_model_dir)
    assert checked_tiny.path.name == checked_tiny.content_hash
    assert checked_tiny.path.parent.name == "models"
    assert content_hash(checked_tiny.path) == checked_tiny.content_hash
    assert (checked_tiny.dimension, checked_tiny.pooling, checked_tiny.normalize) == (
        32,
        "mean",
        True,
    )
    assert (onnx_cache_dir / checked_tiny.content_hash / "model.onnx").is_file()
    assert checked_tiny.pin is not None and checked_tiny.pin.is_file()
    assert [p.name for p in checked_tiny.path.parent.iterdir() if p.name.startswith(".inc")] == []


def test_the_onnx_cache_is_in_the_data_dir_unless_a_setting_puts_it_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GREENROOM_ONNX_CACHE_DIR", raising=False)
    default = Settings(data_dir=tmp_path / "data")
    moved = Settings(data_dir=tmp_path / "data", onnx_cache_dir=tmp_path / "exports")
    assert registry_service.CheckOptions.of(default).cache_dir == tmp_path / "data" / "onnx"
    assert registry_service.CheckOptions.of(moved).cache_dir == tmp_path / "exports"
    monkeypatch.setenv("GREENROOM_ONNX_CACHE_DIR", str(tmp_path / "from-env"))
    assert Settings(data_dir=tmp_path).resolved_onnx_cache_dir() == tmp_path / "from-env"


def test_check_source_of_a_missing_directory(
    tmp_path: Path, options: registry_service.CheckOptions, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, "greenroom.registry"),
        pytest.raises(ModelSourceError) as info,
    ):
        registry_service.check_source(source=str(tmp_path / "none"), options=options)
    assert info.value.message == UNUSABLE_SOURCE
    assert "is not a directory with a config.json" in caplog.text


def test_check_source_of_a_model_that_does_not_load(
    tiny_model_dir: Path,
    checked_tiny: registry_service.CheckedModel,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = tmp_path / "onnx" / checked_tiny.content_hash
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    options = check_options(tmp_path, tmp_path / "onnx")
    with (
        caplog.at_level(logging.WARNING, "greenroom.registry"),
        pytest.raises(ModelSourceError, match="does not load") as info,
    ):
        registry_service.check_source(source=str(tiny_model_dir), options=options)
    assert str(tiny_model_dir) not in info.value.message
    assert "Protobuf" not in info.value.message  # internals go to the log
    assert "Protobuf parsing failed" in caplog.text
    assert [p.name for p in options.store_dir.iterdir()] == [PINS_DIR]  # nothing stored


def test_check_source_is_bounded_in_time(tiny_model_dir: Path, tmp_path: Path) -> None:
    options = check_options(tmp_path, tmp_path / "onnx", timeout_s=0.01)
    with pytest.raises(ModelSourceError, match=r"did not load within 0\.01 seconds"):
        registry_service.check_source(source=str(tiny_model_dir), options=options)
    assert [p.name for p in options.store_dir.iterdir()] == [PINS_DIR]


def test_check_source_refuses_a_dimension_other_than_configured(
    checked_tiny: registry_service.CheckedModel,
    tiny_model_dir: Path,
    options: registry_service.CheckOptions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report = registry_service.LoadReport(
        path=checked_tiny.path, content_hash=checked_tiny.content_hash, dimension=7, pin=None
    )
    monkeypatch.setattr(registry_service, "run_load_check", lambda **_: report)
    with pytest.raises(ModelSourceError, match="produces 7-dimensional vectors"):
        registry_service.check_source(source=str(tiny_model_dir), options=options)


def test_create_refuses_an_id_registered_concurrently(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "tiny")
    with (
        store.session_scope() as db_session,
        pytest.raises(ConflictError, match="'tiny' already exists"),
    ):
        registry_service.create(
            db_session,
            model_in=EmbeddingModelCreate(id="tiny", source="/models/fake"),
            checked=checked_model(),
        )


def test_get_all_is_sorted_by_id(store: Store) -> None:
    with store.session_scope() as db_session:
        for model_id in ("b", "c", "a"):
            add_embedding_model(db_session, model_id)
        assert [m.id for m in registry_service.get_all(db_session)] == ["a", "b", "c"]


def test_get_or_raise_an_unknown_model(store: Store) -> None:
    with (
        store.session_scope() as db_session,
        pytest.raises(NotFoundError, match="Embedding model 'x' not found"),
    ):
        registry_service.get_or_raise(db_session, embedding_model_id="x")


def test_update_of_an_unknown_model(store: Store) -> None:
    with store.session_scope() as db_session, pytest.raises(NotFoundError):
        registry_service.update(
            db_session,
            embedding_model_id="x",
            model_in=EmbeddingModelUpdate(source="/models/fake"),
            checked=checked_model(),
        )


def test_a_copied_model_keeps_its_hash(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Hashes name weights, not places: a copy reuses the ONNX export of the original."""
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    assert content_hash(copy) == content_hash(tiny_model_dir)


def test_refuse_registering_twice(store: Store) -> None:
    with store.session_scope() as db_session:
        registry_service.refuse_registering_twice(db_session, embedding_model_id="tiny")
        add_embedding_model(db_session, "tiny")
        with pytest.raises(ConflictError, match="Embedding model 'tiny' already exists"):
            registry_service.refuse_registering_twice(db_session, embedding_model_id="tiny")


def test_create_records_the_model_row_only(store: Store) -> None:
    with store.session_scope() as db_session:
        registry_service.create(
            db_session,
            model_in=EmbeddingModelCreate(id="tiny", source="/models/fake"),
            checked=checked_model(),
        )
    with store.session_scope() as db_session:
        assert registry_service.get_or_raise(db_session, embedding_model_id="tiny").dimension == 32
        assert not deployments_configs.list_config_versions(
            db_session, workspace="default", name="tiny"
        )


def test_delete_removes_the_row_and_refuses_an_unknown_model(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "tiny")
    with store.session_scope() as db_session:
        registry_service.delete(db_session, embedding_model_id="tiny")
        assert registry_service.get(db_session, embedding_model_id="tiny") is None
        with pytest.raises(NotFoundError):
            registry_service.delete(db_session, embedding_model_id="tiny")


def test_stored_references_name_each_model_hash_and_path(store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "a", path=Path("/data/models/aa"), content_hash="aa")
        assert registry_service.stored_references(db_session) == {"aa", "/data/models/aa"}
