"""Issue 9, item 11 and the Low item's tokens: private files, long admin tokens, cheap unknown
tokens, expiring tokens.

- Files: another local user read `greenroom.db` (token hashes), its WAL and the logs. Now the
  data dir is 0700 and every file in it 0600; the tests start real servers over a data dir left
  0755 with 0644 files, as earlier versions made it, from a process whose umask is 022.
- A `GREENROOM_ADMIN_TOKEN` shorter than 32 characters stops the start with one sentence.
- A client repeating an unknown token cost a hash and a query each time; now a dict lookup.
- A token may expire (`expires_in`): from then on it is refused with 401.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from factories import HashEngine
from helpers import free_port, stop_process, wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server
from sqlalchemy import event
from typer.testing import CliRunner

from greenroom.app import create_app
from greenroom.auth import service as auth_service
from greenroom.cli import app as cli
from greenroom.config import InsecureSettingError, Settings
from greenroom.runtime.fake import FakeRuntime
from greenroom.store.db import Store, utcnow

TASKS = "/internal/inference-deployment"
SHORT_TOKEN = "Q#7~" * 7  # 28 characters
REFUSAL = "GREENROOM_ADMIN_TOKEN is shorter than 32 characters"


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def open_data_dir(root: Path) -> Path:
    """A data dir as earlier versions left it: 0755, with a 0644 server log and replica log."""
    data_dir = root / "data"
    (data_dir / "logs").mkdir(parents=True)
    for directory in (data_dir, data_dir / "logs"):
        directory.chmod(0o755)
    for name in ("greenroom.log", "replica-old.log"):
        (data_dir / "logs" / name).write_text("earlier lines\n")
        (data_dir / "logs" / name).chmod(0o644)
    return data_dir


def modes(data_dir: Path) -> dict[str, int]:
    """Permission bits of the data dir and of everything in it (symlinks not followed)."""
    found = {".": stat.S_IMODE(data_dir.stat().st_mode)}
    for path in data_dir.rglob("*"):
        if not path.is_symlink():
            found[str(path.relative_to(data_dir))] = stat.S_IMODE(path.stat().st_mode)
    return found


def assert_private(data_dir: Path) -> dict[str, int]:
    found = modes(data_dir)
    wide = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert not wide, f"readable by others: {wide}"
    return found


def test_an_in_process_server_keeps_its_store_private_whatever_the_umask(tmp_path: Path) -> None:
    data_dir = open_data_dir(tmp_path)
    settings = Settings(
        data_dir=data_dir, default_model_id="", worker_enabled=False, admin_token=ADMIN_TOKEN
    )
    with running_server(create_app(settings)) as base_url:
        body = {"name": "ci", "scopes": ["deploy"]}
        response = httpx.post(f"{base_url}/v1/tokens", json=body, headers=ADMIN_HEADERS)
        assert response.status_code == 201  # a write: the WAL holds a token hash now
        found = modes(data_dir)
        assert found["."] == 0o700
        for name in ("greenroom.db", "greenroom.db-wal", "greenroom.db-shm"):
            assert found[name] == 0o600, name


def serve(data_dir: Path, log: Path, **env: str) -> subprocess.Popen:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    return subprocess.Popen(
        [sys.executable, "-m", "greenroom.cli", "serve", "--port", env.pop("PORT", "0")],
        env={**clean, "GREENROOM_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def test_greenroom_serve_makes_every_file_private_replica_logs_included(
    tmp_path: Path, onnx_cache_dir: Path, tiny_model_dir: Path
) -> None:
    data_dir = open_data_dir(tmp_path)
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    port = free_port()
    log = tmp_path / "serve.log"
    process = serve(data_dir, log, PORT=str(port), GREENROOM_DEFAULT_MODEL_ID="")
    base_url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(log.read_text()[-3000:])
            try:
                return httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until_sync(ready, deadline_s=120, what="readyz")
        headers = {"Authorization": f"Bearer {(data_dir / 'admin.token').read_text().strip()}"}
        model = {"id": "tiny", "source": str(tiny_model_dir)}
        registered = httpx.post(
            f"{base_url}/v1/embedding-models", json=model, headers=headers, timeout=120
        )
        assert registered.status_code == 201, registered.text
        deploy = {"embedding_model_id": "tiny"}
        task = httpx.post(f"{base_url}{TASKS}/deploy", json=deploy, headers=headers)
        assert task.status_code == 200, task.text

        def replica_log() -> bool:  # the replica started: its log is open
            return any(p.name != "replica-old.log" for p in data_dir.glob("logs/replica-*.log"))

        wait_until_sync(replica_log, deadline_s=120, what="a replica's log")
        found = assert_private(data_dir)
        assert found["."] == 0o700 and found["logs"] == 0o700
        replica_logs = [name for name in found if name.startswith("logs/replica-")]
        assert len(replica_logs) >= 2  # the earlier one and the new replica's
        for name in ("greenroom.db", "admin.token", "logs/greenroom.log", *replica_logs):
            assert found[name] == 0o600, name

        def audit_lines() -> list[dict[str, object]]:  # in the private log file
            text = (data_dir / "logs" / "greenroom.log").read_text()
            marker = " greenroom.audit: "
            return [
                json.loads(line.split(marker, 1)[1]) for line in text.splitlines() if marker in line
            ]

        wait_until_sync(lambda: len(audit_lines()) >= 2, deadline_s=30, what="the audit lines")
        actions = [line["action"] for line in audit_lines()]
        assert actions[:2] == ["POST /v1/embedding-models", f"POST {TASKS}/deploy"]
    finally:
        stop_process(process)


def test_a_short_admin_token_stops_greenroom_serve_with_one_sentence(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "serve.log"
    process = serve(data_dir, log, GREENROOM_ADMIN_TOKEN=SHORT_TOKEN, GREENROOM_DEFAULT_MODEL_ID="")
    try:
        assert process.wait(60) != 0
    finally:
        stop_process(process)
    output = log.read_text()
    assert REFUSAL in output and SHORT_TOKEN not in output
    assert not (data_dir / "greenroom.db").exists()  # refused before anything started


def test_a_short_admin_token_is_refused_by_the_settings() -> None:
    with pytest.raises(InsecureSettingError, match=REFUSAL):
        Settings(default_model_id="", admin_token=SHORT_TOKEN)


# ----- tokens: unknown ones are cheap, expired ones refused ------------------------------------


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    settings = Settings(
        data_dir=tmp_path / "data",
        default_model_id="",
        worker_enabled=False,
        admin_token=ADMIN_TOKEN,
    )
    app = create_app(settings, FakeRuntime(lambda _: HashEngine()))
    with running_server(app) as base_url:
        yield base_url, app.state.store


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_reads(store: Store) -> list[str]:
    """From now on, every statement of the store that reads the tokens table."""
    reads: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "tokens" in statement:
            reads.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    return reads


def test_a_client_repeating_an_unknown_token_costs_one_query(
    token_server: tuple[str, Store],
) -> None:
    base_url, store = token_server
    reads = token_reads(store)
    with httpx.Client(base_url=base_url, headers={"Authorization": "Bearer guessed"}) as client:
        for _ in range(50):
            assert client.post(f"{TASKS}/deploy", json={}).status_code == 401
            assert client.get("/v1/embedding-models").status_code == 401
    assert len(reads) == 1


def test_tokens_expire_and_expired_ones_are_refused_like_unknown_ones(
    token_server: tuple[str, Store],
) -> None:
    base_url, store = token_server
    body = {"name": "ci", "scopes": ["read"], "expires_in": 3600}
    created = httpx.post(f"{base_url}/v1/tokens", json=body, headers=ADMIN_HEADERS).json()
    expires_at = parse(created["expires_at"])
    assert abs(expires_at - (utcnow() + timedelta(hours=1))) < timedelta(minutes=1)
    listed = httpx.get(f"{base_url}/v1/tokens", headers=ADMIN_HEADERS).json()
    assert [t["expires_at"] for t in listed if t["id"] == created["id"]] == [created["expires_at"]]
    with store.session_scope() as db_session:  # its hour has passed (it was never used: uncached)
        token = auth_service.get_or_raise(db_session, token_id=created["id"])
        token.expires_at = utcnow() - timedelta(seconds=1)
    response = httpx.get(f"{base_url}/v1/embedding-models", headers=bearer(created["token"]))
    assert response.status_code == 401
    unknown = httpx.get(f"{base_url}/v1/embedding-models", headers=bearer("unknown"))
    assert response.json() == unknown.json()  # nothing tells expired from unknown


@pytest.mark.parametrize("expires_in", [0, 59, 3650 * 86400 + 1, "1h"])
def test_expires_in_is_bounded(token_server: tuple[str, Store], expires_in: object) -> None:
    base_url, _ = token_server
    body = {"name": "ci", "scopes": ["read"], "expires_in": expires_in}
    response = httpx.post(f"{base_url}/v1/tokens", json=body, headers=ADMIN_HEADERS)
    assert response.status_code == 422


def test_the_cli_creates_expiring_tokens(token_server: tuple[str, Store]) -> None:
    base_url, _ = token_server
    runner = CliRunner()
    args = ["tokens", "create", "--scope", "read", "--server", base_url, "--expires-in"]
    env = {"GREENROOM_TOKEN": ADMIN_TOKEN}
    for given in ("30d", "3600", "90m"):
        result = runner.invoke(cli, [*args, given], env=env)
        assert result.exit_code == 0, result.stderr
        assert "expires at" in result.stderr
    listed = httpx.get(f"{base_url}/v1/tokens", headers=ADMIN_HEADERS).json()
    lifetimes = sorted(
        round((parse(t["expires_at"]) - parse(t["created_at"])).total_seconds())
        for t in listed
        if t["expires_at"]
    )
    assert lifetimes == [3600, 5400, 30 * 86400]
    result = runner.invoke(cli, [*args, "soon"], env=env)
    assert result.exit_code == 2 and "is not a duration" in result.stderr
    result = runner.invoke(cli, [*args, "30s"], env=env)  # under the server's minimum
    assert result.exit_code == 1 and "422" in result.stderr


def parse(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
