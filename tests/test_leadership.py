"""Leadership: one supervisor per runtime target among the `greenroom serve` processes of a store.

Unit tests of the election on both locks (a PostgreSQL advisory lock, a file lock on SQLite), of
the supervisor around it (fake runtime), of the once-only first-start bootstrap; then two real
`greenroom serve` processes on PostgreSQL: traffic through the standby's endpoint, SIGKILL of
the leader, the standby takes over and starts the local replicas again; requests resume, the gap
costs at most 503s (counted and printed), and the bootstrap ran once.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from factories import HashEngine, add_embedding_model, add_live_revision
from helpers import async_test, stop_process, wait_until, wait_until_sync
from sqlalchemy import func, select
from test_e2e_many_processes import (  # noqa: F401 (runtime_env: a fixture)
    Processes,
    free_port,
    runtime_env,
    truncate,
    wait_ready,
)
from test_e2e_rollout import data_dir_with_cache

from greenroom.auth import service as auth_service
from greenroom.bootstrap import ensure_admin_token, register_and_deploy_default
from greenroom.config import Settings
from greenroom.leadership import AdvisoryLock, Elector, FileLock, Lock, Supervisor, exclusive
from greenroom.notify import libpq_url
from greenroom.registry.models import EmbeddingModel
from greenroom.runtime.fake import FakeRuntime
from greenroom.runtime.targets import RuntimeTargets
from greenroom.signals import Signals
from greenroom.store.db import Store
from greenroom.tasks.models import Task
from greenroom.workloads.models import LiveRevision, Revision

LockFactory = Callable[[], Lock]
TAKE_OVER_BOUND_S = 15.0  # lock freed by a dead holder → a standby leads (a deadline, not a timing)


def lock_factory(store: Store, data_dir: Path, name: str = "supervisor-local") -> LockFactory:
    """New holders of one lock: advisory on PostgreSQL, a file lock in `data_dir` on SQLite."""
    if store.is_postgres:
        return lambda: AdvisoryLock(store.url, name)
    return lambda: FileLock(data_dir / f"{name}.lock")


def take_away(store: Store, lock: Lock) -> None:
    """Make `lock`'s holder lose it as a dead connection or a removed lock file would."""
    if isinstance(lock, AdvisoryLock):
        assert lock._conn is not None
        pid = lock._conn.info.backend_pid
        with psycopg.connect(libpq_url(store.url), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    else:
        assert isinstance(lock, FileLock)
        lock.path.unlink()


HOLDER = """
import sys, time
from pathlib import Path
from greenroom.leadership import AdvisoryLock, FileLock
kind, target, name = sys.argv[1:4]
lock = AdvisoryLock(target, name) if kind == "postgresql" else FileLock(Path(target))
assert lock.try_acquire()
print("holding", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(store: Store, tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen]]:
    """Start another process that takes the lock and holds it until killed."""
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        kind, target = (
            ("postgresql", store.url)
            if store.is_postgres
            else ("sqlite", str(tmp_path / "supervisor-local.lock"))
        )
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, kind, target, "supervisor-local"],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        assert process.stdout is not None and process.stdout.readline().strip() == "holding"
        return process

    try:
        yield start
    finally:
        for process in started:
            stop_process(process)


# ----- the election ----------------------------------------------------------------------------


@async_test
async def test_one_of_two_electors_leads(store: Store, tmp_path: Path) -> None:
    new_lock = lock_factory(store, tmp_path)
    first, second = Elector(new_lock()), Elector(new_lock())
    try:
        assert await first.step() is True
        assert await second.step() is False
        assert await first.step() is True  # a leader that holds its lock keeps leading
        assert await second.step() is False
    finally:
        await first.resign()
        await second.resign()


@async_test
async def test_a_resigning_leader_hands_over_to_the_standby(store: Store, tmp_path: Path) -> None:
    new_lock = lock_factory(store, tmp_path)
    first, second = Elector(new_lock()), Elector(new_lock())
    try:
        assert await first.step() and not await second.step()
        await first.resign()
        assert await second.step() is True
        assert await first.step() is False
    finally:
        await first.resign()
        await second.resign()


@async_test
async def test_a_standby_leads_once_the_leader_process_is_killed(
    store: Store, tmp_path: Path, holder: Callable[[], subprocess.Popen]
) -> None:
    leader = holder()
    standby = Elector(lock_factory(store, tmp_path)())
    try:
        assert await standby.step() is False
        os.kill(leader.pid, signal.SIGKILL)
        leader.wait()
        await wait_until(
            standby.step, deadline_s=TAKE_OVER_BOUND_S, interval_s=0.1, what="the take-over"
        )
    finally:
        await standby.resign()


@async_test
async def test_a_leader_whose_lock_another_took_stands_by(store: Store, tmp_path: Path) -> None:
    new_lock = lock_factory(store, tmp_path)
    deposed: list[bool] = []

    async def on_deposed() -> None:
        deposed.append(True)

    first, second = Elector(new_lock(), on_deposed=on_deposed), Elector(new_lock())
    try:
        assert await first.step()
        take_away(store, first.lock)
        await wait_until(second.step, deadline_s=TAKE_OVER_BOUND_S, what="the other to lead")
        assert await first.step() is False
        assert deposed == [True]
    finally:
        await first.resign()
        await second.resign()


@async_test
async def test_a_leader_retakes_a_lock_nobody_took(store: Store, tmp_path: Path) -> None:
    """A lost connection (PostgreSQL) or a removed lock file is no reason to step down while
    no other process leads."""
    leader = Elector(lock_factory(store, tmp_path)())
    try:
        assert await leader.step()
        take_away(store, leader.lock)
        assert await leader.step() is True
        other = Elector(lock_factory(store, tmp_path)())
        assert await other.step() is False
        await other.resign()
    finally:
        await leader.resign()


def test_exclusive_waits_for_the_holder(store: Store, tmp_path: Path) -> None:
    new_lock = lock_factory(store, tmp_path, "bootstrap")
    events: list[str] = []
    first = new_lock()
    first.acquire()
    waiter_entered = threading.Event()

    def second() -> None:
        with exclusive(new_lock()):
            events.append("second entered")
            waiter_entered.set()

    thread = threading.Thread(target=second)
    thread.start()
    events.append("first releases")
    first.release()
    thread.join(30)
    assert waiter_entered.is_set()
    assert events == ["first releases", "second entered"]


# ----- the supervisor --------------------------------------------------------------------------


def supervisor_settings(store: Store, data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir, database_url=store.url, default_model_id="", leader_retry_s=0.1
    )


def desired_revision(store: Store) -> str:
    with store.session_scope() as session:
        add_embedding_model(session, "tiny")
        revision = add_live_revision(session, embedding_model_id="tiny")
        revision.desired_replicas = 1
        return revision.id


@async_test
async def test_only_the_leader_runs_replicas_and_a_standby_takes_over(
    store: Store, tmp_path: Path
) -> None:
    revision_id = desired_revision(store)
    settings = supervisor_settings(store, tmp_path)
    runtimes = [FakeRuntime(lambda _: HashEngine()) for _ in range(2)]
    first, second = (
        Supervisor(settings, store, RuntimeTargets("local", runtime, {}), Signals(), "local")
        for runtime in runtimes
    )
    try:
        assert await first.elector.step() and not await second.elector.step()
        await wait_until(lambda: bool(runtimes[0].ready_replicas(revision_id)), what="replica")
        assert runtimes[1].revisions() == []

        take_away(store, first.elector.lock)  # the leader's lock goes to the standby
        await wait_until(second.elector.step, deadline_s=TAKE_OVER_BOUND_S, what="take-over")
        assert await first.elector.step() is False
        assert runtimes[0].revisions() == []  # local replicas stop with the lead
        await wait_until(lambda: bool(runtimes[1].ready_replicas(revision_id)), what="restart")

        def reported_by_the_new_leader() -> bool:
            with store.session_scope() as session:
                revision = session.get(Revision, revision_id)
                assert revision is not None
                ports = {r.port for r in runtimes[1].ready_replicas(revision_id)}
                return (
                    revision.ready_replicas == 1 and {r["port"] for r in revision.replicas} == ports
                )

        await wait_until(reported_by_the_new_leader, what="the new leader's report")
    finally:
        for supervisor in (first, second):
            await supervisor.stop()
        for runtime in runtimes:
            await runtime.close()


# ----- the first start -------------------------------------------------------------------------


def test_servers_that_start_together_bootstrap_once(
    store: Store, tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path
) -> None:
    """Each server has its own data dir on PostgreSQL and shares one on SQLite."""
    data_dirs = [tmp_path / "a", tmp_path / "b"] if store.is_postgres else [tmp_path, tmp_path]
    settings = [
        Settings(
            data_dir=data_dir,
            database_url=store.url,
            default_model_id="m",
            default_model_source=str(tiny_model_dir),
        )
        for data_dir in data_dirs
    ]
    for data_dir in set(data_dirs):
        data_dir.mkdir(exist_ok=True)
        (data_dir / "onnx").symlink_to(onnx_cache_dir)  # the load check's export, made once
    task_ids: list[str | None] = []
    barrier = threading.Barrier(2)

    def first_start(server: Settings) -> None:
        barrier.wait()
        ensure_admin_token(server, store)
        task_ids.append(register_and_deploy_default(server, store))

    threads = [threading.Thread(target=first_start, args=(s,)) for s in settings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with store.session_scope() as session:
        admins = [t for t in auth_service.get_active(session) if auth_service.is_admin(t)]
        models = session.scalar(select(func.count()).select_from(EmbeddingModel))
        tasks = session.scalars(select(Task.id)).all()
    assert len(admins) == 1
    assert models == 1
    assert len(tasks) == 1
    assert task_ids == [tasks[0], tasks[0]]  # both servers' /readyz wait for that one deploy
    assert sum((d / "admin.token").exists() for d in set(data_dirs)) == 1


# ----- two real servers on PostgreSQL ------------------------------------------------------------


class Load:
    """Clients embedding through one endpoint until stopped; every answer is kept."""

    def __init__(self, base: str, token: str, clients: int = 4) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {token}"}
        self.answers: list[tuple[float, float, int]] = []  # (sent, answered, status or -1)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    status = client.post(
                        f"{self.base}/v1/embeddings",
                        json={"model": "m", "input": ["hello world", "a leader died"]},
                        headers=self.headers,
                    ).status_code
                except httpx.HTTPError:
                    status = -1
                self.answers.append((sent, time.monotonic(), status))
                if status != 200:
                    time.sleep(0.05)

    def ok_after(self, moment: float) -> int:
        return sum(1 for sent, _, status in list(self.answers) if sent > moment and status == 200)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


def leads(processes: Processes, name: str, target: str) -> bool:
    return f"leading supervisor-{target}" in processes.log(name)


def children(pid: int) -> set[int]:
    """Direct children of a process, from /proc (a local supervisor's replicas)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def reported_endpoints(store: Store, served_name: str) -> set[tuple[str, int]]:
    """Where the store says the live revision's ready replicas listen."""
    with store.session_scope() as session:
        live = session.get(LiveRevision, served_name)
        revision = session.get(Revision, live.revision_id) if live else None
        replicas = revision.replicas if revision else []
    return {(r["host"], r["port"]) for r in replicas if r["state"] == "ready"}


def test_a_standby_server_takes_over_when_the_leader_is_killed(
    tmp_path: Path,
    pg_database_url: str,
    runtime_env: dict[str, str],  # noqa: F811 (the fixture imported above)
    onnx_cache_dir: Path,
    tiny_model_dir: Path,
) -> None:
    """Local: the standby starts the replicas again (503s in the gap, nothing else fails).
    Ray: it re-adopts the Serve application, which keeps running: no request fails."""
    target = runtime_env["GREENROOM_RUNTIME"]
    store = Store(pg_database_url)
    truncate(store)
    processes = Processes(tmp_path, pg_database_url, runtime_env)
    del processes.env["GREENROOM_ADMIN_TOKEN"]  # the first start creates one, once
    processes.env.update(
        GREENROOM_DEFAULT_MODEL_ID="m",
        GREENROOM_DEFAULT_MODEL_SOURCE=str(tiny_model_dir),
        GREENROOM_WORKER_ENABLED="true",
    )
    try:
        ports = {name: free_port() for name in ("api-1", "api-2")}
        for name in ports:
            data_dir_with_cache(tmp_path / name, onnx_cache_dir)
        servers = {
            name: processes.start(
                name,
                ["serve", "--port", str(port), "--data-dir", str(tmp_path / name)],
            )
            for name, port in ports.items()
        }
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        for name in servers:
            wait_ready(urls[name], servers[name])
        leaders = [name for name in servers if leads(processes, name, target)]
        assert len(leaders) == 1, leaders
        leader = leaders[0]
        (standby,) = set(servers) - {leader}
        if target == "local":
            assert children(servers[leader].pid) and not children(servers[standby].pid)

        # the bootstrap ran once: one admin token (its file in one data dir), one deploy
        with store.session_scope() as session:
            admins = [t for t in auth_service.get_active(session) if auth_service.is_admin(t)]
            deploys = session.scalars(select(Task).where(Task.embedding_model_id == "m")).all()
        assert len(admins) == 1
        assert len(deploys) == 1 and deploys[0].status == "done", deploys
        token_files = [tmp_path / n / "admin.token" for n in servers]
        (token_file,) = [f for f in token_files if f.exists()]
        token = token_file.read_text().strip()
        before = reported_endpoints(store, "m")
        assert before

        load = Load(urls[standby], token)
        try:
            wait_until_sync(lambda: load.ok_after(0) >= 20, what="traffic through the standby")
            killed_at = time.monotonic()
            os.kill(servers[leader].pid, signal.SIGKILL)
            servers[leader].wait(30)
            wait_until_sync(
                lambda: leads(processes, standby, target),
                deadline_s=30,
                what="the standby to lead",
            )
            took_over_at = time.monotonic()
            wait_until_sync(
                lambda: load.ok_after(took_over_at) >= 20,
                deadline_s=120,
                what="requests to resume after the take-over",
            )
        finally:
            load.stop()
        statuses = {status for _, _, status in load.answers}
        if target == "local":  # restarted by the new leader, its own children now
            assert statuses <= {200, 503}, sorted(statuses)
            assert children(servers[standby].pid)
            assert reported_endpoints(store, "m").isdisjoint(before)
        else:  # re-adopted, not redeployed: the same replicas, no request failed
            assert statuses == {200}, sorted(statuses)
            assert reported_endpoints(store, "m") == before
        report_gap(load, killed_at)
    finally:
        processes.stop_all()
        store.dispose()


def report_gap(load: Load, killed_at: float) -> None:
    """Print the 503s, the longest stretch without a successful answer and the slowest one."""
    answers = list(load.answers)
    unavailable = sum(1 for _, _, status in answers if status == 503)
    done = sorted(answered for _, answered, status in answers if status == 200)
    gap, gap_end = max((b - a, b) for a, b in itertools.pairwise(done))
    slowest = max(answered - sent for sent, answered, _ in answers)
    print(
        f"\nleader SIGKILL under load: {len(answers)} requests, {unavailable} got 503, no other "
        f"failure; longest stretch without a 200: {gap:.2f} s (ending {gap_end - killed_at:.2f} s "
        f"after the kill); slowest request {slowest:.2f} s"
    )
