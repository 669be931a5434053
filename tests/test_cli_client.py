"""The client commands of `greenroom` against a running server (real replica processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server
from typer.testing import CliRunner

from greenroom.app import create_app
from greenroom.cli import app as cli
from greenroom.config import Settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, onnx_cache_dir: Path) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("cli") / "data"
    data_dir.mkdir()
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    settings = Settings(
        data_dir=data_dir, default_model_id="", drain_grace_s=5, admin_token=ADMIN_TOKEN
    )
    with running_server(create_app(settings)) as url:
        yield url


def run(server: str, *args: str, token: str = ADMIN_TOKEN) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [*args, "--server", server], env={"GREENROOM_TOKEN": token})
    return result.exit_code, result.stdout, result.stderr


def test_the_client_commands_drive_a_whole_lifecycle(
    server: str, tiny_model_dir: Path, tiny_model_2_dir: Path
) -> None:
    code, out, _ = run(server, "models", "register", "cli-model", str(tiny_model_dir))
    assert code == 0 and "registered cli-model" in out
    code, out, _ = run(server, "models", "list")
    assert code == 0 and "cli-model" in out

    code, out, err = run(server, "deploy", "cli-model", "--wait")
    assert code == 0, err
    first_task = out.split()[0]
    assert first_task.startswith("deploy-")
    assert "start_green" in err and "done" in err  # the progress display of the steps

    code, _, err = run(server, "deploy", "cli-model", "--set", "max_batch_size=8", "--wait")
    assert code == 0, err

    httpx.put(
        f"{server}/v1/embedding-models/cli-model",
        json={"source": str(tiny_model_2_dir)},
        headers=ADMIN_HEADERS,
    )
    code, _, err = run(server, "deploy", "cli-model", "--wait")
    assert code == 1 and "not comparable" in err
    code, _, err = run(server, "deploy", "cli-model", "--allow-embedding-space-change", "--wait")
    assert code == 0, err

    code, out, _ = run(server, "tasks", "cli-model")
    assert code == 0 and first_task in out
    code, out, _ = run(server, "status")
    assert code == 0 and "cli-model" in out and "yes" in out

    code, _, err = run(server, "cancel", first_task)
    assert code == 1 and "cannot be canceled" in err

    code, _, err = run(server, "delete", "cli-model", "--reason", "done testing", "--wait")
    assert code == 0, err
    response = httpx.post(
        f"{server}/v1/embeddings", json={"model": "cli-model", "input": "x"}, headers=ADMIN_HEADERS
    )
    assert response.status_code == 404


def test_a_bad_override_and_an_unreachable_server_say_why(server: str) -> None:
    code, _, err = run(server, "deploy", "nope", "--set", "replicas")
    assert code != 0 and "key=value" in err
    code, _, err = run("http://127.0.0.1:9", "models", "list")
    assert code == 1 and "Cannot reach greenroom" in err


def test_the_tokens_commands(server: str) -> None:
    code, out, err = run(server, "tokens", "create", "--scope", "read", "--scope", "infer")
    assert code == 0, err
    token = out.strip()
    assert len(out.splitlines()) == 1 and len(token) >= 43  # only the token on stdout
    assert "read" in err and "infer" in err
    code, out, err = run(server, "tokens", "create", "--scope", "deploy", "--name", "ci")
    assert code == 0, err
    deploy_token = out.strip()

    code, out, _ = run(server, "tokens", "list", token=token)
    assert code == 1  # listing tokens needs admin
    code, out, _ = run(server, "tokens", "list")
    ids = {t["name"]: t["id"] for t in tokens(server)}
    assert code == 0 and ids["ci"] in out and ids["read-infer"] in out
    assert token not in out and deploy_token not in out
    token_id = ids["ci"]

    code, out, _ = run(server, "models", "list", token=deploy_token)
    assert code == 0
    code, _, err = run(server, "tokens", "revoke", token_id)
    assert code == 0, err
    code, _, err = run(server, "models", "list", token=deploy_token)
    assert code == 1 and "401" in err and "revoked" in err
    code, _, err = run(server, "tokens", "create", "--scope", "root")
    assert code != 0 and "root" in err


def tokens(server: str) -> list[dict]:
    return httpx.get(f"{server}/v1/tokens", headers=ADMIN_HEADERS).json()
