"""Issue 9, items 6, 9 (sources) and 10, against a real server with a `deploy` token.

- A `package:` source is found, never imported: `package:this` prints nothing and is not in
  `sys.modules`; bad names are 400, not 500.
- Whatever makes a source unusable (missing, `/etc`, no config.json, a link out of it, a FIFO, a
  300-character name, too large), the answer is the same: it never tells whether a path exists;
  the reason is in the server log, and nothing is read or started for it.
- What is served is the copy in the model store: overwriting the source's weights and tokenizer
  after registration changes nothing that a new revision serves.
- A re-pointed model's old copy stays while a revision names it, and is collected after.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server

from greenroom.app import create_app
from greenroom.config import Settings
from greenroom.registry import service as registry_service
from greenroom.registry.flows import collect_unreferenced
from greenroom.registry.store import PINS_DIR
from greenroom.registry.weights import UNUSABLE_SOURCE, content_hash
from greenroom.store.db import Store
from greenroom.workloads.models import LiveRevision, Revision

MODELS = "/v1/embedding-models"
TASKS = "/internal/inference-deployment"
UNUSABLE = {"detail": UNUSABLE_SOURCE}
TEXT = "Hello World"


@contextmanager
def serve(data_dir: Path, onnx_dir: Path | None = None, **settings: Any) -> Iterator[str]:
    """A bare server (no default model) on `data_dir`; its ONNX cache is `onnx_dir` (linked)."""
    data_dir.mkdir(parents=True)
    if onnx_dir is not None:
        (data_dir / "onnx").symlink_to(onnx_dir)
    app = create_app(
        Settings(
            data_dir=data_dir,
            default_model_id="",
            admin_token=ADMIN_TOKEN,
            drain_grace_s=1,
            **settings,
        )
    )
    with running_server(app) as url:
        yield url


def deploy_headers(base: str) -> dict[str, str]:
    created = httpx.post(
        f"{base}/v1/tokens",
        json={"name": "team-deployer", "scopes": ["deploy"]},
        headers=ADMIN_HEADERS,
    )
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['token']}"}


def register(
    base: str, headers: dict[str, str], source: str, model_id: str = "m"
) -> httpx.Response:
    return httpx.post(
        f"{base}{MODELS}", json={"id": model_id, "source": source}, headers=headers, timeout=120
    )


def call(method: str, url: str, **kwargs: Any) -> Any:
    response = httpx.request(method, url, timeout=120, headers=ADMIN_HEADERS, **kwargs)
    assert response.status_code < 400, response.text
    return response.json() if response.content else None


def deploy(base: str, body: dict[str, Any]) -> dict[str, Any]:
    task = call("POST", f"{base}{TASKS}/deploy", json=body)
    result: dict[str, Any] = {}

    def final() -> bool:
        result.update(call("GET", f"{base}{TASKS}/deploy/{task['id']}"))
        return result["status"] in {"done", "failed", "canceled", "refused"}

    wait_until_sync(final, deadline_s=120, what=f"task {task['id']} to end")
    return result


def embed(base: str, model: str) -> np.ndarray:
    body = call("POST", f"{base}/v1/embeddings", json={"model": model, "input": TEXT})
    return np.array(body["data"][0]["embedding"])


def stored_hashes(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "models").iterdir() if not p.name.startswith(".")}


def collected_hashes(data_dir: Path) -> set[str]:
    """What stays in the store once the last write has committed (its pin is gone: the server
    collects right then) and one more collection ran: what the rows keep."""
    pins = data_dir / "models" / PINS_DIR
    wait_until_sync(lambda: not any(pins.iterdir()), what="the registration to commit")
    store = Store(f"sqlite:///{data_dir / 'greenroom.db'}")
    try:
        collect_unreferenced(store, data_dir)
    finally:
        store.dispose()
    return stored_hashes(data_dir)


@pytest.fixture
def server(tmp_path: Path, onnx_cache_dir: Path) -> Iterator[str]:
    with serve(tmp_path / "data", onnx_cache_dir) as url:
        yield url


@pytest.fixture
def no_load_check(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every load check started (a child process that would read the files)."""
    started: list[str] = []

    def refuse(*, source: str, **_: object) -> None:
        started.append(source)
        raise AssertionError("the load check was started")

    monkeypatch.setattr(registry_service, "run_load_check", refuse)
    return started


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "source"))


# ----- item 6: package sources are found, never imported ------------------------------------


def test_package_sources_are_never_imported(
    server: str,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delitem(sys.modules, "this", raising=False)
    headers = deploy_headers(server)
    for source in ("package:this", "package:", "package:.foo", "package:this.that", "package:os"):
        response = register(server, headers, source)
        assert (response.status_code, response.json()) == (400, UNUSABLE), source
    assert "this" not in sys.modules
    assert "Zen of Python" not in capfd.readouterr().out

    # a package that ships a model: registered from its `model` folder, its code never run
    package = tmp_path / "pkgs" / "greenroom_sec_pkg"
    shutil.copytree(tiny_model_dir, package / "model")
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(package.parent))
    response = register(server, headers, "package:greenroom_sec_pkg", "pkg")
    assert response.status_code == 201, response.text
    assert response.json()["content_hash"] == content_hash(tiny_model_dir)
    assert "greenroom_sec_pkg" not in sys.modules
    assert not marker.exists()


# ----- items 9 and 10: one neutral answer, before anything is read ---------------------------


def test_unusable_sources_get_one_answer_and_nothing_is_read(
    server: str,
    model_copy: Path,
    tmp_path: Path,
    no_load_check: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = deploy_headers(server)
    empty = tmp_path / "empty"
    empty.mkdir()
    linked = Path(shutil.copytree(model_copy, tmp_path / "linked"))
    (linked / "model.safetensors").unlink()
    (linked / "model.safetensors").symlink_to(model_copy / "model.safetensors")  # out of it
    sparse = tmp_path / "sparse.bin"
    with sparse.open("wb") as handle:
        handle.truncate(6 * 1024**3)
    behind_link = Path(shutil.copytree(model_copy, tmp_path / "behind-link"))
    (behind_link / "extra.bin").symlink_to(sparse)
    with_fifo = Path(shutil.copytree(model_copy, tmp_path / "fifo"))
    os.mkfifo(with_fifo / "pipe")  # reading it would block the registration
    sources = {
        "/etc": "not a directory with a config.json",
        "/nonexistent": "not a directory with a config.json",
        str(empty): "not a directory with a config.json",
        str(model_copy / "config.json"): "not a directory with a config.json",
        str(linked): "links out of the directory",
        str(behind_link): "links out of the directory",
        str(with_fifo): "is not a regular file",
        "/" + "a" * 300: "File name too long",
        f"{tmp_path}/{'b' * 300}/model": "File name too long",
    }
    with caplog.at_level(logging.WARNING, "greenroom.registry"):
        for source, reason in sources.items():
            response = register(server, headers, source)
            assert (response.status_code, response.json()) == (400, UNUSABLE), source
            assert reason in caplog.text, source
            caplog.clear()
    assert no_load_check == []
    assert httpx.get(f"{server}{MODELS}", headers=headers).json() == []


def test_a_model_over_the_size_bound_gets_the_same_answer(
    tmp_path: Path, onnx_cache_dir: Path, model_copy: Path, no_load_check: list[str]
) -> None:
    size = sum(p.stat().st_size for p in model_copy.rglob("*") if p.is_file())
    with serve(tmp_path / "data", onnx_cache_dir, max_model_bytes=size - 1) as url:
        headers = deploy_headers(url)
        too_large = register(url, headers, str(model_copy))
        assert (too_large.status_code, too_large.json()) == (400, UNUSABLE)
        assert register(url, headers, "/etc").json() == too_large.json()
    assert no_load_check == []


# ----- item 10: what is served is the stored copy ---------------------------------------------


def test_changing_the_source_after_registration_changes_nothing_served(
    tmp_path: Path, onnx_cache_dir: Path, model_copy: Path, tiny_model_2_dir: Path
) -> None:
    digest = content_hash(model_copy)
    onnx_dir = tmp_path / "onnx"  # private: this test removes an export
    onnx_dir.mkdir()
    if (onnx_cache_dir / digest / "model.onnx").is_file():
        shutil.copytree(onnx_cache_dir / digest, onnx_dir / digest)
    data_dir = tmp_path / "data"
    with serve(data_dir, onnx_dir) as url:
        registered = register(url, deploy_headers(url), str(model_copy), "a")
        assert registered.status_code == 201, registered.text
        assert registered.json()["path"] == str((data_dir / "models" / digest).resolve())
        first = deploy(url, {"embedding_model_id": "a"})
        assert first["status"] == "done", first
        before = embed(url, "a")

        # the source changes in place: other weights, a tokenizer that no longer lowercases
        weights = (tiny_model_2_dir / "model.safetensors").read_bytes()
        with (model_copy / "model.safetensors").open("r+b") as handle:
            handle.write(weights)
            handle.truncate()
        tokenizer = model_copy / "tokenizer.json"
        tokenizer.write_text(
            tokenizer.read_text().replace('"lowercase": true', '"lowercase": false')
        )
        assert content_hash(model_copy) != digest
        shutil.rmtree(onnx_dir / digest)  # a new replica exports again, from its model path

        again = deploy(
            url,
            {
                "embedding_model_id": "a",
                "config": {"max_batch_size": 8},
                "allow_embedding_space_change": True,
            },
        )
        assert again["status"] == "done", again
        assert again["metadata"]["revision_id"] != first["metadata"]["revision_id"]
        np.testing.assert_allclose(embed(url, "a"), before, rtol=1e-5, atol=1e-6)

        # re-pointed: the old copy stays, the revisions that ran it name it
        call("PUT", f"{url}{MODELS}/a", json={"source": str(tiny_model_2_dir)})
        assert collected_hashes(data_dir) == {digest, content_hash(tiny_model_2_dir)}


def test_a_repointed_model_keeps_its_old_copy_while_a_revision_names_it(
    server: str, tmp_path: Path, tiny_model_dir: Path, tiny_model_2_dir: Path
) -> None:
    data_dir = tmp_path / "data"
    headers = deploy_headers(server)
    old = register(server, headers, str(tiny_model_dir), "a").json()
    store = Store(f"sqlite:///{data_dir / 'greenroom.db'}")
    try:
        with store.session_scope() as session:  # a retired revision that a rollback may restart
            session.add(
                Revision(
                    id="retired",
                    deployment_id="d-1",
                    served_name="default/a",
                    embedding_model_id="a",
                    source=old["source"],
                    model_path=old["path"],
                    content_hash=old["content_hash"],
                    engine="onnx",
                    phase="Stopped",
                )
            )
        new = httpx.put(
            f"{server}{MODELS}/a",
            json={"source": str(tiny_model_2_dir)},
            headers=headers,
            timeout=120,  # a copy of the weights, hashed: slow on a loaded machine
        )
        assert new.status_code == 200, new.text
        assert new.json()["path"] != old["path"]
        assert collected_hashes(data_dir) == {old["content_hash"], new.json()["content_hash"]}

        with store.session_scope() as session:
            session.query(LiveRevision).delete()
            session.query(Revision).delete()
        deleted = httpx.delete(f"{server}{MODELS}/a", headers=headers, timeout=120)
        assert deleted.status_code == 204
        # collected once the delete commits (the session ends after the answer is sent)
        wait_until_sync(lambda: stored_hashes(data_dir) == set(), what="the collection")
    finally:
        store.dispose()


# ----- item 9: free text PostgreSQL cannot store -------------------------------------------------


def test_a_description_with_nul_is_refused_not_a_500_on_postgresql(
    tmp_path: Path, pg_database_url: str, tiny_model_dir: Path
) -> None:
    with serve(tmp_path / "data", database_url=pg_database_url) as url:
        body = {"id": "nul-model", "source": str(tiny_model_dir), "description": "a\x00b"}
        response = httpx.post(f"{url}/v1/embedding-models", json=body, headers=ADMIN_HEADERS)
        assert response.status_code == 422, response.text
        assert "description" in response.text
