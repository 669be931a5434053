"""The client commands of `greenroom` against a running server (real replica processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import running_server
from typer.testing import CliRunner

from greenroom.app import create_app
from greenroom.cli import app as cli
from greenroom.config import Settings


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, onnx_cache_dir: Path) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("cli") / "data"
    data_dir.mkdir()
    (data_dir / "onnx").symlink_to(onnx_cache_dir)
    settings = Settings(data_dir=data_dir, default_model_id="", drain_grace_s=5)
    with running_server(create_app(settings)) as url:
        yield url


def run(server: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [*args, "--server", server])
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

    httpx.put(f"{server}/v1/embedding-models/cli-model", json={"source": str(tiny_model_2_dir)})
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
    assert (
        httpx.post(f"{server}/v1/embeddings", json={"model": "cli-model", "input": "x"}).status_code
        == 404
    )


def test_a_bad_override_and_an_unreachable_server_say_why(server: str) -> None:
    code, _, err = run(server, "deploy", "nope", "--set", "replicas")
    assert code != 0 and "key=value" in err
    code, _, err = run("http://127.0.0.1:9", "models", "list")
    assert code == 1 and "Cannot reach greenroom" in err
