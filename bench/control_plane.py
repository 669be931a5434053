"""The control plane at scale: read latency and claim rate with 1k, 10k and 100k tasks.

Fills a store (SQLite in a temporary data dir, then PostgreSQL in a database of its own on
127.0.0.1:5432, created and dropped here) with 1,000 registered models, their deployment configs,
three deployment versions (and revisions) for 200 of them, and the tasks of each size, written
through SQLAlchemy Core in bulk (rows shaped like the task service's). At each size it starts a
real `greenroom serve` on the store (worker off, no default model, no supervisor), and one
separate load-generator process at concurrency 16 measures p50/p99 and requests/s of

    GET /internal/inference-deployment/deploy/{id}           (a random deploy task)
    GET /internal/inference-deployment/deploy-status/{model} (a random model)
    GET /apis/models/v2/workspaces/default/deployments?page_size=100
    GET /api/v1/workloads/inferences/{workload_id}/revisions (a random workload)
    GET /healthz                                             (the reference: no store, no auth)

then the claim rate of 4 workers: 4 threads, each claiming through `greenroom.tasks.leases.claim`
and ending the task `done`, on a pool of 500 pending tasks (one per served name; reset to pending
afterwards, so every size claims the same pool). The tasks of a size include the pool.

Goals (issue 13, goal 6): each route's p99 at the largest size within 2 x its p99 at the smallest,
and `GET /deploy/{id}` at >= 0.5 x the requests/s of `/healthz`. The machine is shared and noisy;
the ratios are what to compare, measured in one run. The rate of a window follows the machine's
neighbours, which change within a minute, so the share of `/healthz` is judged on `--pairs`
pairs of adjacent windows (`deploy/{id}`, then `/healthz`, `--pair-duration` s each, after the
routes above): the median of the pairs' ratios. The ratio of the long windows is printed too.

    .venv/bin/python bench/control_plane.py                  # 1k, 10k, 100k; SQLite and PostgreSQL
    .venv/bin/python bench/control_plane.py --quick          # 1k and 5k, short windows: a check
    .venv/bin/python bench/control_plane.py --backends sqlite --sizes 1000,10000 --explain
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import serving  # bench/serving.py: free ports, the greenroom command, stopping a server
from sqlalchemy import Engine, create_engine, insert, select, text, update

from greenroom.deployments.models import Deployment, DeploymentConfig
from greenroom.registry.models import EmbeddingModel
from greenroom.store.db import Store, make_engine, utcnow
from greenroom.store.migrations import upgrade
from greenroom.tasks import leases
from greenroom.tasks.models import Task
from greenroom.tasks.states import TaskStatus
from greenroom.workloads.models import LiveRevision, Revision

HOST = "127.0.0.1"
TOKEN = "bench-control-plane-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "greenroom_bench_control_plane"

MODELS = 1000
DEPLOYED_MODELS = 200  # models with deployment versions and revisions
VERSIONS = 3  # deployment versions (= revisions) of each deployed model
PENDING_POOL = 500  # pending tasks, one per served name, that the claim phase takes
CLAIM_WORKERS = 4
CONCURRENCY = 16
CHUNK = 5000
READY_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0
ROUTES = ("deploy", "deploy-status", "deployments", "revisions", "healthz")
GOAL_P99_RATIO = 2.0
GOAL_HEALTHZ_SHARE = 0.5
MODEL_SOURCE = "sentence-transformers/all-MiniLM-L6-v2"
CONTENT_HASH = "5f" * 32


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def model_id(index: int) -> str:
    return f"bench-model-{index:04d}"


# ----- filling the store -------------------------------------------------------------------------


@dataclass
class Fill:
    """What the store holds, for the load generator to pick from."""

    deploy_task_ids: list[str] = field(default_factory=list)
    deployed_names: set[str] = field(default_factory=set)  # names with a deploy task
    workload_ids: list[str] = field(default_factory=list)
    tasks: int = 0
    start: datetime = field(default_factory=lambda: utcnow() - timedelta(days=30))


def fill_fixed(engine: Engine, fill: Fill) -> None:
    """Models, their configs, deployment versions, revisions and live pointers."""
    now = utcnow()
    models, configs, deployments, revisions, live = [], [], [], [], []
    for index in range(MODELS):
        name = model_id(index)
        created = fill.start + timedelta(seconds=index)
        models.append(
            {
                "id": name,
                "source": MODEL_SOURCE,
                "description": f"bench model {index}",
                "path": f"/var/lib/greenroom/models/{name}",
                "content_hash": CONTENT_HASH,
                "dimension": 384,
                "max_seq_length": 256,
                "pooling": "mean",
                "normalize": True,
                "allow_dimensions": False,
                "created_at": created,
                "updated_at": created,
            }
        )
        configs.append(
            {
                "id": str(uuid.uuid4()),
                "workspace": "default",
                "name": name,
                "entity_version": 1,
                "project": None,
                "description": None,
                "engine": "onnx",
                "model_name": name,
                "model_revision": CONTENT_HASH,
                "executor_config": {"replicas": 1, "max_batch_size": 32, "threads": 2},
                "created_at": created,
                "updated_at": created,
            }
        )
        if index >= DEPLOYED_MODELS:
            continue
        deployment_id = str(uuid.uuid4())
        fill.workload_ids.append(deployment_id)
        for version in range(1, VERSIONS + 1):
            revision_id = str(uuid.uuid4())
            latest = version == VERSIONS
            at = created + timedelta(hours=version)
            history = [
                {"timestamp": at.isoformat(), "status": "CREATED", "status_message": None},
                {"timestamp": at.isoformat(), "status": "READY", "status_message": None},
            ]
            deployments.append(
                {
                    "id": deployment_id,
                    "revision_id": revision_id,
                    "workspace": "default",
                    "name": name,
                    "entity_version": version,
                    "project": None,
                    "config": name,
                    "config_version": 1,
                    "status": "READY" if latest else "DELETED",
                    "status_message": None,
                    "status_history": history,
                    "model_provider_id": None,
                    "auth_context": {"principal_id": "admin", "principal_groups": ["admin"]},
                    "created_at": at,
                    "updated_at": at,
                }
            )
            revisions.append(
                {
                    "id": revision_id,
                    "deployment_id": deployment_id,
                    "served_name": name,
                    "embedding_model_id": name,
                    "source": MODEL_SOURCE,
                    "model_path": f"/var/lib/greenroom/models/{name}",
                    "content_hash": CONTENT_HASH,
                    "engine": "onnx",
                    "config": {"replicas": 1, "max_batch_size": 32, "threads": 2},
                    "runtime": "local",
                    "priority": "normal",
                    "phase": "Running" if latest else "Stopped",
                    "phase_message": None,
                    "phase_updated_at": at,
                    "desired_replicas": 0,  # no replica is started: the bench reads only
                    "ready_replicas": 0,
                    "replicas": [],
                    "reported_at": at,
                    "created_at": at,
                    "deleted_at": None if latest else at + timedelta(minutes=30),
                    "replica_secret": "0" * 64,
                }
            )
            if latest:
                live.append(
                    {
                        "served_name": name,
                        "revision_id": revision_id,
                        "previous_revision_id": None,
                        "deployment_id": deployment_id,
                        "updated_at": now,
                    }
                )
    with engine.begin() as connection:
        for model, rows in (
            (EmbeddingModel, models),
            (DeploymentConfig, configs),
            (Deployment, deployments),
            (Revision, revisions),
            (LiveRevision, live),
        ):
            connection.execute(insert(model.__table__), rows)


def task_row(task_id: str, kind: str, name: str, status: str, created: datetime) -> dict[str, Any]:
    finished = created + timedelta(seconds=20)
    steps = [
        {
            "name": step,
            "status": "done" if status != TaskStatus.PENDING else "pending",
            "started_at": created.isoformat() if status != TaskStatus.PENDING else None,
            "finished_at": finished.isoformat() if status != TaskStatus.PENDING else None,
            "duration_ms": 4000 if status != TaskStatus.PENDING else None,
            "message": None,
        }
        for step in ("snapshot", "start_green", "probe", "switch", "retire_blue")
    ]
    metadata = {
        "deployment_target": "local",
        "initiated_by": "admin",
        "workspace": "default",
        "config": name,
        "config_version": 1,
        "strategy": "green",
        "steps": steps,
    }
    return {
        "id": task_id,
        "kind": kind,
        "embedding_model_id": name,
        "status": status,
        "detail": "replica failed its probe" if status == TaskStatus.FAILED else None,
        "request": {"embedding_model_id": name, "config_overrides": {}},
        "metadata": metadata,
        "lease_owner": None,
        "lease_expires_at": None if status == TaskStatus.PENDING else finished,
        "attempts": 0 if status == TaskStatus.PENDING else 1,
        "created_at": created,
        "updated_at": finished if status != TaskStatus.PENDING else created,
    }


def fill_tasks(engine: Engine, fill: Fill, size: int, rng: random.Random) -> None:
    """Tasks up to `size` in all: the pending pool first (with the first size), then finished
    deploys and deletes spread over the models, each a second after the one before."""
    rows: list[dict[str, Any]] = []
    if fill.tasks == 0:
        for index in range(PENDING_POOL):
            created = fill.start + timedelta(seconds=index)
            rows.append(
                task_row(
                    f"deploy-{uuid.uuid4().hex}", "deploy", model_id(index), "pending", created
                )
            )
    table = Task.__table__
    with engine.begin() as connection:
        for number in range(fill.tasks + len(rows), size):
            kind = "delete" if rng.random() < 0.1 else "deploy"
            status = rng.choices(("done", "failed", "canceled"), (85, 10, 5))[0]
            task_id = f"{kind}-{uuid.uuid4().hex}"
            name = model_id(rng.randrange(MODELS))
            if kind == "deploy":
                fill.deploy_task_ids.append(task_id)
                fill.deployed_names.add(name)
            created = fill.start + timedelta(seconds=PENDING_POOL + number)
            rows.append(task_row(task_id, kind, name, status, created))
            if len(rows) >= CHUNK:
                connection.execute(insert(table), rows)
                rows = []
        if rows:
            connection.execute(insert(table), rows)
    fill.tasks = size


# ----- the stores --------------------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_store(work: Path) -> Iterator[tuple[str, Path]]:
    data_dir = work / "sqlite"
    data_dir.mkdir(mode=0o700)
    yield f"sqlite:///{data_dir / 'greenroom.db'}", data_dir


@contextlib.contextmanager
def postgres_store(work: Path) -> Iterator[tuple[str, Path]]:
    data_dir = work / "postgres"
    data_dir.mkdir(mode=0o700)
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{PG_DATABASE}", data_dir
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
        admin.dispose()


def analyze(engine: Engine) -> None:
    """PostgreSQL: what autovacuum would do after a bulk load (statistics, visibility map), done
    now rather than in the middle of a measurement (SQLite: nothing; greenroom never runs ANALYZE
    there, so neither does the bench)."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))


# ----- the server --------------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(url: str, data_dir: Path) -> Iterator[str]:
    port = serving.free_port()
    log_path = data_dir / "bench-server.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GREENROOM_DATABASE_URL": url,
        "GREENROOM_ADMIN_TOKEN": TOKEN,
        "GREENROOM_DEFAULT_MODEL_ID": "",
        "GREENROOM_WORKER_ENABLED": "false",
        "GREENROOM_SUPERVISOR": "false",
    }
    command = [*serving.greenroom_command(), "serve", "--host", HOST, "--port", str(port)]
    command += ["--data-dir", str(data_dir)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    base_url = f"http://{HOST}:{port}"
    try:
        wait_ready(process, base_url, log_path)
        yield base_url
    finally:
        serving.stop_process_group(process, STOP_GRACE_S)


def wait_ready(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if (code := process.poll()) is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"the server exited with code {code}:\n{tail}")
        try:
            # not /readyz: the filled store's live models have no files and no replicas here
            response = httpx.get(base_url + "/healthz", timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise SystemExit(f"the server was not ready in {READY_TIMEOUT_S:.0f} s: {last}")


# ----- the load generator (a process of its own) -------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    route: str
    paths: tuple[str, ...]
    duration_s: float
    warmup_s: float
    concurrency: int = CONCURRENCY


@dataclass(frozen=True)
class LoadResult:
    route: str
    count: int
    errors: int
    first_error: str
    p50_ms: float
    p99_ms: float
    rps: float


def run_load(spec: LoadSpec) -> LoadResult:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return asyncio.run(_load(spec))


async def _load(spec: LoadSpec) -> LoadResult:
    latencies: list[float] = []
    errors: list[str] = []
    counter = itertools.count()
    limits = httpx.Limits(
        max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
    )
    headers = {} if spec.route == "healthz" else AUTH
    async with httpx.AsyncClient(
        base_url=spec.base_url, limits=limits, timeout=30.0, headers=headers
    ) as client:
        warm_end = time.perf_counter() + spec.warmup_s
        deadline = warm_end + spec.duration_s

        async def worker() -> None:
            while (started := time.perf_counter()) < deadline:
                path = spec.paths[next(counter) % len(spec.paths)]
                try:
                    response = await client.get(path)
                    ok, why = (
                        response.status_code == 200,
                        f"{response.status_code} {response.text[:200]}",
                    )
                except httpx.HTTPError as exc:
                    ok, why = False, repr(exc)[:200]
                ended = time.perf_counter()
                if warm_end <= ended <= deadline:
                    latencies.append(ended - started)
                    if not ok:
                        errors.append(why)

        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    latencies.sort()

    def quantile(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0
        )

    return LoadResult(
        route=spec.route,
        count=len(latencies),
        errors=len(errors),
        first_error=errors[0] if errors else "",
        p50_ms=quantile(0.50),
        p99_ms=quantile(0.99),
        rps=len(latencies) / spec.duration_s,
    )


def route_paths(fill: Fill, rng: random.Random) -> dict[str, tuple[str, ...]]:
    deploy_ids = rng.sample(fill.deploy_task_ids, min(2000, len(fill.deploy_task_ids)))
    names = sorted(fill.deployed_names)
    models = [rng.choice(names) for _ in range(2000)]
    return {
        "deploy": tuple(f"/internal/inference-deployment/deploy/{i}" for i in deploy_ids),
        "deploy-status": tuple(f"/internal/inference-deployment/deploy-status/{m}" for m in models),
        "deployments": ("/apis/models/v2/workspaces/default/deployments?page_size=100",),
        "revisions": tuple(
            f"/api/v1/workloads/inferences/{w}/revisions" for w in fill.workload_ids
        ),
        "healthz": ("/healthz",),
    }


# ----- the claim rate ----------------------------------------------------------------------------


def claim_rate(url: str, duration_s: float) -> tuple[float, int]:
    """Tasks claimed per second by 4 worker threads, each with its own sessions, claiming and
    ending tasks `done` until the pool is empty or `duration_s` is over; the claimed tasks are
    put back to pending afterwards (bench bookkeeping, not the task service)."""
    store = Store(url)
    claimed: list[str] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + duration_s

    def worker(number: int) -> None:
        worker_id = f"bench-worker-{number}"
        while time.perf_counter() < deadline:
            with store.session_scope() as session:
                got = leases.claim(session, worker_id=worker_id, lease_s=60.0)
                task_id = got.task.id if got else None
            if task_id is None:
                return
            with store.session_scope() as session:
                leases.end(session, task_id=task_id, worker_id=worker_id, status=TaskStatus.DONE)
            with lock:
                claimed.append(task_id)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(CLAIM_WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    with store.session_scope() as session:
        for start in range(0, len(claimed), 500):
            session.execute(
                update(Task)
                .where(Task.id.in_(claimed[start : start + 500]))
                .values(status="pending", lease_owner=None, lease_expires_at=None, attempts=0)
            )
    store.dispose()
    return len(claimed) / elapsed, len(claimed)


# ----- query plans -------------------------------------------------------------------------------


def explain(engine: Engine, fill: Fill) -> None:
    """The plans of the queries behind the routes and the claim, as the database runs them."""
    from sqlalchemy.orm import Session

    from greenroom.pagination import latest_versions
    from greenroom.workloads.service import revisions_of_workload_query

    now = utcnow()
    candidate = leases._candidate(now, "bench-explain", lock=engine.dialect.name == "postgresql")
    queries = {
        "deploy/{id}": select(Task).where(Task.id == fill.deploy_task_ids[0]),
        "deploy-status": select(Task)
        .where(Task.embedding_model_id == model_id(1), Task.kind == "deploy")
        .order_by(Task.created_at.desc(), Task.id.desc())
        .limit(1),
        "deployments page": latest_versions(Deployment, workspace="default")
        .order_by(Deployment.created_at, Deployment.pk)
        .limit(100),
        "workload versions": select(Deployment)
        .where(Deployment.id == fill.workload_ids[0])
        .order_by(Deployment.entity_version),
        "workload revisions": revisions_of_workload_query(
            workload_id=fill.workload_ids[0], deleted=None
        ).order_by(Revision.created_at, Revision.id),
        "revision's deployment": select(Deployment).where(
            Deployment.revision_id == "00000000-0000-0000-0000-000000000000"
        ),
        "claim candidate": candidate,
    }
    postgres = engine.dialect.name == "postgresql"
    with Session(engine) as session:
        for label, query in queries.items():
            compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
            prefix = "EXPLAIN ANALYZE " if postgres else "EXPLAIN QUERY PLAN "
            rows = session.execute(text(prefix + str(compiled))).all()
            print(f"  -- {label}")
            for row in rows:
                print("     " + (row[0] if postgres else f"{row[1]:>3} {row[3]}"))
        session.rollback()


# ----- the run -----------------------------------------------------------------------------------


@dataclass
class SizeResult:
    size: int
    routes: dict[str, LoadResult]
    claims_per_s: float
    claims: int
    fill_s: float
    pair_ratios: list[float]  # deploy/{id} ÷ /healthz requests/s of adjacent windows

    @property
    def healthz_share(self) -> float:
        return statistics.median(self.pair_ratios)


def paired_ratios(
    base_url: str,
    paths: dict[str, tuple[str, ...]],
    args: argparse.Namespace,
    pool: ProcessPoolExecutor,
) -> list[float]:
    """`deploy/{id}` ÷ `/healthz` requests/s of `args.pairs` pairs of adjacent windows."""
    ratios = []
    for _ in range(args.pairs):
        rates = {}
        for route in ("deploy", "healthz"):
            spec = LoadSpec(base_url, route, paths[route], args.pair_duration, args.warmup)
            rates[route] = pool.submit(run_load, spec).result().rps
        ratios.append(rates["deploy"] / max(rates["healthz"], 1e-9))
    return ratios


def run_backend(
    backend: str, args: argparse.Namespace, work: Path, pool: ProcessPoolExecutor
) -> list[SizeResult]:
    rng = random.Random(13)
    make_store = sqlite_store if backend == "sqlite" else postgres_store
    results = []
    with make_store(work) as (url, data_dir):
        upgrade(url)
        engine = make_engine(url)
        fill = Fill()
        fill_fixed(engine, fill)
        try:
            for size in args.sizes:
                started = time.perf_counter()
                fill_tasks(engine, fill, size, rng)
                analyze(engine)
                fill_s = time.perf_counter() - started
                progress(f"{backend}: {size} tasks written in {fill_s:.1f} s")
                if args.explain and size == args.sizes[-1]:
                    print(f"\nquery plans, {backend}, {size} tasks:")
                    explain(engine, fill)
                paths = route_paths(fill, rng)
                routes = {}
                with running_server(url, data_dir) as base_url:
                    for route in ROUTES:
                        spec = LoadSpec(base_url, route, paths[route], args.duration, args.warmup)
                        routes[route] = pool.submit(run_load, spec).result()
                        result = routes[route]
                        progress(
                            f"{backend} {size} {route}: {result.rps:.0f} req/s, p99 "
                            f"{result.p99_ms:.1f} ms, {result.errors} errors {result.first_error}"
                        )
                    pairs = paired_ratios(base_url, paths, args, pool)
                    progress(
                        f"{backend} {size} deploy/healthz in adjacent windows: "
                        + ", ".join(f"{ratio:.2f}" for ratio in pairs)
                    )
                rate, claims = claim_rate(url, args.claim_duration)
                progress(f"{backend} {size}: {rate:.0f} claims/s ({claims} claims)")
                results.append(SizeResult(size, routes, rate, claims, fill_s, pairs))
        finally:
            engine.dispose()
    return results


def print_report(backend: str, results: list[SizeResult]) -> bool:
    print(f"\n{backend}: p50 / p99 ms and requests/s at concurrency {CONCURRENCY}")
    header = f"  {'tasks':>7}  " + "  ".join(f"{route:>22}" for route in ROUTES)
    print(header + f"  {'claims/s (4 workers)':>21}")
    for result in results:
        cells = []
        for route in ROUTES:
            r = result.routes[route]
            cell = f"{r.p50_ms:.1f}/{r.p99_ms:.1f} {r.rps:.0f}/s"
            cells.append(f"{cell + ('!' if r.errors else ''):>22}")
        print(f"  {result.size:>7}  " + "  ".join(cells) + f"  {result.claims_per_s:>21.0f}")
    errors = sum(r.errors for result in results for r in result.routes.values())
    if errors:
        print(f"  ! {errors} failed requests")
    ok = errors == 0
    first, last = results[0], results[-1]
    for route in ROUTES[:-1]:
        ratio = last.routes[route].p99_ms / max(first.routes[route].p99_ms, 1e-9)
        good = ratio <= GOAL_P99_RATIO
        ok &= good
        print(
            f"  goal: {route} p99 at {last.size} = {ratio:.2f} x its p99 at {first.size} "
            f"(<= {GOAL_P99_RATIO}) {'met' if good else 'NOT met'}"
        )
    for result in results:
        share = result.healthz_share
        windows = result.routes["deploy"].rps / max(result.routes["healthz"].rps, 1e-9)
        good = share >= GOAL_HEALTHZ_SHARE
        ok &= good
        pairs = ", ".join(f"{ratio:.2f}" for ratio in result.pair_ratios)
        print(
            f"  goal: GET /deploy/{{id}} at {result.size} = {share:.2f} x /healthz requests/s "
            f"(>= {GOAL_HEALTHZ_SHARE}) {'met' if good else 'NOT met'}: median of "
            f"{len(result.pair_ratios)} adjacent pairs ({pairs}); the long windows: {windows:.2f}"
        )
    claim_ratio = last.claims_per_s / max(first.claims_per_s, 1e-9)
    print(f"  claim rate at {last.size} = {claim_ratio:.2f} x its rate at {first.size}")
    return ok


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="task counts, ascending")
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite, postgres or both")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per route")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not measured first")
    parser.add_argument("--claim-duration", type=float, default=5.0, help="seconds of claiming")
    parser.add_argument(
        "--pairs", type=int, default=5, help="adjacent deploy/{id} and /healthz window pairs"
    )
    parser.add_argument(
        "--pair-duration", type=float, default=3.0, help="seconds measured per paired window"
    )
    parser.add_argument("--quick", action="store_true", help="1k and 5k tasks, 2-s windows")
    parser.add_argument("--explain", action="store_true", help="query plans at the largest size")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.duration, args.warmup, args.claim_duration = "1000,5000", 2.0, 0.5, 2.0
        args.pairs, args.pair_duration = 3, 1.0
    if args.pairs < 1 or args.pair_duration <= 0:
        parser.error("--pairs and --pair-duration must be positive")
    args.sizes = [int(size) for size in args.sizes.split(",")]
    if args.sizes != sorted(args.sizes) or args.sizes[0] < PENDING_POOL:
        parser.error(f"--sizes: ascending, each at least {PENDING_POOL}")
    args.backends = [b.strip() for b in args.backends.split(",")]
    if not set(args.backends) <= {"sqlite", "postgres"}:
        parser.error("--backends: sqlite, postgres")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress(f"sizes {args.sizes}, backends {args.backends}; the machine is shared: compare ratios")
    ok = True
    with tempfile.TemporaryDirectory(prefix="greenroom-bench-cp-") as work_dir:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            reports = {b: run_backend(b, args, Path(work_dir), pool) for b in args.backends}
        for backend, results in reports.items():
            ok &= print_report(backend, results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
