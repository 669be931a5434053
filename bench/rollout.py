"""Green rollout benchmark for greenroom: prints figures, it is not a test.

What it does, in one run of `greenroom serve` (default model all-minilm-l6-v2, registered and
deployed on first start):

1. Starts the server on a first start (a reused `--data-dir` keeps its ONNX export cache, but its
   database is deleted first) and waits for /readyz.
2. Starts a load generator in its own process: single-sentence POST /v1/embeddings at
   `--concurrency` (default 16), for the whole benchmark; each request's start time, latency and
   outcome are recorded (non-200 or an exception = failed).
3. Under that load, `--deploys` (default 10) consecutive deploys of the default model through the
   Tasks API, alternating `max_batch_size` 16 and 32 (each one a real rollout), each polled until
   final; its wall duration, per-step durations (`metadata.steps`) and switch moment are recorded.
4. Between the rollouts, under the same load, three times: a bare replica of the same model started
   from nothing (`python -m greenroom.runtime.replica`) and timed from spawn to its ready line
   (model loaded, warm-up batch embedded), then stopped: the "bare load + warm-up time".

Then it prints failures, latency in steady state and around switches, each rollout's steps, and a
summary against the goals (no failed request; rollout ≤ 1.5 × bare load+warm-up and ≤ 10 s).
Every process started here is stopped at the end, also on Ctrl-C or an error.
Run: `.venv/bin/python bench/rollout.py --data-dir /tmp/gr-bench-rollout` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

# bench/ is not a package: serving.py is imported from the path set just above.
from serving import (
    AUTH_HEADERS,
    FINAL_STATUSES,
    HOST,
    MAX_CALLS,
    MODEL_NAME,
    REQUEST_TIMEOUT_S,
    BenchError,
    LoadSpec,
    ModelRef,
    Server,
    ignore_sigint,
    log_offsets,
    log_problems,
    make_sentences,
    one_request,
    own_replica,
    prepare_data_dir,
    print_problems,
    progress,
    request_bodies,
    resolve_model,
    running_server,
    verdict,
)

TASKS = "/internal/inference-deployment"
BATCH_SIZES = (16, 32)  # alternated; the server's default config has 32, so the first is a change
BARE_STARTS = 3
LEAD_S = 4.0  # load before the first deploy: steady state to compare with
LOAD_WARMUP_S = 1.0  # the load's first second (connections opening) is not steady state
GAP_S = 2.0  # between rollouts and bare starts, so that steady state is also seen between them
TAIL_S = 4.0  # load after the last rollout
STEADY_MARGIN_S = 0.5  # steady state: requests not overlapping any rollout window ± this
SWITCH_MARGIN_S = 1.0  # "during switches": requests started within ± this of a switch moment
POLL_S = 0.02  # the wall time's resolution: at 0.1 s polling added 0.05 s to it on average
ROLLOUT_TIMEOUT_S = 600.0
LOAD_STOP_TIMEOUT_S = REQUEST_TIMEOUT_S + 30.0
LOAD_MAX_S = 3600.0  # the load generator stops by itself after this, whatever happens here
ERROR_SAMPLES = 5
MAIN_STEPS = ("start_green", "smoke_test", "compatibility_gate", "switch", "drain_blue")
STEP_TITLES = {
    "start_green": "start_green",
    "smoke_test": "smoke",
    "compatibility_gate": "compat",
    "switch": "switch",
    "drain_blue": "drain_blue",
}
GOAL_FACTOR = 1.5  # rollout ≤ 1.5 × bare load + warm-up
GOAL_MAX_S = 10.0  # and ≤ 10 s


# ----- the load generator: runs in its own process until told to stop ----------------------
_stop_event: Any = None  # a multiprocessing Event, set by the driver


def init_load_process(stop: Any) -> None:
    global _stop_event
    ignore_sigint()
    _stop_event = stop


@dataclass
class LoadRecord:
    """Per request: wall-clock start (epoch s), latency (s), ok; and the first errors."""

    starts: list[float]
    latencies: list[float]
    ok: list[bool]
    outcomes: dict[str, int]
    errors: list[tuple[float, str]]  # (start, what happened), the first few
    client_cpu_cores: float


def run_until_stopped(spec: LoadSpec) -> LoadRecord:
    """Entry point in the load-generator process."""
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    record = asyncio.run(_load_until_stopped(spec))
    record.client_cpu_cores = (time.process_time() - cpu_before) / (
        time.perf_counter() - wall_before
    )
    return record


async def _load_until_stopped(spec: LoadSpec) -> LoadRecord:
    bodies = request_bodies(spec.sentences, 1)
    wall_offset = time.time() - time.perf_counter()  # perf_counter → epoch, for the driver
    record = LoadRecord([], [], [], {}, [], 0.0)
    outcomes: Counter[str] = Counter()
    stopping = asyncio.Event()
    limits = httpx.Limits(
        max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
    )
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    deadline = time.perf_counter() + spec.duration_s
    async with httpx.AsyncClient(base_url=spec.base_url, limits=limits, timeout=timeout) as client:

        async def watch() -> None:
            while not stopping.is_set():
                told = _stop_event is not None and _stop_event.is_set()
                if told or time.perf_counter() >= deadline:
                    stopping.set()
                else:
                    await asyncio.sleep(0.05)

        async def worker(offset: int) -> None:
            for n in range(MAX_CALLS):
                if stopping.is_set():
                    return
                body = bodies[(offset + n * spec.concurrency) % len(bodies)]
                (ended, latency, ok), outcome, _ = await one_request(client, spec, body)
                start = ended - latency + wall_offset
                record.starts.append(start)
                record.latencies.append(latency)
                record.ok.append(ok)
                outcomes[outcome] += 1
                if not ok and len(record.errors) < ERROR_SAMPLES:
                    record.errors.append((start, outcome))

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))
        await watcher
    record.outcomes = dict(outcomes)
    return record


# ----- rollouts through the Tasks API -------------------------------------------------------
@dataclass
class Rollout:
    number: int
    max_batch_size: int
    task_id: str
    posted_at: float  # epoch s
    final_at: float  # epoch s, when the poll saw the final status
    status: str
    result: str | None
    detail: str | None
    steps: list[dict[str, Any]]
    created_at: float | None  # epoch s, the task's created_at (server clock = this clock)
    switch_at: float | None  # epoch s, finished_at of the switch step

    @property
    def wall_s(self) -> float:
        return self.final_at - self.posted_at

    @property
    def ok(self) -> bool:
        return self.status == "done" and self.result == "rolled_out"

    def step(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.steps if s.get("name") == name), None)

    def step_s(self, name: str) -> float | None:
        step = self.step(name)
        if step is None or step.get("duration_ms") is None:
            return None
        return step["duration_ms"] / 1000.0

    def server_s(self) -> float | None:
        """From the task's creation to the end of its last finished step (server clock)."""
        ends = [epoch(s.get("finished_at")) for s in self.steps]
        ends = [e for e in ends if e is not None]
        if self.created_at is None or not ends:
            return None
        return max(ends) - self.created_at

    def queued_s(self) -> float | None:
        """From the task's creation until its first step started (pending, claim)."""
        first = epoch(self.steps[0].get("started_at")) if self.steps else None
        if self.created_at is None or first is None:
            return None
        return first - self.created_at


def epoch(value: str | None) -> float | None:
    if not value:
        return None
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def api_request(api: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        response = api.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise BenchError(f"{method} {path} failed: {exc!r}") from exc
    if response.status_code != 200:
        raise BenchError(f"{method} {path}: {response.status_code} {response.text[:500]}")
    return response.json()


def run_rollout(api: httpx.Client, number: int, max_batch_size: int) -> Rollout:
    """POST a deploy, poll it until final; the wall time is from the POST to the final poll."""
    body = {"embedding_model_id": MODEL_NAME, "config": {"max_batch_size": max_batch_size}}
    posted_at = time.time()
    task = api_request(api, "POST", f"{TASKS}/deploy", json=body)
    task_id = task["id"]
    progress(f"rollout {number}: max_batch_size {max_batch_size}, task {task_id}")
    deadline = time.monotonic() + ROLLOUT_TIMEOUT_S
    while task.get("status") not in FINAL_STATUSES:
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
        task = api_request(api, "GET", f"{TASKS}/deploy/{task_id}")
    final_at = time.time()
    metadata = task.get("metadata") or {}
    steps = list(metadata.get("steps") or [])
    switch = next((s for s in steps if s.get("name") == "switch"), None)
    status = task.get("status", "?")
    if status not in FINAL_STATUSES:
        status = f"not final after {ROLLOUT_TIMEOUT_S:.0f} s ({status})"
    rollout = Rollout(
        number=number,
        max_batch_size=max_batch_size,
        task_id=task_id,
        posted_at=posted_at,
        final_at=final_at,
        status=status,
        result=metadata.get("result"),
        detail=task.get("detail"),
        steps=steps,
        created_at=epoch(task.get("created_at")),
        switch_at=epoch(switch.get("finished_at")) if switch else None,
    )
    progress(
        f"rollout {number}: {rollout.status} ({rollout.result}) in {rollout.wall_s:.2f} s"
        + (f": {rollout.detail}" if rollout.detail else "")
    )
    return rollout


# ----- bare replica start: load + warm-up from nothing --------------------------------------
@dataclass
class BareStart:
    spawned_at: float  # epoch s
    ready_s: float  # spawn → ready line
    stopped_at: float  # epoch s, once stopped


def bare_start(model: ModelRef, cache_dir: Path, log_path: Path) -> BareStart:
    """One replica from nothing to ready (its ready line), started as the supervisor starts
    one, then stopped."""
    spawned_at, started = time.time(), time.perf_counter()
    with own_replica(model, cache_dir, log_path, secrets.token_urlsafe(16)):
        ready_s = time.perf_counter() - started
    progress(f"bare replica: ready {ready_s:.2f} s after spawn")
    return BareStart(spawned_at, ready_s, time.time())


def bare_positions(deploys: int) -> list[int]:
    """Before which rollout (0-based; `deploys` = after the last) each bare start runs."""
    return [min(deploys, round(deploys * (k + 0.5) / BARE_STARTS)) for k in range(BARE_STARTS)]


# ----- the run ------------------------------------------------------------------------------
@dataclass
class LatencyStats:
    requests: int
    failed: int
    p50_ms: float
    p99_ms: float


@dataclass
class Report:
    settings: dict[str, Any]
    load_started_at: float = 0.0
    load_stopped_at: float = 0.0
    load: LoadRecord | None = None
    rollouts: list[Rollout] = field(default_factory=list)
    bare: list[BareStart] = field(default_factory=list)
    server_log_problems: list[str] = field(default_factory=list)
    spare_starts: int = 0  # replica starts that ran in the spare process (the server's log)
    replica_starts: int = 0  # replica starts the server logged ready
    aborted: str | None = None  # why the deploy sequence stopped early

    # --- derived figures
    def latency(self, mask: np.ndarray) -> LatencyStats:
        assert self.load is not None
        ok = np.array(self.load.ok, dtype=bool)
        latencies = np.array(self.load.latencies) * 1000.0
        chosen_ok = latencies[mask & ok]
        p50, p99 = np.percentile(chosen_ok, [50, 99]) if len(chosen_ok) else (math.nan, math.nan)
        return LatencyStats(int(mask.sum()), int((mask & ~ok).sum()), float(p50), float(p99))

    def masks(self) -> dict[str, np.ndarray]:
        assert self.load is not None
        starts = np.array(self.load.starts)
        ends = starts + np.array(self.load.latencies)
        disturbed = np.zeros(len(starts), dtype=bool)
        rollout_busy = np.zeros(len(starts), dtype=bool)
        for r in self.rollouts:
            window = (ends >= r.posted_at - STEADY_MARGIN_S) & (
                starts <= r.final_at + STEADY_MARGIN_S
            )
            rollout_busy |= window
        disturbed |= rollout_busy
        bare_busy = np.zeros(len(starts), dtype=bool)
        for b in self.bare:
            bare_busy |= (ends >= b.spawned_at - STEADY_MARGIN_S) & (
                starts <= b.stopped_at + STEADY_MARGIN_S
            )
        disturbed |= bare_busy
        warm = starts >= self.load_started_at + LOAD_WARMUP_S
        switching = np.zeros(len(starts), dtype=bool)
        for r in self.rollouts:
            if r.switch_at is not None:
                switching |= np.abs(starts - r.switch_at) <= SWITCH_MARGIN_S
        return {
            "all": np.ones(len(starts), dtype=bool),
            "steady": warm & ~disturbed,
            "switch": switching,
            "rollouts": rollout_busy,
            "bare": bare_busy & ~rollout_busy,
        }

    def bare_median_s(self) -> float:
        return float(np.median([b.ready_s for b in self.bare])) if self.bare else math.nan

    def rollout_walls(self) -> list[float]:
        return [r.wall_s for r in self.rollouts]


def run_benchmark(args: argparse.Namespace, data_dir: Path, report: Report) -> None:
    prepare_data_dir(data_dir)
    model = resolve_model()
    sentences = tuple(make_sentences())
    cache_dir = data_dir / "onnx"
    logs_dir = data_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    bare_log = logs_dir / "bench-bare-replica.log"
    report.settings = run_settings(args, data_dir, model, len(sentences))
    spawn = multiprocessing.get_context("spawn")
    stop = spawn.Event()
    with spawn.Pool(1, initializer=init_load_process, initargs=(stop,)) as pool:
        pool.apply(os.getpid)  # start the load generator before the clock matters
        offsets = log_offsets(logs_dir)
        with running_server(data_dir, args.runtime) as server:
            spec = LoadSpec(
                "rollout",
                base_url=server.base_url,
                concurrency=args.concurrency,
                per_request=1,
                duration_s=LOAD_MAX_S,
                warmup_s=0.0,
                sentences=sentences,
            )
            progress(f"load: single sentences at concurrency {args.concurrency}, until the end")
            pending = pool.apply_async(run_until_stopped, (spec,))
            report.load_started_at = time.time()
            try:
                drive(args, server, model, cache_dir, bare_log, pending, report)
            finally:
                stop.set()
                report.load_stopped_at = time.time()
            report.load = pending.get(timeout=LOAD_STOP_TIMEOUT_S)
        report.server_log_problems = log_problems(logs_dir, offsets)  # shutdown included
        report.spare_starts, report.replica_starts = count_replica_starts(logs_dir, offsets)


def count_replica_starts(logs_dir: Path, offsets: dict[Path, int]) -> tuple[int, int]:
    """(starts in the spare process, all starts) the server's log records since `offsets`."""
    path = logs_dir / "greenroom.log"
    try:
        with path.open("rb") as handle:
            handle.seek(offsets.get(path, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return 0, 0
    return text.count("runs in the spare process"), text.count(" ready on port ")


def drive(
    args: argparse.Namespace,
    server: Server,
    model: ModelRef,
    cache_dir: Path,
    bare_log: Path,
    pending: Any,
    report: Report,
) -> None:
    """Under the running load: the rollouts, with the bare starts spread between them."""
    positions = bare_positions(args.deploys)
    pause(LEAD_S, pending)
    with httpx.Client(base_url=server.base_url, timeout=30.0, headers=AUTH_HEADERS) as api:
        for number in range(args.deploys + 1):
            for _ in range(positions.count(number)):
                report.bare.append(bare_start(model, cache_dir, bare_log))
                pause(GAP_S, pending)
            if number == args.deploys:
                break
            size = BATCH_SIZES[number % len(BATCH_SIZES)]
            rollout = run_rollout(api, number + 1, size)
            report.rollouts.append(rollout)
            if rollout.status not in FINAL_STATUSES:
                report.aborted = f"rollout {number + 1} did not end; later deploys would queue"
                break
            pause(GAP_S, pending)
    pause(TAIL_S, pending)


def pause(seconds: float, pending: Any) -> None:
    """Sleep, but notice at once when the load generator died."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if pending.ready():
            pending.get()  # re-raises its error
            raise BenchError("The load generator stopped before it was told to.")
        time.sleep(min(left, 0.2))


def run_settings(
    args: argparse.Namespace, data_dir: Path, model: ModelRef, sentences: int
) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "content_hash": model.content_hash,
        "model_path": str(model.path),
        "server_engine": "onnx fp32",
        "replica_threads": model.threads,
        "runtime": args.runtime,
        "deploys": args.deploys,
        "batch_sizes": list(BATCH_SIZES),
        "concurrency": args.concurrency,
        "sentences": sentences,
        "data_dir": str(data_dir),
        "cores": os.cpu_count(),
        "host": HOST,
    }


# ----- output -------------------------------------------------------------------------------
def fmt_s(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def print_report(report: Report) -> None:
    s = report.settings
    print("\ngreenroom green rollout benchmark")
    print(
        f"  model {s['model']} ({s['content_hash'][:12]}), {s['server_engine']}, 1 replica of "
        f"{s['replica_threads']} threads, runtime {s['runtime']}; {s['cores']} cores shared by "
        "the load generator, the server, its replicas and the bare replica"
    )
    print(
        f"  load: single-sentence POST /v1/embeddings at concurrency {s['concurrency']} from its "
        f"own process for the whole run; {s['deploys']} deploys alternating max_batch_size "
        f"{' / '.join(map(str, s['batch_sizes']))}"
    )
    if report.aborted:
        print(f"  NOTE: the deploy sequence stopped early: {report.aborted}")
    print_requests(report)
    print_rollouts(report)
    print_bare(report)
    print_problems(report)
    print_summary(report)


def print_requests(report: Report) -> None:
    load = report.load
    if load is None:
        return
    masks = report.masks()
    total = report.latency(masks["all"])
    run_s = report.load_stopped_at - report.load_started_at
    print(
        f"\nRequests: {total.requests} in {run_s:.0f} s ({total.requests / run_s:.1f} req/s), "
        f"{total.failed} failed; load generator used {load.client_cpu_cores:.2f} cores"
    )
    if total.failed:
        shown = Counter({k: v for k, v in load.outcomes.items() if k != "200"})
        for outcome, count in shown.most_common(5):
            print(f"  {count} × {outcome}")
        for start, outcome in load.errors:
            print(f"  first errors: t={start - report.load_started_at:.2f} s: {outcome}")
    print(f"  {'window':<48} {'requests':>8} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8}")
    rows = (
        (
            "steady state (no rollout or bare start ±0.5 s)",
            masks["steady"],
        ),
        (f"during switches (started ±{SWITCH_MARGIN_S:.0f} s of one)", masks["switch"]),
        ("during rollouts (POST→final ±0.5 s)", masks["rollouts"]),
        ("during bare replica starts (no rollout)", masks["bare"]),
        ("all", masks["all"]),
    )
    for title, mask in rows:
        stats = report.latency(mask)
        print(
            f"  {title:<48} {stats.requests:>8} {stats.failed:>6} {stats.p50_ms:>8.1f} "
            f"{stats.p99_ms:>8.1f}"
        )
    print(
        f"  (steady state also leaves out the load's first {LOAD_WARMUP_S:.0f} s; the switch "
        "moment is the finished_at of the switch step)"
    )


def print_rollouts(report: Report) -> None:
    if not report.rollouts:
        return
    print(
        "\nRollouts (s): wall = POST → final status seen (polled every "
        f"{POLL_S:.2f} s); queued = created → first step"
    )
    titles = " ".join(f"{STEP_TITLES[n]:>11}" for n in MAIN_STEPS)
    print(f"  {'#':>2} {'batch':>5} {'wall':>6} {'queued':>6} {titles} {'other':>6}  result")
    for r in report.rollouts:
        main = [r.step_s(n) for n in MAIN_STEPS]
        other = [r.step_s(s["name"]) for s in r.steps if s["name"] not in MAIN_STEPS]
        other_s = sum(v for v in other if v is not None)
        cells = " ".join(f"{fmt_s(v):>11}" for v in main)
        result = "done/rolled_out" if r.ok else f"{r.status}/{r.result}: {r.detail or ''}"
        print(
            f"  {r.number:>2} {r.max_batch_size:>5} {r.wall_s:>6.2f} {fmt_s(r.queued_s()):>6} "
            f"{cells} {other_s:>6.2f}  {result}"
        )
    print("  other = snapshot + finish; per-step figures are metadata.steps[].duration_ms")
    walls = report.rollout_walls()
    means = {n: np.mean([r.step_s(n) or 0.0 for r in report.rollouts]) for n in MAIN_STEPS}
    mean_wall = float(np.mean(walls))
    shares = ", ".join(f"{n} {v:.2f} s ({v / mean_wall:.0%})" for n, v in means.items())
    print(f"  mean wall {mean_wall:.2f} s: {shares}")
    dominant = max(means, key=lambda n: means[n])
    drain_note = ""
    if dominant == "drain_blue":
        drain_note = (
            " (drain_blue = waiting until no router reports a batch in flight to blue, then "
            "stopping blue's replica and waiting for the supervisor to report it gone)"
        )
    elif dominant == "start_green":
        drain_note = " (start_green = green's replica loading its model and embedding a warm-up)"
    print(f"  dominant step: {dominant}{drain_note}")
    drain_msgs = Counter((r.step("drain_blue") or {}).get("message") for r in report.rollouts)
    for message, count in drain_msgs.items():
        if message:
            print(f"  drain_blue said {count}×: {message}")
    first = report.rollouts[0]
    print(f"  steps of rollout {first.number} (status, ms, message):")
    for step in first.steps:
        print(
            f"    {step.get('name'):<19} {step.get('status'):<8} {step.get('duration_ms')!s:>6}  "
            f"{step.get('message') or ''}"
        )


def print_bare(report: Report) -> None:
    if not report.bare:
        return
    values = ", ".join(f"{b.ready_s:.2f}" for b in report.bare)
    print(
        f"\nBare replica load + warm-up (spawn → ready line, under the same load): "
        f"median {report.bare_median_s():.2f} s ({values})"
    )
    starts = [r.step_s("start_green") for r in report.rollouts if r.step_s("start_green")]
    if starts:
        print(
            f"  for comparison, start_green median {float(np.median(starts)):.2f} s (the same "
            "replica start, through the supervisor and the store)"
        )
    print(
        f"  {report.spare_starts} of the server's {report.replica_starts} replica starts ran in "
        "its spare process (interpreter up, engine imported: GREENROOM_REPLICA_SPARE); the bare "
        "start is always a fresh process"
    )


def print_summary(report: Report) -> None:
    print("\nSummary vs goals")
    if report.load is not None:
        failed = int(len(report.load.ok) - sum(report.load.ok))
        print(f"  [{verdict(failed == 0)}] failed requests: {failed} of {len(report.load.ok)}")
    not_ok = [r for r in report.rollouts if not r.ok]
    print(
        f"  [{verdict(not not_ok and not report.aborted)}] rollouts done/rolled_out: "
        f"{len(report.rollouts) - len(not_ok)} of {report.settings['deploys']}"
    )
    walls = report.rollout_walls()
    if walls:
        median, worst = float(np.median(walls)), max(walls)
        bare = report.bare_median_s()
        bound = GOAL_FACTOR * bare
        for title, value in (("median", median), ("max", worst)):
            print(
                f"  [{verdict(value <= bound)}] rollout {title} {value:.2f} s vs ≤ {GOAL_FACTOR} × "
                f"bare load+warm-up ({bare:.2f} s) = {bound:.2f} s ({value / bare:.2f}×)"
            )
            print(
                f"  [{verdict(value <= GOAL_MAX_S)}] rollout {title} {value:.2f} s vs ≤ "
                f"{GOAL_MAX_S:.0f} s"
            )
    print("  (figures on a shared machine are noisy)")


def write_json(report: Report, path: Path) -> None:
    payload = asdict(report)
    load = payload.pop("load")
    if load is not None:
        payload["load"] = {
            key: load[key] for key in ("outcomes", "errors", "client_cpu_cores")
        }  # per-request samples are summarised below
        masks = report.masks()
        payload["latency"] = {name: asdict(report.latency(mask)) for name, mask in masks.items()}
    for rollout, data in zip(report.rollouts, payload["rollouts"], strict=True):
        data["wall_s"] = rollout.wall_s
        data["queued_s"] = rollout.queued_s()
        data["server_s"] = rollout.server_s()
    payload["bare_median_s"] = report.bare_median_s()
    payload["goals"] = {"rollout_factor_of_bare": GOAL_FACTOR, "rollout_max_s": GOAL_MAX_S}
    path.write_bytes(
        orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
    )
    progress(f"figures written to {path}")


# ----- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Benchmark greenroom's green rollouts: `greenroom serve` under single-sentence HTTP "
            "load while the default model is deployed --deploys times in a row through the Tasks "
            "API (max_batch_size alternating 16/32, so every deploy is a real rollout), and a "
            "bare replica of the same model is started 3 times between them to time load + "
            "warm-up. Prints failed requests, latency in steady state and around switches, each "
            "rollout's steps, and a summary against the goals. Prints figures; not a test."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--deploys",
        type=int,
        default=10,
        help="consecutive deploys of the default model, each polled until final; configs "
        "alternate max_batch_size 16 and 32",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="single-sentence requests in flight, from the load-generator process, for the "
        "whole run",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the server's data directory; reuse one to skip the ONNX export on later runs "
        "(DATA_DIR/onnx is kept, but DATA_DIR/greenroom.db* is deleted first so that every run "
        "is a first start); default: a temporary directory, removed afterwards",
    )
    parser.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON"
    )
    parser.add_argument(
        "--runtime",
        choices=["local", "ray"],
        default="local",
        help="runtime backend of the server, passed as GREENROOM_RUNTIME (ray: a private "
        "local Ray unless RAY_ADDRESS is set)",
    )
    args = parser.parse_args(argv)
    if args.deploys < 1 or args.concurrency < 1:
        parser.error("--deploys and --concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="greenroom-rollout-")) if temporary else args.data_dir
    data_dir = data_dir.expanduser().resolve()
    report = Report(settings={})
    try:
        run_benchmark(args, data_dir, report)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
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
