"""`/v1/embedding-models` over HTTP: a real registration of the tiny model, and every error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import add_embedding_model, add_live_revision, api_app
from fastapi.testclient import TestClient

from greenroom.config import Settings
from greenroom.deployments import configs as deployments_configs
from greenroom.registry import views as registry_views
from greenroom.registry.weights import UNUSABLE_SOURCE, content_hash
from greenroom.store.db import Store

BASE = "/v1/embedding-models"
FIELDS = {
    "id",
    "source",
    "description",
    "path",
    "content_hash",
    "dimension",
    "max_seq_length",
    "pooling",
    "normalize",
    "allow_dimensions",
    "created_at",
    "updated_at",
}


def client_for(store: Store, data_dir: Path) -> TestClient:
    app = api_app(store, Settings(data_dir=data_dir), registry_views.api_router)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(store: Store, tmp_path: Path, onnx_cache_dir: Path) -> Iterator[TestClient]:
    """The registry API; its data dir's ONNX cache is the suite's (exports are reused)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    with client_for(store, data_dir) as test_client:
        yield test_client


def test_register_read_update_and_delete_a_model(
    client: TestClient, store: Store, tiny_model_dir: Path, tiny_model_2_dir: Path
) -> None:
    body = {"id": "tiny", "source": str(tiny_model_dir), "description": "a tiny BERT"}
    created = client.post(BASE, json=body)
    assert created.status_code == 201, created.text
    model = created.json()
    assert set(model) == FIELDS
    assert model["content_hash"] == content_hash(tiny_model_dir)
    assert (model["dimension"], model["pooling"], model["normalize"]) == (32, "mean", True)
    assert model["allow_dimensions"] is False
    assert model["created_at"].endswith("Z")
    with store.session_scope() as db_session:
        config = deployments_configs.get_latest_config(db_session, workspace="default", name="tiny")
        assert config is not None and config.model_revision == model["content_hash"]

    assert client.get(f"{BASE}/tiny").json() == model
    assert client.get(BASE).json() == [model]
    assert client.post(BASE, json=body).json() == {
        "detail": "Embedding model 'tiny' already exists"
    }

    updated = client.put(f"{BASE}/tiny", json={"source": str(tiny_model_2_dir)})
    assert updated.status_code == 200, updated.text
    assert updated.json()["content_hash"] == content_hash(tiny_model_2_dir)
    assert updated.json()["description"] == "a tiny BERT"

    assert client.delete(f"{BASE}/tiny").status_code == 204
    assert client.get(f"{BASE}/tiny").status_code == 404


def test_register_a_bad_source(client: TestClient, tmp_path: Path) -> None:
    for source in (str(tmp_path / "missing"), "package:no_such_package_here"):
        response = client.post(BASE, json={"id": "m", "source": source})
        assert (response.status_code, response.json()) == (400, {"detail": UNUSABLE_SOURCE})


def test_register_stores_a_copy_and_delete_collects_it(
    client: TestClient, tmp_path: Path, tiny_model_dir: Path
) -> None:
    created = client.post(BASE, json={"id": "tiny", "source": str(tiny_model_dir)})
    assert created.status_code == 201, created.text
    stored = Path(created.json()["path"])
    assert stored == (tmp_path / "data" / "models" / created.json()["content_hash"]).resolve()
    assert content_hash(stored) == content_hash(tiny_model_dir)
    assert client.delete(f"{BASE}/tiny").status_code == 204
    assert not stored.exists()


def test_register_a_model_that_does_not_load(
    store: Store, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GREENROOM_ONNX_CACHE_DIR")  # its own cache, with a broken export
    broken = tmp_path / "onnx" / content_hash(tiny_model_dir)
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    with client_for(store, tmp_path) as client:
        response = client.post(BASE, json={"id": "m", "source": str(tiny_model_dir)})
        assert response.status_code == 400
        assert "does not load" in response.json()["detail"]
        assert client.get(BASE).json() == []


@pytest.mark.parametrize(
    "body",
    [
        {"id": "a b", "source": "/x"},
        {"id": "x" * 256, "source": "/x"},
        {"id": "ok"},
        {"id": "ok", "source": "/x", "description": "d" * 1001},
    ],
)
def test_register_a_bad_body(client: TestClient, body: dict) -> None:
    response = client.post(BASE, json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


def test_unknown_models_are_404(client: TestClient) -> None:
    expected = {"detail": "Embedding model 'x' not found"}
    assert client.get(f"{BASE}/x").json() == expected
    assert client.put(f"{BASE}/x", json={"source": "/x"}).json() == expected
    response = client.delete(f"{BASE}/x")
    assert (response.status_code, response.json()) == (404, expected)


def test_list_is_sorted_by_id(client: TestClient, store: Store) -> None:
    with store.session_scope() as db_session:
        for model_id in ("b", "a"):
            add_embedding_model(db_session, model_id)
    assert [m["id"] for m in client.get(BASE).json()] == ["a", "b"]


def test_a_deployed_model_cannot_be_deleted(client: TestClient, store: Store) -> None:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m")
        add_live_revision(db_session, embedding_model_id="m")
    response = client.delete(f"{BASE}/m")
    assert response.status_code == 409
    assert response.json() == {
        "detail": "Embedding model 'm' is deployed; delete its deployment first"
    }
