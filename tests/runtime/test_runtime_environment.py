"""The environment replicas start with (`runtime/environment.py`): explicit, never the server's."""

from __future__ import annotations

import os

import pytest

from greenroom.runtime.environment import (
    ALLOWED_ENV_NAMES,
    replica_environment,
    without_server_secrets,
)

HOSTILE = {
    "PYTHONWARNINGS": "all:0:antigravity.x:0:0",
    "BROWSER": "/bin/sh -c 'id' #%s",
    "LD_PRELOAD": "/tmp/evil.so",
    "PATH": "/tmp/evil",
    "PYTHONPATH": "/tmp/evil",
    "HF_HUB_OFFLINE": "0",
}


@pytest.fixture(autouse=True)
def server_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server environment with secrets and variables no replica needs."""
    monkeypatch.setenv("GREENROOM_ADMIN_TOKEN", "s3cret-admin-token-0123456789abcdef")
    monkeypatch.setenv("GREENROOM_DATABASE_URL", "postgresql://u:password@db/greenroom")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("HOME", "/home/greenroom")


def test_a_replica_gets_the_minimum_and_nothing_of_the_server() -> None:
    env = replica_environment({}, ALLOWED_ENV_NAMES, threads=3)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/greenroom",
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        **({"LC_ALL": os.environ["LC_ALL"]} if os.environ.get("LC_ALL") else {}),
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "OPENBLAS_NUM_THREADS": "3",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def test_variables_outside_the_allow_list_are_dropped_and_offline_stays_on() -> None:
    requested = {**HOSTILE, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "0"}
    env = replica_environment(requested, ALLOWED_ENV_NAMES, threads=4)
    for name in ("PYTHONWARNINGS", "BROWSER", "LD_PRELOAD", "PYTHONPATH"):
        assert name not in env
    assert env["PATH"] == "/usr/bin:/bin"
    assert (env["OMP_NUM_THREADS"], env["CUDA_VISIBLE_DEVICES"]) == ("1", "0")
    assert env["HF_HUB_OFFLINE"] == "1"


def test_no_allow_list_lets_a_config_set_a_greenroom_variable() -> None:
    allowed = ALLOWED_ENV_NAMES | {"GREENROOM_ADMIN_TOKEN", "HF_HUB_OFFLINE"}
    env = replica_environment(
        {"GREENROOM_ADMIN_TOKEN": "x", "HF_HUB_OFFLINE": "0"}, allowed, threads=1
    )
    assert not [name for name in env if name.startswith("GREENROOM_")]
    assert env["HF_HUB_OFFLINE"] == "1"


def test_ray_replicas_get_no_base_from_the_server() -> None:
    env = replica_environment(HOSTILE, ALLOWED_ENV_NAMES, threads=2, inherit_base=False)
    assert "PATH" not in env and "HOME" not in env
    assert env["HF_HUB_OFFLINE"] == "1" and env["OMP_NUM_THREADS"] == "2"


def test_without_server_secrets_hides_them_for_the_block_only() -> None:
    with without_server_secrets():
        assert not [name for name in os.environ if name.startswith("GREENROOM_")]
        assert os.environ["PATH"] == "/usr/bin:/bin"
    assert os.environ["GREENROOM_ADMIN_TOKEN"] == "s3cret-admin-token-0123456789abcdef"
