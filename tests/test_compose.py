"""The composition root: what `build_parts` makes for `greenroom serve` and `greenroom worker`,
and the start/stop pair that brings them up and down."""

from __future__ import annotations

from pathlib import Path

from factories import HashEngine
from helpers import async_test
from sqlalchemy import inspect

from greenroom.compose import build_parts
from greenroom.config import Settings
from greenroom.leadership import Elector, named_lock
from greenroom.runtime.fake import FakeRuntime
from greenroom.serving.replicas import StoreReplicas


def settings_for(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", default_model_id="", **overrides)  # type: ignore[arg-type]


def fake() -> FakeRuntime:
    return FakeRuntime(lambda _: HashEngine())


def test_a_worker_has_a_store_and_a_worker_and_nothing_that_serves(tmp_path: Path) -> None:
    parts = build_parts(settings_for(tmp_path, worker_enabled=False), role="worker")
    try:
        assert parts.worker is not None  # a worker process always runs one
        assert parts.serving is None
        assert parts.bridge is None  # SQLite: no LISTEN/NOTIFY
    finally:
        parts.store.dispose()


def test_a_server_elects_a_supervisor_per_enabled_target(tmp_path: Path) -> None:
    parts = build_parts(settings_for(tmp_path, extra_runtimes="ray"), fake())
    try:
        assert parts.serving is not None
        assert [s.target for s in parts.serving.supervisors] == ["local", "ray"]
        assert parts.worker is not None  # the embedded worker
    finally:
        parts.store.dispose()


def test_every_router_reads_the_replicas_from_the_store(tmp_path: Path) -> None:
    for supervisor in (True, False):
        settings = settings_for(tmp_path, supervisor=supervisor, worker_enabled=False)
        parts = build_parts(settings, fake())
        try:
            assert parts.serving is not None
            source = parts.serving.router.replica_source
            assert isinstance(source, StoreReplicas)
            assert parts.serving.sync.replicas is source
            assert len(parts.serving.supervisors) == (1 if supervisor else 0)
            assert parts.worker is None
        finally:
            parts.store.dispose()


@async_test
async def test_a_lone_server_leads_from_the_start_and_hands_over_on_stop(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, admin_token="a" * 40)
    parts = build_parts(settings, fake())
    assert parts.serving is not None
    await parts.start()
    try:
        assert inspect(parts.store.engine).has_table("tasks")  # migrated
        (supervisor,) = parts.serving.supervisors
        assert supervisor.leading
        assert parts.serving.startup.pending is None  # no default model to deploy
        standby = Elector(named_lock(settings, parts.store, "supervisor-local"))
        assert await standby.step() is False
    finally:
        await parts.stop()
    assert await standby.step() is True  # the lock went with the stop
    await standby.resign()


@async_test
async def test_a_worker_parts_run_until_the_worker_stops(tmp_path: Path) -> None:
    parts = build_parts(settings_for(tmp_path), role="worker")
    assert parts.worker is not None
    await parts.start()
    try:
        await parts.worker.stop()
        await parts.worker_stopped()
    finally:
        await parts.stop()
