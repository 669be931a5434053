"""The live half of the migration bench (`bench/migration.py --live`): a real `greenroom serve`.

The server (`bench/serving.py`'s `running_server`: its own process group, a temporary data dir
whose `onnx/` is the shared export cache, HF_HUB_OFFLINE=1) serves all-MiniLM-L6-v2 under its
default name; all-mpnet-base-v2 is staged beside it (`PUT /v1/embedding-models/<name>` + a staged
deploy). Load comes from a separate process (a spawn pool of one, httpx.AsyncClient), as in
`bench/serving.py`; every input is a single sentence of the corpus (evaluation queries and
documents' sentences, shuffled once). In this order:

`--parts` picks some of the three (each on the staged revision of the first staged deploy):

1. overlap: shadow fraction 1.0, paced load at concurrency 4 (not saturating) until ≥ 1,000
   inputs were shadowed (embedded by both sides); the shadow report's neighbour_overlap_at_10,
   next to the offline overlap@10 of the same two models on texts of the same pool (cached
   vectors; a random subset of the window's size, since overlap@k depends on the set's size).
2. throughput: unpaced single-sentence load at concurrency 16 for a fixed duration (after a
   warm-up) at shadow 0 %, 5 %, 20 % and 0 % again (the repeat shows the machine's noise), with
   the shadow report's counters for each (deltas; the warm-up included).
3. sequence: an abort of that staged revision, then under a steady paced load at concurrency 4
   the whole time: stage → shadow (5 %) → samples upload → fit → promote adapted → finish; every
   failed request is counted and put to the task it happened in.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import multiprocessing
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import serving  # bench/serving.py: the server process, auth, response checks

MODEL = serving.MODEL_NAME  # the served name (the default model's id)
MIGRATION = f"/v1/migrations/default/{MODEL}"
TASKS = "/internal/inference-deployment"
CONTROL_TIMEOUT_S = 900.0  # the fit embeds thousands of texts with MPNet before it answers
TASK_TIMEOUT_S = 600.0
SUMMARY_INTERVAL_S = 1.0  # GREENROOM_SHADOW_SUMMARY_INTERVAL_S of the bench's server
OVERLAP_TIMEOUT_S = 240.0
SAMPLES_PER_CALL = 2048
FAILURE_TIMES_KEPT = 1000


# ----- the load generator: runs in its own process ---------------------------------------------
@dataclass(frozen=True)
class Load:
    name: str
    base_url: str
    concurrency: int
    texts: tuple[str, ...]
    warmup_s: float
    duration_s: float  # measured seconds; with `stop_file`, the cap
    stop_file: str | None = None  # the load ends when this file exists
    rate: float = 0.0  # requests/s over all workers (0: closed loop, as fast as answers come)
    offset: int = 0
    per_request: int = 1  # consecutive texts of the pool in one request


@dataclass
class LoadResult:
    name: str
    concurrency: int
    window_s: float
    requests: int
    failed: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    outcomes: dict[str, int]
    error_samples: list[str]
    failure_times: list[float]  # time.time() of failed requests (the first FAILURE_TIMES_KEPT)
    client_cpu_cores: float


def request_bodies(texts: tuple[str, ...], per_request: int) -> list[bytes]:
    """One body per text: a single text, or `per_request` consecutive ones (wrapping around)."""
    if per_request == 1:
        return [orjson.dumps({"model": MODEL, "input": text}) for text in texts]
    return [
        orjson.dumps(
            {"model": MODEL, "input": [texts[(i + j) % len(texts)] for j in range(per_request)]}
        )
        for i in range(0, len(texts), per_request)
    ]


def run_load(spec: Load) -> LoadResult:
    """Entry point in the load-generator process."""
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    result = asyncio.run(_load(spec))
    result.client_cpu_cores = (time.process_time() - cpu_before) / (
        time.perf_counter() - wall_before
    )
    return result


async def _load(spec: Load) -> LoadResult:
    bodies = request_bodies(spec.texts, spec.per_request)
    counter = itertools.count(spec.offset)
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    errors: list[str] = []
    failure_times: list[float] = []
    stop = asyncio.Event()
    pace = spec.concurrency / spec.rate if spec.rate > 0 else 0.0
    limits = httpx.Limits(
        max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
    )
    client = httpx.AsyncClient(
        base_url=spec.base_url, limits=limits, timeout=httpx.Timeout(serving.REQUEST_TIMEOUT_S)
    )
    started = time.perf_counter()
    warm_end = started + spec.warmup_s
    deadline = warm_end + spec.duration_s

    async def watch_stop_file() -> None:
        while spec.stop_file and not stop.is_set() and time.perf_counter() < deadline:
            if os.path.exists(spec.stop_file):
                stop.set()
            await asyncio.sleep(0.1)

    async def worker(index: int) -> None:
        await asyncio.sleep(pace * index / spec.concurrency)  # spread the paced workers
        next_start = time.perf_counter()
        for _ in range(serving.MAX_CALLS):
            if stop.is_set() or time.perf_counter() >= deadline:
                return
            body = bodies[next(counter) % len(bodies)]
            begun = time.perf_counter()
            try:
                response = await client.post(
                    "/v1/embeddings", content=body, headers=serving.EMBED_HEADERS
                )
                ok, outcome = serving.check_response(response, spec.per_request)
            except httpx.HTTPError as exc:
                ok, outcome = False, f"{type(exc).__name__}: {exc}"[:200]
            ended = time.perf_counter()
            if ended >= warm_end:
                outcomes[outcome] += 1
                if ok:
                    latencies.append(ended - begun)
                else:
                    if len(errors) < 5:
                        errors.append(outcome)
                    if len(failure_times) < FAILURE_TIMES_KEPT:
                        failure_times.append(time.time())
            if pace:
                next_start += pace
                await asyncio.sleep(max(0.0, next_start - time.perf_counter()))

    async with client:
        watcher = asyncio.create_task(watch_stop_file())
        await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))
        stop.set()
        await watcher
    window = max(1e-9, min(time.perf_counter(), deadline) - warm_end)
    ms = np.array(latencies) * 1000.0
    p50, p99 = np.percentile(ms, [50, 99]) if len(ms) else (math.nan, math.nan)
    failed = sum(count for outcome, count in outcomes.items() if outcome != "200")
    return LoadResult(
        name=spec.name,
        concurrency=spec.concurrency,
        window_s=window,
        requests=len(ms),
        failed=failed,
        requests_per_s=len(ms) / window,
        p50_ms=float(p50),
        p99_ms=float(p99),
        outcomes=dict(outcomes),
        error_samples=errors,
        failure_times=failure_times,
        client_cpu_cores=0.0,
    )


# ----- the control side ------------------------------------------------------------------------
def replica_cpu(server: serving.Server) -> dict[int, tuple[str, float]]:
    """(role, CPU seconds so far) of the server process and of each of its replica processes:
    `live` (normal priority) or `staged` (started with `--nice`)."""
    seconds = {server.process.pid: ("server", serving.cpu_seconds(server.process.pid))}
    for pid in serving.child_pids(server.process.pid):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"greenroom.runtime.replica" in command:
                role = "staged" if b"--nice" in command else "live"
                seconds[pid] = (role, serving.cpu_seconds(pid))
    return seconds


class CpuMeter:
    """Average cores used by the server, its live and its staged replicas over a phase; a
    replica started during the phase counts from zero, one that stopped during it is left out
    (its last seconds are not known)."""

    def __init__(self, server: serving.Server) -> None:
        self.server = server
        self.before = replica_cpu(server)
        self.started = time.perf_counter()

    def cores(self) -> dict[str, float]:
        after, wall = replica_cpu(self.server), time.perf_counter() - self.started
        cores = {"server": 0.0, "live": 0.0, "staged": 0.0}
        for pid, (role, seconds) in after.items():
            cores[role] += (seconds - self.before.get(pid, (role, 0.0))[1]) / wall
        return cores


@dataclass
class Control:
    """The bench's HTTP client for the control routes (admin token)."""

    base_url: str
    server: serving.Server
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(
            base_url=self.base_url, headers=serving.AUTH_HEADERS, timeout=CONTROL_TIMEOUT_S
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise serving.BenchError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def task(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Start a task and wait for it to end; the final task."""
        task = self.call("POST", f"{TASKS}/{kind}", json=body)
        deadline = time.monotonic() + TASK_TIMEOUT_S
        while time.monotonic() < deadline:
            task = self.call("GET", f"{TASKS}/{kind}/{task['id']}")
            if task["status"] in serving.FINAL_STATUSES:
                return task
            time.sleep(0.5)
        raise serving.BenchError(f"{kind} task {task['id']} did not end in {TASK_TIMEOUT_S:.0f} s")

    def shadow(self) -> dict[str, Any]:
        return self.call("GET", MIGRATION).get("shadow") or {}

    def fresh_shadow(self) -> dict[str, Any]:
        """The shadow report once every process wrote a summary after this call."""
        time.sleep(2.5 * SUMMARY_INTERVAL_S)
        return self.shadow()


def wait_served(control: Control, timeout_s: float = 300.0) -> None:
    """The default model is deployed on first start: wait until the served name answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = control.client.post(
            "/v1/embeddings", json={"model": MODEL, "input": "hello"}, timeout=30
        )
        if response.status_code == 200:
            return
        time.sleep(1.0)
    raise serving.BenchError(f"{MODEL} did not answer within {timeout_s:.0f} s")


@dataclass
class Step:
    name: str
    started: float  # time.time()
    ended: float
    status: str
    detail: str = ""
    cores: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def timed(steps: list[Step], server: serving.Server, name: str, action: Callable[[], str]) -> str:
    """Run `action` (returns a status), recording its wall time as a step."""
    serving.progress(f"{name} …")
    started = time.time()
    meter = CpuMeter(server)
    try:
        status = action()
    except serving.BenchError as exc:
        steps.append(Step(name, started, time.time(), "error", str(exc)[:300]))
        raise
    steps.append(Step(name, started, time.time(), status, cores=meter.cores()))
    serving.progress(f"{name}: {status} in {steps[-1].seconds:.1f} s")
    return status


def task_status(task: dict[str, Any]) -> str:
    status = task["status"]
    if status != "done":
        raise serving.BenchError(f"task {task['id']} ended {status}: {task.get('detail')}")
    return status


def stage(control: Control, mpnet: Path) -> str:
    control.call("PUT", f"/v1/embedding-models/{MODEL}", json={"source": str(mpnet)})
    task = control.task("deploy", {"embedding_model_id": MODEL, "strategy": "staged"})
    return task_status(task)


def set_fraction(control: Control, fraction: float) -> None:
    control.call("PUT", f"{MIGRATION}/shadow", json={"fraction": fraction})


def counters(after: dict[str, Any], before: dict[str, Any]) -> dict[str, int]:
    return {
        key: int(after.get(key, 0) or 0) - int(before.get(key, 0) or 0)
        for key in ("requests", "inputs", "dropped", "errors")
    }


# ----- the three parts -------------------------------------------------------------------------
@dataclass
class OverlapResult:
    shadowed: int
    seconds: float
    report: dict[str, Any]
    load: LoadResult | None = None
    offline_same_size: float | None = None
    offline_same_size_sd: float | None = None
    offline_pool: float | None = None
    pool_size: int = 0
    cores: dict[str, float] = field(default_factory=dict)


@dataclass
class ThroughputRow:
    fraction: float
    load: LoadResult
    shadow: dict[str, int]
    cores: dict[str, float]


@dataclass
class SequenceResult:
    steps: list[Step] = field(default_factory=list)
    load: LoadResult | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class LiveReport:
    settings: dict[str, Any]
    overlap: OverlapResult | None = None
    throughput: list[ThroughputRow] = field(default_factory=list)
    sequence: SequenceResult | None = None
    log_problems: list[str] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class LiveInputs:
    """What the offline half hands over: the pool of single sentences with both models' cached
    vectors (rows paired), and the adapter's training texts."""

    texts: list[str]
    minilm: np.ndarray
    mpnet: np.ndarray
    training_texts: list[str]
    mpnet_path: Path
    onnx_cache: Path


def paced(
    name: str, base_url: str, texts: tuple[str, ...], rate: float, stop_file: Path, cap_s: float
) -> Load:
    return Load(
        name=name,
        base_url=base_url,
        concurrency=4,
        texts=texts,
        warmup_s=0.0,
        duration_s=cap_s,
        stop_file=str(stop_file),
        rate=rate,
    )


def measure_overlap(
    pool: Pool, control: Control, inputs: LiveInputs, texts: tuple[str, ...], args: Any, tmp: Path
) -> OverlapResult:
    set_fraction(control, 1.0)
    before = control.fresh_shadow()
    stop_file = tmp / "stop-overlap"
    spec = Load(
        name="overlap",
        base_url=control.base_url,
        concurrency=4,
        texts=texts,
        warmup_s=0.0,
        duration_s=600.0,
        stop_file=str(stop_file),
        rate=args.overlap_rate,
        per_request=args.overlap_per_request,
    )
    serving.progress(
        f"overlap: fraction 1.0, concurrency 4 at {args.overlap_rate:.0f} req/s of "
        f"{args.overlap_per_request} sentences, until {args.overlap_inputs} inputs are shadowed"
    )
    meter = CpuMeter(control.server)
    running = pool.apply_async(run_load, (spec,))
    started = time.monotonic()
    shadowed = 0
    report: dict[str, Any] = {}
    while time.monotonic() - started < OVERLAP_TIMEOUT_S:
        time.sleep(2.0)
        report = control.shadow()
        delta = counters(report, before)
        shadowed = delta["inputs"] - delta["dropped"]
        if shadowed >= args.overlap_inputs:
            break
    stop_file.touch()
    load = running.get(timeout=120)
    cores = meter.cores()
    report = control.fresh_shadow()
    delta = counters(report, before)
    result = OverlapResult(
        shadowed=delta["inputs"] - delta["dropped"],
        seconds=time.monotonic() - started,
        report=report,
        load=load,
        cores=cores,
    )
    offline_overlap(result, inputs, args.window)
    serving.progress(
        f"overlap: {result.shadowed} shadowed in {result.seconds:.0f} s, report "
        f"{report.get('neighbour_overlap_at_10')}, offline {result.offline_same_size}"
    )
    return result


def offline_overlap(result: OverlapResult, inputs: LiveInputs, window: int) -> None:
    """overlap@10 of the cached vectors on random subsets of the pool as large as the shadow
    window holds now (5 seeds), and on the whole pool."""
    from greenroom.migrations.adapters import neighbour_overlap_at_k

    size = min(result.shadowed, window, len(inputs.texts))
    values = []
    for seed in range(5):
        rows = np.random.default_rng(seed).choice(len(inputs.texts), size=size, replace=False)
        value = neighbour_overlap_at_k(inputs.mpnet[rows], inputs.minilm[rows], k=10)
        if value is not None:
            values.append(value)
    if values:
        result.offline_same_size = float(np.mean(values))
        result.offline_same_size_sd = float(np.std(values))
    result.offline_pool = neighbour_overlap_at_k(inputs.mpnet, inputs.minilm, k=10)
    result.pool_size = len(inputs.texts)


def measure_throughput(
    pool: Pool, control: Control, texts: tuple[str, ...], args: Any
) -> list[ThroughputRow]:
    rows = []
    for index, fraction in enumerate(args.fractions):
        set_fraction(control, fraction)
        before = control.fresh_shadow()
        spec = Load(
            name=f"shadow {fraction:.0%}",
            base_url=control.base_url,
            concurrency=args.concurrency,
            texts=texts,
            warmup_s=args.warmup,
            duration_s=args.duration,
            offset=1000 * index,
        )
        serving.progress(
            f"throughput: shadow {fraction:.0%}, concurrency {args.concurrency}, "
            f"{args.warmup:.0f} s warm-up + {args.duration:.0f} s"
        )
        meter = CpuMeter(control.server)
        load: LoadResult = pool.apply(run_load, (spec,))
        cores = meter.cores()
        after = control.fresh_shadow()
        rows.append(ThroughputRow(fraction, load, counters(after, before), cores))
        serving.progress(
            f"  {load.requests_per_s:.1f} req/s, p99 {load.p99_ms:.1f} ms, {load.failed} failed; "
            f"shadow {rows[-1].shadow}"
        )
    return rows


def run_sequence(
    pool: Pool, control: Control, inputs: LiveInputs, texts: tuple[str, ...], args: Any, tmp: Path
) -> SequenceResult:
    """stage → shadow → samples → fit → promote adapted → finish under a steady paced load."""
    result = SequenceResult()
    steps = result.steps
    stop_file = tmp / "stop-sequence"
    spec = paced("sequence", control.base_url, texts, args.steady_rate, stop_file, 1500.0)
    running: AsyncResult[LoadResult] = pool.apply_async(run_load, (spec,))
    time.sleep(3.0)  # the load is steady before the first task
    try:
        timed(steps, control.server, "stage", lambda: stage(control, inputs.mpnet_path))
        set_fraction(control, 0.05)

        def shadow_phase() -> str:
            time.sleep(args.shadow_s)
            report = control.shadow()
            return f"{report.get('requests', 0)} sampled, {report.get('errors', 0)} errors"

        timed(steps, control.server, "shadow 5 %", shadow_phase)
        samples = inputs.training_texts[: args.samples]

        def upload() -> str:
            kept = 0
            for start in range(0, len(samples), SAMPLES_PER_CALL):
                chunk = samples[start : start + SAMPLES_PER_CALL]
                kept = control.call("POST", f"{MIGRATION}/samples", json={"texts": chunk})[
                    "samples"
                ]
            return f"{len(samples)} texts sent, {kept} kept"

        timed(steps, control.server, "samples upload", upload)

        def fit() -> str:
            result.evaluation = control.call("POST", f"{MIGRATION}/adapter")
            return f"{result.evaluation.get('kind')} from {result.evaluation.get('pairs')} pairs"

        timed(steps, control.server, "fit", fit)
        body = {"embedding_model_id": MODEL, "mode": "adapted"}
        timed(
            steps,
            control.server,
            "promote adapted",
            lambda: task_status(control.task("promote", body)),
        )
        body = {"embedding_model_id": MODEL}
        timed(steps, control.server, "finish", lambda: task_status(control.task("finish", body)))
        time.sleep(3.0)  # the load goes on a little after the last task
    except serving.BenchError as exc:
        result.error = str(exc)
        serving.progress(f"sequence stopped: {exc}")
    finally:
        stop_file.touch()
        result.load = running.get(timeout=120)
    return result


# ----- the whole live half ----------------------------------------------------------------------
@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """`timeout` and `kill` send SIGTERM: turn it into KeyboardInterrupt so every `finally`
    runs and the server's process group is stopped."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(inputs: LiveInputs, args: Any) -> LiveReport:
    texts = list(inputs.texts)
    random.Random(20261201).shuffle(texts)
    frozen = tuple(texts)
    os.environ.update(
        {
            "HF_HUB_OFFLINE": "1",
            "GREENROOM_DRAIN_GRACE_S": "5",
            "GREENROOM_SHADOW_SUMMARY_INTERVAL_S": str(SUMMARY_INTERVAL_S),
            "GREENROOM_SHADOW_WINDOW": str(args.window),
            "GREENROOM_ADAPTER_MIN_MEAN_COSINE": str(args.min_cosine),
            "GREENROOM_ADAPTER_MIN_NEIGHBOUR_OVERLAP": str(args.min_overlap),
        }
    )
    report = LiveReport(settings=settings_of(inputs, args))
    with (
        sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(prefix="greenroom-migration-bench-") as tmp_name,
    ):
        tmp = Path(tmp_name)
        data_dir = tmp / "data"
        data_dir.mkdir()
        inputs.onnx_cache.mkdir(parents=True, exist_ok=True)
        (data_dir / "onnx").symlink_to(inputs.onnx_cache)
        logs = data_dir / "logs"
        logs.mkdir()
        spawn = multiprocessing.get_context("spawn")
        with spawn.Pool(1, initializer=serving.ignore_sigint) as pool:
            pool.apply(os.getpid)  # start the load generator before the clock matters
            try:
                with serving.running_server(data_dir, "local") as server:
                    control = Control(server.base_url, server)
                    run_parts(report, pool, control, inputs, frozen, args, tmp)
            except serving.BenchError as exc:
                report.error = str(exc)
            except KeyboardInterrupt:
                report.error = "interrupted (SIGINT or SIGTERM); the server was stopped"
            report.log_problems = serving.log_problems(logs, {})
            if args.keep_logs is not None:
                shutil.copytree(logs, args.keep_logs, dirs_exist_ok=True)
    return report


def run_parts(
    report: LiveReport,
    pool: Pool,
    control: Control,
    inputs: LiveInputs,
    texts: tuple[str, ...],
    args: Any,
    tmp: Path,
) -> None:
    wait_served(control)
    setup: list[Step] = []
    timed(setup, control.server, "first stage (no load)", lambda: stage(control, inputs.mpnet_path))
    report.settings["first_stage_s"] = setup[-1].seconds
    parts = set(args.parts)
    if "overlap" in parts:
        report.overlap = measure_overlap(pool, control, inputs, texts, args, tmp)
    if "throughput" in parts:
        report.throughput = measure_throughput(pool, control, texts, args)
    if "sequence" not in parts:
        return
    body = {"embedding_model_id": MODEL}
    timed(
        setup, control.server, "abort (no load)", lambda: task_status(control.task("abort", body))
    )
    report.settings["abort_s"] = setup[-1].seconds
    report.sequence = run_sequence(pool, control, inputs, texts, args, tmp)


def settings_of(inputs: LiveInputs, args: Any) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "pool": len(inputs.texts),
        "samples": min(args.samples, len(inputs.training_texts)),
        "concurrency": args.concurrency,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "steady_rate": args.steady_rate,
        "window": args.window,
        "overlap_per_request": args.overlap_per_request,
        "min_mean_cosine": args.min_cosine,
        "min_overlap": args.min_overlap,
    }


# ----- output ----------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_report(report: LiveReport) -> None:
    s = report.settings
    print(
        f"\nmigration bench (live): `greenroom serve`, {MODEL} live (all-MiniLM-L6-v2, 384-d), "
        f"all-mpnet-base-v2 (768-d) staged; {s['cores']} cores shared by the server, both "
        f"replicas and the load generator; inputs: single sentences of the corpus "
        f"({s['pool']} evaluation queries and documents' sentences)"
    )
    print(
        f"bench server settings: adapter thresholds mean cosine ≥ {s['min_mean_cosine']}, "
        f"overlap@10 ≥ {s['min_overlap']} (server defaults 0.8 / 0.6), shadow window "
        f"{s['window']}, staged replicas at the default nice; {s['samples']} sample texts"
    )
    if "first_stage_s" in s:
        print(f"first staged deploy (no load): {s['first_stage_s']:.1f} s")
    print_throughput(report)
    print_overlap(report)
    print_sequence(report)
    print_summary(report)
    if report.error:
        print(f"\nthe run stopped early: {report.error}")
    print(f"\nserver and replica logs: {len(report.log_problems)} warning/error lines")
    for line in report.log_problems[:15]:
        print(f"  {line}")


def print_throughput(report: LiveReport) -> None:
    if not report.throughput:
        return
    s = report.settings
    print(
        f"\n1. live throughput, single-sentence requests at concurrency {s['concurrency']} "
        f"({s['warmup_s']:.0f} s warm-up + {s['duration_s']:.0f} s measured each; shadow "
        "counters are the report's deltas over the phase, warm-up included)"
    )
    print(
        f"  {'shadow':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6}   "
        f"{'sampled':>7} {'inputs':>6} {'dropped':>7} {'errors':>6} {'shadowed':>8}   "
        "cores server/live/staged"
    )
    for row in report.throughput:
        load, c = row.load, row.shadow
        print(
            f"  {row.fraction:>6.0%} {load.requests_per_s:>7.1f} {load.p50_ms:>7.1f} "
            f"{load.p99_ms:>7.1f} {load.failed:>6}   {c['requests']:>7} {c['inputs']:>6} "
            f"{c['dropped']:>7} {c['errors']:>6} {c['inputs'] - c['dropped']:>8}   "
            f"{cores_text(row.cores)}"
        )


def cores_text(cores: dict[str, float]) -> str:
    return "/".join(f"{cores.get(key, 0.0):.2f}" for key in ("server", "live", "staged"))


def print_overlap(report: LiveReport) -> None:
    o = report.overlap
    if o is None:
        return
    r = o.report
    latency = r.get("latency_ms") or {}
    load = o.load
    rate = f"{load.requests_per_s:.1f} req/s, p99 {load.p99_ms:.1f} ms, " if load else ""
    failed = load.failed if load else "?"
    print(
        f"\n2. neighbour overlap@10, shadow fraction 1.0, paced load at concurrency 4 of "
        f"{report.settings['overlap_per_request']} sentences a request ({rate}{failed} failed): "
        f"{o.shadowed} inputs shadowed in {o.seconds:.0f} s; window {r.get('window')}, "
        f"{r.get('processes')} process(es); cores server/live/staged {cores_text(o.cores)}"
    )
    print(
        f"  shadow report: overlap@10 {fmt(r.get('neighbour_overlap_at_10'))}; counters "
        f"requests {r.get('requests')}, inputs {r.get('inputs')}, dropped {r.get('dropped')}, "
        f"errors {r.get('errors')}; latency ms live p50/p99 {fmt(latency.get('live_p50'), 1)}/"
        f"{fmt(latency.get('live_p99'), 1)}, staged p50/p99 {fmt(latency.get('staged_p50'), 1)}/"
        f"{fmt(latency.get('staged_p99'), 1)}"
    )
    size = min(o.shadowed, report.settings["window"])
    print(
        f"  offline (cached vectors, same pool): overlap@10 {fmt(o.offline_same_size)} ± "
        f"{fmt(o.offline_same_size_sd)} on random subsets of {size} texts (5 seeds); "
        f"{fmt(o.offline_pool)} on the whole pool of {o.pool_size}"
    )


def print_sequence(report: LiveReport) -> None:
    seq = report.sequence
    if seq is None:
        return
    load = seq.load
    print(
        f"\n3. stage → shadow → samples → fit → promote adapted → finish under a steady load "
        f"(single sentences, concurrency 4, paced at {report.settings['steady_rate']:.0f} req/s)"
    )
    print(f"  {'task':<18} {'seconds':>8} {'failed':>6}  {'cores srv/live/staged':>21}  result")
    for step in seq.steps:
        failed = sum(step.started <= t <= step.ended for t in load.failure_times) if load else "?"
        print(
            f"  {step.name:<18} {step.seconds:>8.1f} {failed:>6}  {cores_text(step.cores):>21}  "
            f"{step.status} {step.detail}"
        )
    if load is not None:
        print(
            f"  whole sequence: {load.requests} requests answered 200 in {load.window_s:.0f} s "
            f"({load.requests_per_s:.1f} req/s, p50 {load.p50_ms:.1f} ms, p99 "
            f"{load.p99_ms:.1f} ms), {load.failed} failed"
        )
        for sample in load.error_samples:
            print(f"     e.g. {sample}")
    e = seq.evaluation
    if e:
        print(
            f"  fit evaluation: {e.get('kind')}, {e.get('pairs')} pairs, {e.get('held_out')} held "
            f"out, mean cosine {fmt(e.get('mean_cosine'))}, overlap@10 "
            f"{fmt(e.get('neighbour_overlap_at_10'))}"
        )


def print_summary(report: LiveReport) -> None:
    print("\nsummary")
    rates: dict[float, list[float]] = {}
    for row in report.throughput:
        rates.setdefault(row.fraction, []).append(row.load.requests_per_s)
    if 0.0 in rates:
        base = float(np.mean(rates[0.0]))
        spread = ", ".join(f"{rate:.1f}" for rate in rates[0.0])
        print(f"  no shadow: {base:.1f} req/s (mean of {len(rates[0.0])} runs: {spread})")
        for fraction in sorted(f for f in rates if f > 0):
            ratio = float(np.mean(rates[fraction])) / base
            goal = (
                f" (goal ≥ 0.9: {'met' if ratio >= 0.9 else 'missed'})" if fraction == 0.05 else ""
            )
            print(f"  req/s with {fraction:.0%} shadow / no shadow: {ratio:.3f}{goal}")
    if report.overlap is not None:
        o = report.overlap
        print(
            f"  overlap@10: shadow report {fmt(o.report.get('neighbour_overlap_at_10'))} vs "
            f"offline {fmt(o.offline_same_size)} (same pool, same size)"
        )
    if report.sequence is not None and report.sequence.load is not None:
        failed = report.sequence.load.failed
        verdict = "met" if failed == 0 else "missed"
        done = " (the sequence did not complete)" if report.sequence.error else ""
        print(f"  failed requests through the sequence: {failed} (goal 0: {verdict}){done}")
    other = sum(row.load.failed for row in report.throughput)
    if report.overlap is not None and report.overlap.load is not None:
        other += report.overlap.load.failed
    print(f"  failed requests in parts 1 and 2: {other}")


def main_live(inputs: LiveInputs, args: Any) -> int:
    try:
        report = run(inputs, args)
    except KeyboardInterrupt:
        print("interrupted; every process started here was stopped", file=sys.stderr)
        return 130
    print_report(report)
    return 0 if not report.error else 1
