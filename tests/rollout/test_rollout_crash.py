"""A `greenroom worker` killed (SIGKILL) at every step boundary of a deploy, of a delete, and at
the boundaries of an embedding migration's promotion, finish and abort.

One `greenroom serve` (worker disabled, local runtime, the tiny models) serves every case.
In each case a worker started with `GREENROOM_TEST_CRASH_AT="<kind>:<step>"` kills itself right
after that step is recorded finished; a second worker takes the expired lease over and resumes
at the next step. Traffic flows to the served names the whole time. Each case then checks:

- the dead worker stopped exactly there (that step and those before it finished, none after
  it started), and the task was claimed twice: once by it, once by the take-over;
- the task is `done`, every step `done` or `skipped` (resuming is the designed outcome at a
  boundary: every step is idempotent, none is left half-done);
- no task is `pending` or `processing`;
- no replica is orphaned: the replica processes of the `serve` process (its process table
  entries and their listening ports) are exactly the ready replicas the store wants, and a
  revision the store no longer wants reports none;
- not one embedding request failed (for the served name being deleted, 404 `model_not_found`
  is the designed answer once it is unrouted).

Deploys alternate between two configs of the same tiny model, so every deploy is a real change
(a new revision, a green beside the blue). Each delete case deletes a served name of its own,
deployed when the module starts. Each promote case stages a new revision of one served name
(a staged deploy, run by the worker that will die) and promotes it raw; a finish case promotes
it adapted first (sample texts, a fitted adapter) and an abort case aborts a staged revision or
an adapted promotion (the old model brought back as a new revision). On PostgreSQL
(`GREENROOM_TEST_DATABASE_URL`) the processes share the session's test database; otherwise a
SQLite file. Workers are started ahead and run
on cue (`tests/crash/worker_on_cue.py`), so a case does not wait for their imports. `pytest -s`
prints each case's time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import free_port, stop_process, wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN
from sqlalchemy import select

from greenroom.migrations import service as migrations_service
from greenroom.rollout.plan import (
    ABORT_ADAPTED_PLAN,
    ABORT_STAGED_PLAN,
    DELETE_STEPS,
    DEPLOY_STEPS,
    FINISH_PLAN,
    PROMOTE_STEPS,
    MigrationStep,
    RolloutStep,
)
from greenroom.store.db import Base, Store
from greenroom.tasks.models import Task
from greenroom.workloads.models import LiveRevision, Revision

pytestmark = pytest.mark.crash

TASKS = "/internal/inference-deployment"
FINAL = {"done", "failed", "canceled", "refused"}
FINISHED_STEP = {"done", "skipped"}
LEASE_S = "3"  # a killed worker's lease runs out fast, so the next one takes over soon
DEADLINE_S = 120.0
DEPLOYED = "crash"  # the served name every deploy case rolls out
STEADY = "steady"  # a served name no case touches: its traffic must never notice a crash
MIGRATED = "migr"  # the served name every promote case stages and promotes
CONFIGS = ({"max_batch_size": 8}, {"max_batch_size": 16})
WORKER_ON_CUE = Path(__file__).resolve().parents[1] / "crash" / "worker_on_cue.py"
DEPLOY_BOUNDARIES = [str(step) for step in DEPLOY_STEPS]
DELETE_BOUNDARIES = [str(step) for step in DELETE_STEPS]
# After `finish` a take-over only ends the task, as after a deploy's `finish` (cased above); a
# promote case costs a staged deploy besides, so that boundary is left to the deploy's.
# The boundaries where a promotion's state is between two worlds (replicas restarted at normal
# priority, the live pointer moved); the others resume through the deploy cases' code paths,
# and each promote case costs a staged deploy plus a restart (about 25 s): the suite stays short.
PROMOTE_BOUNDARIES = [str(step) for step in PROMOTE_STEPS if step in {"start_live", "switch"}]
# A finish and an abort each at the step that moves the served name between two worlds (raw
# vectors again; the staged revision withdrawn; the old model live again): their other steps
# only confirm or end, as a deploy's `finish`. Each costs a staged deploy (and the adapted ones a
# fit and an adapted promotion) besides.
FINISH_BOUNDARY = MigrationStep.SWITCH_SPACE
ABORT_STAGED_BOUNDARY = MigrationStep.WITHDRAW_STAGED
ABORT_ADAPTED_BOUNDARY = RolloutStep.SWITCH
assert FINISH_BOUNDARY in {step.name for step in FINISH_PLAN}
assert ABORT_STAGED_BOUNDARY in {step.name for step in ABORT_STAGED_PLAN}
assert ABORT_ADAPTED_BOUNDARY in {step.name for step in ABORT_ADAPTED_PLAN}
MIGRATION = f"/v1/migrations/default/{MIGRATED}"
CASE_TIMES: dict[str, float] = {}


def deleted_name(step: str) -> str:
    return f"del-{step.replace('_', '-')}"


# ----- the processes ----------------------------------------------------------------------------


class Cluster:
    """One `greenroom serve` and the workers the cases start; every process is stopped at the
    end, whatever happened."""

    def __init__(self, root: Path, database_url: str, onnx_cache_dir: Path) -> None:
        self.root = root
        self.database_url = database_url
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "GREENROOM_DATABASE_URL": database_url,
            "GREENROOM_ADMIN_TOKEN": ADMIN_TOKEN,
            "GREENROOM_DEFAULT_MODEL_ID": "",
            "GREENROOM_WORKER_ENABLED": "false",
            "GREENROOM_RUNTIME": "local",
            "GREENROOM_LEASE_S": LEASE_S,
            "GREENROOM_DRAIN_GRACE_S": "2",
        }
        self.env.pop("GREENROOM_TEST_CRASH_AT", None)
        self.started: list[subprocess.Popen] = []
        self.workers: dict[str, subprocess.Popen] = {}
        self.store = Store(database_url)
        self.onnx_cache_dir = onnx_cache_dir
        self.deploys = 0
        self.serve: subprocess.Popen | None = None
        self.base = ""

    def start(
        self, name: str, argv: list[str], stdin: int | None = None, **env: str
    ) -> subprocess.Popen:
        with (self.root / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                argv, env={**self.env, **env}, stdin=stdin, stdout=subprocess.DEVNULL, stderr=log
            )
        self.started.append(process)
        return process

    def start_serve(self) -> None:
        data_dir = self.root / "serve"
        data_dir.mkdir()
        (data_dir / "onnx").symlink_to(self.onnx_cache_dir)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.serve = self.start(
            "serve",
            [sys.executable, "-m", "greenroom.cli", "serve", "--port", str(port),
             "--data-dir", str(data_dir), "--log-level", "warning"],
        )  # fmt: skip
        wait_until_sync(self._ready, deadline_s=DEADLINE_S, interval_s=0.1, what="serve ready")

    def _ready(self) -> bool:
        assert self.serve is not None and self.serve.poll() is None, self.log("serve")[-3000:]
        try:
            return httpx.get(self.base + "/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def spawn_worker(self, name: str, crash_at: str | None = None) -> subprocess.Popen:
        """A `greenroom worker` that imports its modules now and runs on `cue_worker`; with
        `crash_at` it SIGKILLs itself at that boundary."""
        argv = [sys.executable, str(WORKER_ON_CUE), "worker", "--data-dir", str(self.root / name)]
        env = {"GREENROOM_TEST_CRASH_AT": crash_at} if crash_at else {}
        process = self.start(name, argv, stdin=subprocess.PIPE, **env)
        self.workers[name] = process
        return process

    def cue_worker(self, name: str) -> None:
        stdin = self.workers[name].stdin
        assert stdin is not None
        stdin.write(b"run\n")
        stdin.close()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def next_config(self) -> dict[str, Any]:
        """The other config than the last deploy's: every deploy is a real change."""
        self.deploys += 1
        return dict(CONFIGS[self.deploys % 2])

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop_process(process)
        self.store.dispose()


def call(method: str, url: str, **kwargs: Any) -> Any:
    response = httpx.request(method, url, timeout=60, headers=ADMIN_HEADERS, **kwargs)
    assert response.status_code < 400, response.text
    return response.json() if response.content else None


def get_task(cluster: Cluster, kind: str, task_id: str) -> dict[str, Any]:
    return call("GET", f"{cluster.base}{TASKS}/{kind}/{task_id}")


def wait_task(cluster: Cluster, kind: str, task_id: str, worker: str) -> dict[str, Any]:
    """The task once it ended; fails at once (with its log) if the worker that runs it died."""
    task: dict[str, Any] = {}
    process = cluster.workers[worker]

    def final() -> bool:
        task.update(get_task(cluster, kind, task_id))
        if task["status"] in FINAL:
            return True
        assert process.poll() is None, f"{worker} exited: {cluster.log(worker)[-3000:]}"
        return False

    wait_until_sync(final, deadline_s=DEADLINE_S, interval_s=0.1, what=f"task {task_id} to end")
    return task


def truncate(store: Store) -> None:
    with store.session_scope() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())


@pytest.fixture(scope="module")
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's PostgreSQL test database when one is configured, else a SQLite file."""
    if os.environ.get("GREENROOM_TEST_DATABASE_URL"):
        url: str = request.getfixturevalue("pg_database_url")
        store = Store(url)
        truncate(store)
        store.dispose()
        return url
    return f"sqlite:///{tmp_path_factory.mktemp('crash-store') / 'greenroom.db'}"


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    onnx_cache_dir: Path,
    tiny_model_dir: Path,
) -> Iterator[Cluster]:
    """`serve` up, every served name registered and deployed once (by a worker that does not
    crash), before the first case."""
    running = Cluster(tmp_path_factory.mktemp("crash"), database_url, onnx_cache_dir)
    try:
        running.start_serve()
        setup = running.spawn_worker("worker-setup")
        running.cue_worker("worker-setup")
        names = [DEPLOYED, STEADY, MIGRATED, *(deleted_name(step) for step in DELETE_BOUNDARIES)]
        for name in names:
            call(
                "POST",
                f"{running.base}/v1/embedding-models",
                json={"id": name, "source": str(tiny_model_dir)},
            )
        task_ids = [
            call("POST", f"{running.base}{TASKS}/deploy", json={"embedding_model_id": name})["id"]
            for name in names
        ]
        for task_id in task_ids:
            assert wait_task(running, "deploy", task_id, "worker-setup")["status"] == "done"
        stop_process(setup)
        yield running
        if CASE_TIMES:
            shown = "\n".join(f"  {case:28} {s:6.1f} s" for case, s in CASE_TIMES.items())
            print(f"\ncrash matrix ({sum(CASE_TIMES.values()):.0f} s in all):\n{shown}")
        truncate(running.store)
    finally:
        running.stop_all()


# ----- traffic ----------------------------------------------------------------------------------


@dataclass
class Traffic:
    """One client thread per served name, sending embeddings until `stop()`. A request fails
    unless it gets 200, or 404 `model_not_found` for a name in `may_vanish`."""

    base: str
    names: list[str]
    may_vanish: frozenset[str] = frozenset()
    sent: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        for name in self.names:
            self.sent[name] = 0
            thread = threading.Thread(target=self._send, args=(name,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _send(self, name: str) -> None:
        body = {"model": name, "input": ["hello world", "the quick brown fox"]}
        with httpx.Client(base_url=self.base, timeout=30, headers=ADMIN_HEADERS) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/v1/embeddings", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{name}: {exc!r}")
                    continue
                self.sent[name] += 1
                if not self._expected(name, response):
                    self.failures.append(f"{name}: {response.status_code} {response.text[:300]}")
                self._stop.wait(0.02)

    def _expected(self, name: str, response: httpx.Response) -> bool:
        if response.status_code == 200:
            return True
        return (
            name in self.may_vanish
            and response.status_code == 404
            and response.json()["error"]["code"] == "model_not_found"
        )


# ----- what the store wants and what runs -------------------------------------------------------


def replica_processes(parent_pid: int) -> dict[int, set[int]]:
    """Every replica process `parent_pid` started (from the process table) → the TCP ports it
    listens on. A zombie has no command line and is not counted: it is gone; nor is the spare
    process while it waits (`greenroom.runtime.spare`)."""
    inode_ports = listening_ports_by_inode()
    found: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "greenroom.runtime.replica" not in argv or not _child_of(argv, parent_pid):
                continue
            inodes = {
                os.readlink(fd)[len("socket:[") : -1]
                for fd in (entry / "fd").iterdir()
                if os.readlink(fd).startswith("socket:[")
            }
        except OSError:  # it ended while we looked
            continue
        ports = {inode_ports[i] for i in inodes if i in inode_ports}
        if "--spare" in argv and not ports:
            continue  # the spare process, not (yet) a replica
        found[int(entry.name)] = ports
    return found


def _child_of(argv: list[str], parent_pid: int) -> bool:
    return "--parent-pid" in argv and argv[argv.index("--parent-pid") + 1] == str(parent_pid)


def listening_ports_by_inode() -> dict[str, int]:
    ports: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return ports


def orphan_problems(cluster: Cluster) -> list[str]:
    """Why what runs differs from what the store wants; empty when they agree."""
    assert cluster.serve is not None
    with cluster.store.session_scope() as session:
        revisions = [
            (r.id, r.desired_replicas, list(r.replicas or []))
            for r in session.scalars(select(Revision))
        ]
    wanted_count = sum(desired for _, desired, _ in revisions)
    wanted_ports: set[int] = set()
    problems = []
    for revision_id, desired, replicas in revisions:
        ports = {r["port"] for r in replicas if r.get("port")}
        if desired > 0:
            ready = [r for r in replicas if r.get("state") == "ready" and r.get("port")]
            if len(ready) != desired:
                problems.append(f"revision {revision_id}: {len(ready)} of {desired} ready")
            wanted_ports |= ports
        elif ports:
            problems.append(f"revision {revision_id} is not wanted but reports ports {ports}")
    running = replica_processes(cluster.serve.pid)
    running_ports = set().union(*running.values()) if running else set()
    if len(running) != wanted_count:
        problems.append(f"{len(running)} replica processes run, the store wants {wanted_count}")
    if running_ports != wanted_ports:
        problems.append(f"replica processes listen on {running_ports}, wanted {wanted_ports}")
    return problems


def assert_no_orphan(cluster: Cluster) -> None:
    try:
        wait_until_sync(
            lambda: not orphan_problems(cluster),
            deadline_s=DEADLINE_S,
            interval_s=0.2,
            what="the replicas to match the store",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {orphan_problems(cluster)}") from None


def assert_no_task_unfinished(cluster: Cluster) -> None:
    with cluster.store.session_scope() as session:
        unfinished = [
            (task.id, task.kind, task.status)
            for task in session.scalars(
                select(Task).where(Task.status.in_(["pending", "processing"]))
            )
        ]
    assert unfinished == []


def claims(cluster: Cluster, task_id: str) -> int:
    with cluster.store.session_scope() as session:
        task = session.get(Task, task_id)
        assert task is not None
        return task.attempts


def live_revision(cluster: Cluster, served_name: str) -> str | None:
    with cluster.store.session_scope() as session:
        pointer = session.get(LiveRevision, served_name)
        return pointer.revision_id if pointer is not None else None


# ----- one case ---------------------------------------------------------------------------------


def crash_then_take_over(
    cluster: Cluster,
    case: str,
    kind: str,
    step: str,
    body: dict[str, Any],
    prepare: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Submit the task to a worker that dies at the boundary, check it died there, start a
    second worker and return the task as it ended. `prepare(worker)` runs first, once the
    worker that will die runs (a staged deploy for it to run before the promotion)."""
    crashing_name, taking_over_name = f"worker-{case}-crash", f"worker-{case}-takeover"
    crashing = cluster.spawn_worker(crashing_name, crash_at=f"{kind}:{step}")
    taking_over = cluster.spawn_worker(taking_over_name)
    cluster.cue_worker(crashing_name)
    if prepare is not None:
        prepare(crashing_name)
    task_id = call("POST", f"{cluster.base}{TASKS}/{kind}", json=body)["id"]
    seen: dict[str, Any] = {}

    def crashed_or_ended() -> bool:
        seen.update(get_task(cluster, kind, task_id))
        return crashing.poll() is not None or seen["status"] in FINAL

    wait_until_sync(crashed_or_ended, deadline_s=DEADLINE_S, interval_s=0.05, what="the crash")
    assert crashing.wait(30) == -signal.SIGKILL, (seen, cluster.log(crashing_name)[-3000:])
    at_crash = get_task(cluster, kind, task_id)
    assert at_crash["status"] == "processing", at_crash
    assert_stopped_at_boundary(at_crash["metadata"]["steps"], step)

    cluster.cue_worker(taking_over_name)
    try:
        final = wait_task(cluster, kind, task_id, taking_over_name)
    finally:
        stop_process(taking_over)
    assert f"took over task {task_id}" in cluster.log(taking_over_name)
    assert claims(cluster, task_id) == 2  # claimed by the worker that died, taken over once
    return final


def assert_stopped_at_boundary(steps: list[dict[str, Any]], step: str) -> None:
    """The dead worker left `step` and every step before it finished, none after it started."""
    names = [s["name"] for s in steps]
    position = names.index(step)
    statuses = [s["status"] for s in steps]
    assert set(statuses[: position + 1]) <= FINISHED_STEP, steps
    assert set(statuses[position + 1 :]) <= {"pending"}, [(s["name"], s["status"]) for s in steps]


def assert_all_steps_finished(task: dict[str, Any]) -> None:
    assert task["status"] == "done", task
    statuses = {s["name"]: s["status"] for s in task["metadata"]["steps"]}
    assert set(statuses.values()) <= FINISHED_STEP, statuses


@pytest.mark.parametrize("step", DEPLOY_BOUNDARIES)
def test_a_deploy_survives_a_worker_killed_after(cluster: Cluster, step: str) -> None:
    started = time.monotonic()
    blue = live_revision(cluster, DEPLOYED)
    body = {"embedding_model_id": DEPLOYED, "config": cluster.next_config()}
    with Traffic(cluster.base, [DEPLOYED, STEADY]) as traffic:
        final = crash_then_take_over(cluster, f"deploy-{step}", "deploy", step, body)
        traffic.stop()
    assert_all_steps_finished(final)
    green = final["metadata"]["revision_id"]
    assert green != blue
    assert live_revision(cluster, DEPLOYED) == green
    assert_no_task_unfinished(cluster)
    assert_no_orphan(cluster)
    assert traffic.failures == []
    assert all(traffic.sent.values()), traffic.sent
    CASE_TIMES[f"deploy {step}"] = time.monotonic() - started


@pytest.mark.parametrize("step", DELETE_BOUNDARIES)
def test_a_delete_survives_a_worker_killed_after(cluster: Cluster, step: str) -> None:
    started = time.monotonic()
    name = deleted_name(step)
    assert live_revision(cluster, name) is not None
    with Traffic(cluster.base, [name, STEADY], may_vanish=frozenset({name})) as traffic:
        final = crash_then_take_over(
            cluster, f"delete-{step}", "delete", step, {"embedding_model_id": name}
        )
        traffic.stop()
    assert_all_steps_finished(final)
    assert live_revision(cluster, name) is None
    response = httpx.post(
        f"{cluster.base}/v1/embeddings", json={"model": name, "input": "x"}, headers=ADMIN_HEADERS
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert_no_task_unfinished(cluster)
    assert_no_orphan(cluster)
    assert traffic.failures == []
    assert all(traffic.sent.values()), traffic.sent
    CASE_TIMES[f"delete {step}"] = time.monotonic() - started


def stage_next_config(cluster: Cluster, worker: str) -> str:
    """A staged deploy of MIGRATED's next config, run to its end by `worker`: the staged
    revision."""
    body = {"embedding_model_id": MIGRATED, "config": cluster.next_config(), "strategy": "staged"}
    task_id = call("POST", f"{cluster.base}{TASKS}/deploy", json=body)["id"]
    task = wait_task(cluster, "deploy", task_id, worker)
    assert (task["status"], task["metadata"]["result"]) == ("done", "staged"), task
    return task["metadata"]["revision_id"]


def stage_of(cluster: Cluster, served_name: str) -> str:
    with cluster.store.session_scope() as session:
        return str(migrations_service.stage_of(session, served_name=served_name))


@pytest.mark.parametrize("step", PROMOTE_BOUNDARIES)
def test_a_promotion_survives_a_worker_killed_after(cluster: Cluster, step: str) -> None:
    started = time.monotonic()
    blue = live_revision(cluster, MIGRATED)
    staged: list[str] = []
    body = {"embedding_model_id": MIGRATED, "mode": "raw"}
    with Traffic(cluster.base, [MIGRATED, STEADY]) as traffic:
        final = crash_then_take_over(
            cluster,
            f"promote-{step}",
            "promote",
            step,
            body,
            prepare=lambda worker: staged.append(stage_next_config(cluster, worker)),
        )
        traffic.stop()
    assert_all_steps_finished(final)
    assert final["metadata"]["result"] == "promoted"
    assert final["metadata"]["revision_id"] == staged[0] != blue
    assert live_revision(cluster, MIGRATED) == staged[0]
    assert stage_of(cluster, MIGRATED) == "none"
    assert_no_task_unfinished(cluster)
    assert_no_orphan(cluster)
    assert traffic.failures == []
    assert all(traffic.sent.values()), traffic.sent
    CASE_TIMES[f"promote {step}"] = time.monotonic() - started


def promote_adapted(cluster: Cluster, worker: str) -> str:
    """MIGRATED's next config staged, an adapter fitted (the same model: a near-identity map)
    and the staged revision promoted adapted, by `worker`: the promoted revision."""
    staged = stage_next_config(cluster, worker)
    call("POST", f"{cluster.base}{MIGRATION}/samples", json={"texts": sample_texts(240)})
    evaluation = call("POST", f"{cluster.base}{MIGRATION}/adapter")
    assert evaluation["mean_cosine"] > 0.99, evaluation  # the same model: a near-identity map
    body = {"embedding_model_id": MIGRATED, "mode": "adapted"}
    task_id = call("POST", f"{cluster.base}{TASKS}/promote", json=body)["id"]
    task = wait_task(cluster, "promote", task_id, worker)
    assert task["status"] == "done", task
    assert stage_of(cluster, MIGRATED) == "adapted"
    return staged


def sample_texts(count: int) -> list[str]:
    words = "the quick brown fox jumps over a lazy dog while rain falls on warm evenings"
    words = words.split()
    return [
        " ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 9)) + f" {i}"
        for i in range(count)
    ]


def migration_case(
    cluster: Cluster,
    case: str,
    kind: str,
    step: str,
    prepare: Callable[[str], str],
) -> tuple[dict[str, Any], str, str | None]:
    """One finish or abort case of MIGRATED under traffic: (the ended task, the revision
    `prepare` staged or promoted, the live revision before it)."""
    blue = live_revision(cluster, MIGRATED)
    prepared: list[str] = []
    with Traffic(cluster.base, [MIGRATED, STEADY]) as traffic:
        final = crash_then_take_over(
            cluster,
            case,
            kind,
            step,
            {"embedding_model_id": MIGRATED},
            prepare=lambda worker: prepared.append(prepare(worker)),
        )
        traffic.stop()
    assert_all_steps_finished(final)
    assert stage_of(cluster, MIGRATED) == "none"
    assert_no_task_unfinished(cluster)
    assert_no_orphan(cluster)
    assert traffic.failures == []
    assert all(traffic.sent.values()), traffic.sent
    return final, prepared[0], blue


def test_a_finish_survives_a_worker_killed_after_the_space_switch(cluster: Cluster) -> None:
    started = time.monotonic()
    final, promoted, _ = migration_case(
        cluster, "finish", "finish", FINISH_BOUNDARY, lambda w: promote_adapted(cluster, w)
    )
    assert final["metadata"]["result"] == "finished"
    assert {s["name"]: s["status"] for s in final["metadata"]["steps"]}["retire_adapter"] == "done"
    assert live_revision(cluster, MIGRATED) == promoted
    CASE_TIMES[f"finish {FINISH_BOUNDARY}"] = time.monotonic() - started


def test_an_abort_of_a_staged_revision_survives_a_worker_killed_after_the_withdrawal(
    cluster: Cluster,
) -> None:
    started = time.monotonic()
    final, staged, blue = migration_case(
        cluster,
        "abort-staged",
        "abort",
        ABORT_STAGED_BOUNDARY,
        lambda w: stage_next_config(cluster, w),
    )
    assert final["metadata"]["result"] == "aborted"
    assert live_revision(cluster, MIGRATED) == blue != staged
    with cluster.store.session_scope() as session:
        withdrawn = session.get(Revision, staged)
        assert withdrawn is not None and withdrawn.desired_replicas == 0
    CASE_TIMES[f"abort {ABORT_STAGED_BOUNDARY}"] = time.monotonic() - started


def test_an_abort_of_an_adapted_promotion_survives_a_worker_killed_after_the_switch_back(
    cluster: Cluster,
) -> None:
    started = time.monotonic()
    final, promoted, blue = migration_case(
        cluster,
        "abort-adapted",
        "abort",
        ABORT_ADAPTED_BOUNDARY,
        lambda w: promote_adapted(cluster, w),
    )
    assert final["metadata"]["result"] == "aborted"
    back = live_revision(cluster, MIGRATED)
    assert back == final["metadata"]["revision_id"]
    assert back not in {promoted, blue}  # the old model again, as a new revision
    CASE_TIMES[f"abort (adapted) {ABORT_ADAPTED_BOUNDARY}"] = time.monotonic() - started
