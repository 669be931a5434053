"""The bootstrap admin token: created on first start into `<data dir>/admin.token` (0600), or
`GREENROOM_ADMIN_TOKEN`'s value."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from factories import HashEngine
from fastapi.testclient import TestClient

from greenroom.app import create_app
from greenroom.auth import service as auth_service
from greenroom.auth.service import Authenticator
from greenroom.bootstrap import ensure_admin_token
from greenroom.config import ADMIN_TOKEN_MIN_LENGTH, InsecureSettingError, Settings
from greenroom.runtime.fake import FakeRuntime
from greenroom.store.db import Store

ENV_TOKEN = "bootstrap-env-token-0123456789abcdefghijkl"


def settings_for(data_dir: Path, store: Store | None = None, token: str | None = None) -> Settings:
    return Settings(
        data_dir=data_dir,
        database_url=store.url if store else None,
        default_model_id="",
        worker_enabled=False,
        admin_token=token,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"  # the SQLite store lives in tmp_path


def active_tokens(store: Store) -> list[tuple[str, list[str]]]:
    with store.session_scope() as db_session:
        return [(t.name, t.scopes) for t in auth_service.get_active(db_session)]


def test_the_first_start_writes_the_admin_token_file(
    store: Store, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_admin_token(settings_for(data_dir, store), store)
    token_file = data_dir / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    secret = token_file.read_text().strip()
    principal = Authenticator(store).authenticate(secret)
    assert principal is not None and principal.name == "admin"
    assert capsys.readouterr().err.count(secret) == 1
    assert [p.name for p in data_dir.iterdir()] == ["admin.token"]  # no partial file left

    ensure_admin_token(settings_for(data_dir, store), store)  # a restart: nothing new
    assert token_file.read_text().strip() == secret
    assert secret not in capsys.readouterr().err
    assert active_tokens(store) == [("admin", ["admin"])]


def test_a_start_with_every_admin_token_revoked_creates_a_new_one(
    store: Store, data_dir: Path
) -> None:
    ensure_admin_token(settings_for(data_dir, store), store)
    first = (data_dir / "admin.token").read_text().strip()
    with store.session_scope() as db_session:
        (token,) = auth_service.get_all(db_session)
    Authenticator(store).revoke(token.id)
    ensure_admin_token(settings_for(data_dir, store), store)
    second = (data_dir / "admin.token").read_text().strip()
    assert second != first and Authenticator(store).authenticate(second) is not None


def test_the_env_token_is_the_admin_token_across_restarts(store: Store, data_dir: Path) -> None:
    for _ in range(2):
        ensure_admin_token(settings_for(data_dir, store, ENV_TOKEN), store)
    assert active_tokens(store) == [("admin", ["admin"])]
    assert Authenticator(store).authenticate(ENV_TOKEN) is not None
    assert not (data_dir / "admin.token").exists()


def test_a_new_env_value_replaces_the_previous_admin_token(store: Store, data_dir: Path) -> None:
    ensure_admin_token(settings_for(data_dir, store), store)  # a first start without the env
    file_token = (data_dir / "admin.token").read_text().strip()
    ensure_admin_token(settings_for(data_dir, store, ENV_TOKEN), store)
    ensure_admin_token(settings_for(data_dir, store, ENV_TOKEN + "-rotated"), store)
    authenticator = Authenticator(store)
    assert authenticator.authenticate(file_token) is None
    assert authenticator.authenticate(ENV_TOKEN) is None
    assert authenticator.authenticate(ENV_TOKEN + "-rotated") is not None
    assert not (data_dir / "admin.token").exists()  # it held a token that no longer works
    assert active_tokens(store) == [("admin", ["admin"])]


@pytest.mark.parametrize("env_token", [None, ENV_TOKEN])
def test_the_server_starts_with_its_admin_token(tmp_path: Path, env_token: str | None) -> None:
    app = create_app(settings_for(tmp_path, token=env_token), FakeRuntime(lambda _: HashEngine()))
    with TestClient(app) as client:
        secret = env_token or (tmp_path / "admin.token").read_text().strip()
        response = client.get("/v1/tokens", headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 200
        assert [t["name"] for t in response.json()] == ["admin"]
        assert client.get("/v1/tokens").status_code == 401


@pytest.mark.parametrize("length", [1, ADMIN_TOKEN_MIN_LENGTH - 1])
def test_a_short_env_token_is_refused_with_one_sentence(tmp_path: Path, length: int) -> None:
    secret = ("Q#7~" * 8)[:length]
    with pytest.raises(InsecureSettingError) as refused:
        settings_for(tmp_path, token=secret)
    message = str(refused.value)
    assert message.startswith("GREENROOM_ADMIN_TOKEN is shorter than 32 characters")
    assert secret not in message and message.count(".") == 1 and message.endswith(".")


def test_an_env_token_of_32_characters_or_an_empty_one_is_accepted(tmp_path: Path) -> None:
    secret = "s" * ADMIN_TOKEN_MIN_LENGTH
    assert settings_for(tmp_path, token=secret).admin_token.get_secret_value() == secret
    assert settings_for(tmp_path, token="").admin_token.get_secret_value() == ""  # unset
