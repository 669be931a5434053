"""Session fixtures: the tiny models, the default model and a shared ONNX export cache.

The tiny models are built by `tests/tinymodels.py` in a subprocess, so the pytest process never
imports torch for them, into `.pytest_cache/greenroom-models/<hash of the builder>/`: they survive
between sessions and are rebuilt when the builder changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from greenroom.config import DEFAULT_MODEL_SOURCE
from greenroom.registry.weights import resolve_source

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
BUILDER = TESTS_DIR / "tinymodels.py"
CACHE_ROOT = REPO_ROOT / ".pytest_cache"
BUILD_TIMEOUT_S = 600


def builder_hash() -> str:
    return hashlib.sha256(BUILDER.read_bytes()).hexdigest()[:12]


def build_tiny_models(out_dir: Path) -> dict[str, Path]:
    """Run the builder in a subprocess under a file lock (parallel sessions build once)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            [sys.executable, str(BUILDER), str(out_dir)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    if result.returncode != 0:
        raise RuntimeError(f"Building the tiny models failed:\n{result.stderr[-4000:]}")
    built = (line.split(maxsplit=1) for line in result.stdout.splitlines() if line.strip())
    return {name: Path(path) for name, path in built}


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """Name → directory of each tiny model (`tiny-1`, `tiny-2`)."""
    return build_tiny_models(CACHE_ROOT / "greenroom-models" / builder_hash())


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["tiny-1"]


@pytest.fixture(scope="session")
def tiny_model_2_dir(tiny_models: dict[str, Path]) -> Path:
    """Same tokenizer as `tiny_model_dir`, other weights: a different embedding space."""
    return tiny_models["tiny-2"]


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    return resolve_source(DEFAULT_MODEL_SOURCE)


@pytest.fixture(scope="session")
def onnx_cache_dir() -> Path:
    """ONNX exports shared by every test and session: one export per content hash."""
    path = CACHE_ROOT / "greenroom-onnx"
    path.mkdir(parents=True, exist_ok=True)
    return path
