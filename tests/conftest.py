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
from collections.abc import Iterator
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
    """Name → directory of each tiny model (`tiny-1`, `tiny-2`, `tiny-3`)."""
    return build_tiny_models(CACHE_ROOT / "greenroom-models" / builder_hash())


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["tiny-1"]


@pytest.fixture(scope="session")
def tiny_model_2_dir(tiny_models: dict[str, Path]) -> Path:
    """Same tokenizer as `tiny_model_dir`, other weights: a different embedding space."""
    return tiny_models["tiny-2"]


@pytest.fixture(scope="session")
def tiny_model_3_dir(tiny_models: dict[str, Path]) -> Path:
    """Another tokenizer and another dimension (48): the new model of an embedding migration."""
    return tiny_models["tiny-3"]


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    return resolve_source(DEFAULT_MODEL_SOURCE)


@pytest.fixture(scope="session")
def onnx_cache_dir() -> Path:
    """ONNX exports shared by every test and session: one export per content hash."""
    path = CACHE_ROOT / "greenroom-onnx"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(autouse=True)
def shared_onnx_cache(onnx_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every server a test starts, in this process or as a child, keeps its ONNX exports in the
    shared cache: a registration's load check exports a model once, not once per test's data
    directory (4 to 10 s each)."""
    monkeypatch.setenv("GREENROOM_ONNX_CACHE_DIR", str(onnx_cache_dir))


# ----- the store: SQLite per test, PostgreSQL with one database per test session -----------------

import uuid  # noqa: E402

import psycopg  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from greenroom.store.db import Store  # noqa: E402
from greenroom.store.migrations import upgrade  # noqa: E402

PG_ENV = "GREENROOM_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The PostgreSQL server the suite may use; skips (fails under CI=true) when unreachable."""
    url = os.environ.get(PG_ENV)
    reason = None
    if not url:
        reason = f"{PG_ENV} is not set"
    else:
        try:
            psycopg.connect(_libpq(url), connect_timeout=3).close()
        except psycopg.Error as exc:
            reason = f"PostgreSQL at {PG_ENV} is unreachable: {exc}"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true requires PostgreSQL)")
        pytest.skip(reason)
    assert url is not None
    return url


@pytest.fixture(scope="session")
def pg_database_url(pg_server_url: str) -> Iterator[str]:
    """A database of this test session's own, created empty and dropped at the end."""
    name = f"greenroom_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(pg_server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(pg_server_url).set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(_libpq(pg_server_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _truncate_all(store: Store) -> None:
    from greenroom.store.db import Base

    with store.session_scope() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty, migrated store on SQLite and on PostgreSQL (each test runs on both)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'greenroom.db'}"
        upgrade(url)
    else:
        url = request.getfixturevalue("pg_database_url")
    db = Store(url)
    _truncate_all(db)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'greenroom.db'}"
    upgrade(url)
    db = Store(url)
    try:
        yield db
    finally:
        db.dispose()


# ----- Ray: one private local Ray per test session (tests marked `ray`) --------------------------


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private local Ray (and Serve) shared by every Ray test of the session, stopped at its end.

    RayRuntime instances attach to it (not owning it) and delete their applications on close.
    It is started as greenroom starts its own: loopback only, token authentication on (the
    token's file is in `RAY_AUTH_TOKEN_PATH` of this process from then on).
    """
    ray = pytest.importorskip("ray")
    from ray import serve

    from greenroom.runtime.ray_cluster import RAY_TOKEN_FILE, start_private_ray, start_serve

    temp_dir = start_private_ray(
        tmp_path_factory.mktemp("ray") / RAY_TOKEN_FILE,
        num_cpus=2,
        temp_dir=Path(f"/tmp/gr-ray-test-{os.getpid()}"),
    )
    start_serve(None)
    try:
        yield
    finally:
        import shutil

        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
