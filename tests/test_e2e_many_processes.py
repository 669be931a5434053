"""Two `greenroom serve` and two `greenroom worker` processes on one PostgreSQL.

API #1 runs the supervisor (it owns the replicas: local processes, or Ray Serve applications on
the session's Ray in the `ray` variant); API #2 runs with
`GREENROOM_SUPERVISOR=false` and routes to the replicas API #1 reports to the store. Every
change crosses processes through LISTEN/NOTIFY. A deploy asked of API #2 runs once, on one
worker; both APIs serve it; after a second deploy both routers serve the new revision.

Which revision a router serves is read from its report in `router_reports` (the report the
rollout's drain waits on), not from the embeddings contract. The lag from the switch (the
live-revision pointer's commit) to each router's first report of the new revision is printed
(`pytest -s`) and quoted in the README; it is not asserted (no timed assertions).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import free_port, stop_process, wait_until_sync
from servers import ADMIN_TOKEN
from sqlalchemy import select
from test_e2e_rollout import call, data_dir_with_cache, embed, wait_task

from greenroom.serving.models import RouterReport
from greenroom.store.db import Base, Store
from greenroom.tasks.models import Task
from greenroom.workloads.models import LiveRevision

TASKS = "/internal/inference-deployment"


def truncate(store: Store) -> None:
    with store.session_scope() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())


class Processes:
    """The test's processes; every one is stopped at the end, whatever happened."""

    def __init__(self, root: Path, database_url: str, runtime_env: dict[str, str]) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "GREENROOM_DATABASE_URL": database_url,
            "GREENROOM_ADMIN_TOKEN": ADMIN_TOKEN,
            "GREENROOM_WORKER_ENABLED": "false",
            "GREENROOM_DEFAULT_MODEL_ID": "",
            "GREENROOM_DRAIN_GRACE_S": "5",
            **runtime_env,
        }
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "greenroom.cli", *args],
            env={**self.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        self.started.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop_process(process)


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def runtime_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment that picks the runtime for every process: local replica processes, or
    Ray Serve on the session's Ray (`RAY_ADDRESS`). Every Serve application the test created is
    deleted at the end: API #1 keeps its applications on an external cluster when it stops."""
    if request.param == "local":
        yield {"GREENROOM_RUNTIME": "local"}
        return
    pytest.importorskip("ray")
    request.getfixturevalue("ray_cluster")
    import ray
    from ray import serve

    before = set(serve.status().applications)
    try:
        yield {
            "GREENROOM_RUNTIME": "ray",
            "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
            # the session's Ray is greenroom's private one: token auth on, loopback only
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": os.environ["RAY_AUTH_TOKEN_PATH"],
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    finally:  # after `processes` stopped every process
        delete_serve_applications(set(serve.status().applications) - before)


def delete_serve_applications(names: set[str]) -> None:
    from ray import serve
    from ray.experimental import internal_kv

    from greenroom.runtime.ray_cluster import KV_NAMESPACE

    for name in names:
        serve.delete(name, _blocking=True)
        for key in internal_kv._internal_kv_list(f"{name}/", namespace=KV_NAMESPACE):
            internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)
        internal_kv._internal_kv_del(f"spec/{name}", namespace=KV_NAMESPACE)


@pytest.fixture
def processes(
    tmp_path: Path, pg_database_url: str, runtime_env: dict[str, str]
) -> Iterator[Processes]:
    store = Store(pg_database_url)
    truncate(store)
    store.dispose()
    running = Processes(tmp_path, pg_database_url, runtime_env)
    try:
        yield running
    finally:
        running.stop_all()


def wait_ready(base: str, process: subprocess.Popen) -> None:
    def ready() -> bool:
        assert process.poll() is None, f"the server at {base} exited"
        try:
            return httpx.get(base + "/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until_sync(ready, deadline_s=60, interval_s=0.1, what=f"{base} to be ready")


class ReportWatcher:
    """Polls `router_reports` and keeps, per router, its first report serving a revision."""

    def __init__(self, store: Store, served_name: str) -> None:
        self.store = store
        self.served_name = served_name
        self.first_seen: dict[tuple[str, str], datetime] = {}  # (router, revision) -> heartbeat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            with self.store.session_scope() as session:
                for report in session.scalars(select(RouterReport)):
                    revision = report.live.get(self.served_name)
                    if revision:
                        self.first_seen.setdefault(
                            (report.router_id, revision), report.heartbeat_at
                        )
            self._stop.wait(0.01)

    def routers_serving(self, revision_id: str) -> set[str]:
        return {router for router, revision in dict(self.first_seen) if revision == revision_id}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def assert_runs_on(runtime_env: dict[str, str], revision_id: str) -> None:
    """In the `ray` variant, the revision runs as a Serve application on the session's Ray."""
    if runtime_env["GREENROOM_RUNTIME"] == "ray":
        from ray import serve

        from greenroom.runtime.ray import app_name

        assert app_name(revision_id) in serve.status().applications


def test_two_servers_two_workers_share_postgresql(
    processes: Processes,
    runtime_env: dict[str, str],
    pg_database_url: str,
    onnx_cache_dir: Path,
    tiny_model_dir: Path,
) -> None:
    root = processes.root
    ports = free_port(), free_port()
    api_1, api_2 = (f"http://127.0.0.1:{port}" for port in ports)
    server_1 = processes.start(
        "api-1",
        ["serve", "--port", str(ports[0]), "--data-dir",
         str(data_dir_with_cache(root / "api-1", onnx_cache_dir))],
    )  # fmt: skip
    server_2 = processes.start(
        "api-2",
        ["serve", "--port", str(ports[1]), "--data-dir",
         str(data_dir_with_cache(root / "api-2", onnx_cache_dir))],
        GREENROOM_SUPERVISOR="false",
    )  # fmt: skip
    for index in (1, 2):
        processes.start(f"worker-{index}", ["worker", "--data-dir", str(root / f"worker-{index}")])
    wait_ready(api_1, server_1)
    wait_ready(api_2, server_2)

    # register through API #1, deploy through API #2
    call("POST", f"{api_1}/v1/embedding-models", json={"id": "m", "source": str(tiny_model_dir)})
    task = call("POST", f"{api_2}{TASKS}/deploy", json={"embedding_model_id": "m"})
    first = wait_task(api_2, task["id"])
    assert first["status"] == "done", first
    assert_runs_on(runtime_env, first["metadata"]["revision_id"])

    store = Store(pg_database_url)
    try:
        with store.session_scope() as session:
            row = session.get(Task, task["id"])
            assert row is not None
            assert row.attempts == 1  # claimed once: no second worker took it over
        claimed = [
            name
            for name in ("worker-1", "worker-2")
            if f"claimed task {task['id']}" in processes.log(name)
        ]
        assert len(claimed) == 1, claimed

        # both APIs serve it: API #2 through the replicas API #1 reported to the store
        vectors = [embed(api, "m") for api in (api_1, api_2)]
        np.testing.assert_allclose(vectors[0], vectors[1], rtol=1e-5)

        # a config change: both routers follow the switch
        watcher = ReportWatcher(store, "m")
        try:
            task = call(
                "POST",
                f"{api_1}{TASKS}/deploy",
                json={"embedding_model_id": "m", "config": {"max_batch_size": 8}},
            )
            second = wait_task(api_1, task["id"])
            assert second["status"] == "done", second
            green = second["metadata"]["revision_id"]
            assert green != first["metadata"]["revision_id"]
            assert_runs_on(runtime_env, green)
            wait_until_sync(
                lambda: len(watcher.routers_serving(green)) == 2,
                deadline_s=30,
                what="both routers to report the new revision",
            )
        finally:
            watcher.close()
        steps = {step["name"]: step for step in second["metadata"]["steps"]}
        assert steps["switch"]["message"] == "routers serve green", steps["switch"]
        for api in (api_1, api_2):
            np.testing.assert_allclose(embed(api, "m"), vectors[0], rtol=1e-5)
        report_lag(store, watcher, green, steps["switch"])
    finally:
        store.dispose()


def report_lag(
    store: Store, watcher: ReportWatcher, green: str, switch_step: dict[str, Any]
) -> None:
    """Print how long after the pointer's commit each router first reported green."""
    with store.session_scope() as session:
        pointer = session.get(LiveRevision, "m")
        assert pointer is not None and pointer.revision_id == green
        switched_at = pointer.updated_at
    lags = {
        router: (heartbeat - switched_at).total_seconds() * 1000
        for (router, revision), heartbeat in watcher.first_seen.items()
        if revision == green
    }
    shown = ", ".join(f"{lag:.0f} ms" for lag in sorted(lags.values()))
    print(
        f"\nswitch → each router's first green report: {shown}; "
        f"switch step (pointer commit → every router agrees, seen by the worker): "
        f"{switch_step['duration_ms']} ms"
    )
