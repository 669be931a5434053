"""Autoscaling benchmark for greenroom: prints figures, it is not a test.

What it does, in one run of `greenroom serve` (`--runtime`: local, or ray for a private local Ray
whose Serve application's `num_replicas` greenroom sets; default model all-minilm-l6-v2):
1. A first start (the database of a reused `--data-dir` is deleted, its ONNX cache kept), then a
   deploy through the Tasks API with `threads` 1 (one engine thread per replica, so a second
   replica adds capacity on 2 cores), `min_replicas` 1, `max_replicas` 2, `target_ongoing_requests`
   2 and short delays (`--upscale-delay-s`, `--downscale-delay-s`).
2. A load generator in its own process: single-sentence POST /v1/embeddings at 1 client for
   `--low-s`, then `--clients` (default 32) for `--high-s`, then 1 client for `--after-s`; every
   request's start, latency and outcome are recorded (non-200 or an exception = failed).
3. Meanwhile the revision's ready replicas (`runningPods` of the workloads API) every 0.5 s.
Then it prints the ready replicas over time, the time from the load step to the second replica
ready and from the step down to one replica again, p50/p99 per phase (the high phase split at the
moment the second replica was ready) and the failed requests.
Every process started here is stopped at the end, also on Ctrl-C or an error.
Run: `.venv/bin/python bench/autoscale.py --data-dir /tmp/gr-bench-autoscale` (see `--help`);
`--runtime ray` for the same on Ray Serve.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# bench/ is not a package: serving.py and rollout.py are imported from the path set just above.
from rollout import FINAL_STATUSES, TASKS, api_request
from serving import (
    AUTH_HEADERS,
    MODEL_NAME,
    REQUEST_TIMEOUT_S,
    BenchError,
    LoadSpec,
    ignore_sigint,
    make_sentences,
    one_request,
    prepare_data_dir,
    progress,
    request_bodies,
    run_in_data_dir,
    running_server,
)

POLL_S = 0.5
DEPLOY_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Phase:
    name: str
    clients: int
    duration_s: float


Record = tuple[float, float, bool, str]  # start (epoch), latency s, ok, phase


def run_phases(base_url: str, phases: list[Phase], sentences: tuple[str, ...]) -> list[Record]:
    """Entry point in the load-generator process."""
    return asyncio.run(_phases(base_url, phases, sentences))


async def _phases(base_url: str, phases: list[Phase], sentences: tuple[str, ...]) -> list[Record]:
    most = max(p.clients for p in phases)
    limits = httpx.Limits(max_connections=most, max_keepalive_connections=most)
    spec = LoadSpec("autoscale", base_url, most, 1, 0.0, 0.0, sentences)
    bodies = request_bodies(sentences, 1)
    records: list[Record] = []
    sent = 0
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=httpx.Timeout(REQUEST_TIMEOUT_S)
    ) as client:
        for phase in phases:
            deadline = time.time() + phase.duration_s

            async def worker(phase: Phase = phase, deadline: float = deadline) -> None:
                nonlocal sent
                while time.time() < deadline:
                    body = bodies[sent % len(bodies)]
                    sent += 1
                    started = time.time()
                    answer = await one_request(client, spec, body)  # (sample, outcome, …)
                    _, latency, ok = answer[0]
                    records.append((started, latency, ok, phase.name))

            await asyncio.gather(*(worker() for _ in range(phase.clients)))
    return records


def deploy(api: httpx.Client, config: dict[str, Any]) -> str:
    body = {"embedding_model_id": MODEL_NAME, "config": config}
    task = api_request(api, "POST", f"{TASKS}/deploy", json=body)
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while task.get("status") not in FINAL_STATUSES and time.monotonic() < deadline:
        time.sleep(0.2)
        task = api_request(api, "GET", f"{TASKS}/deploy/{task['id']}")
    metadata = task.get("metadata") or {}
    if task.get("status") != "done" or not metadata.get("revision_id"):
        raise BenchError(f"the autoscaled deploy did not complete: {task}")
    return str(metadata["revision_id"])


def watch_replicas(
    api: httpx.Client, revision_id: str, stop: threading.Event, seen: list[tuple[float, int, str]]
) -> None:
    path = f"/api/v1/workloads/inferences/revisions/{revision_id}"
    while not stop.is_set():
        try:
            revision = api.get(path).json()
            seen.append(
                (time.time(), int(revision["runningPods"]), revision.get("phaseMessage") or "")
            )
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        stop.wait(POLL_S)


def decisions(log_path: Path, revision_id: str) -> list[tuple[float, str]]:
    """The supervisor's scaling decisions for the revision in the server log: (epoch, "1 → 2")."""
    found = []
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            if "greenroom.reconcile" not in line or f"revision {revision_id}: " not in line:
                continue
            with contextlib.suppress(ValueError):
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                found.append((at, line.split(f"{revision_id}: ", 1)[1].split(" replicas")[0]))
    return found


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def first_at(seen: list[tuple[float, int, str]], since: float, condition: Any) -> float | None:
    return next((at for at, ready, _ in seen if at >= since and condition(ready)), None)


def report(
    phases: list[Phase],
    started: float,
    records: list[Record],
    seen: list[tuple[float, int, str]],
    decided: list[tuple[float, str]],
) -> None:
    step_up = started + phases[0].duration_s
    step_down = step_up + phases[1].duration_s
    print("\nthe supervisor's decisions (s from the start of the load):")
    for at, change in decided:
        print(f"  {at - started:7.1f} s  {change}")
    print("\nready replicas over time (s from the start of the load; changes only):")
    last = None
    for at, ready, message in seen:
        if ready != last:
            note = f"  ({message})" if message else ""
            print(f"  {at - started:7.1f} s  {ready}{note}")
            last = ready
    two_at = first_at(seen, step_up, lambda n: n >= 2)
    one_at = first_at(seen, step_down, lambda n: n == 1)
    up = f"{two_at - step_up:.1f} s" if two_at else "never"
    down = f"{one_at - step_down:.1f} s" if one_at else "not within the run"
    print(f"\nload step to {phases[1].clients} clients at {step_up - started:.1f} s;")
    print(f"  second replica ready after: {up}")
    print(f"  back to one replica after the step down: {down}")

    def window(name: str, low: float, high: float) -> None:
        chosen = [r for r in records if low <= r[0] < high]
        latencies = [r[1] for r in chosen if r[2]]
        failed = sum(not r[2] for r in chosen)
        rate = len(chosen) / (high - low) if high > low else 0.0
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(
            f"  {name:<34} {len(chosen):6d} req {rate:7.1f}/s  p50 {p50:7.1f} ms"
            f"  p99 {p99:7.1f} ms  failed {failed}"
        )

    print("\nphase                                 requests      rate      p50           p99")
    window("1 client, before", started, step_up)
    if two_at:
        window(f"{phases[1].clients} clients, 1 replica", step_up, two_at)
        window(f"{phases[1].clients} clients, 2 replicas", two_at, step_down)
    else:
        window(f"{phases[1].clients} clients", step_up, step_down)
    window("1 client, after", step_down, step_down + phases[2].duration_s)
    failed = sum(not r[2] for r in records)
    print(f"\nrequests: {len(records)}, failed: {failed}  ({'OK' if failed == 0 else 'FAILED'})")
    print("(one noisy shared machine: the load generator runs on the same cores)")


def run_benchmark(args: argparse.Namespace, data_dir: Path) -> None:
    prepare_data_dir(data_dir)
    config = {
        "threads": 1,
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": args.target,
        "upscale_delay_s": args.upscale_delay_s,
        "downscale_delay_s": args.downscale_delay_s,
    }
    phases = [
        Phase("low", 1, args.low_s),
        Phase("high", args.clients, args.high_s),
        Phase("after", 1, args.after_s),
    ]
    sentences = tuple(make_sentences())
    with (
        running_server(data_dir, args.runtime) as server,
        httpx.Client(base_url=server.base_url, headers=AUTH_HEADERS, timeout=30.0) as api,
    ):
        progress(f"deploying {MODEL_NAME} with {config}")
        revision_id = deploy(api, config)
        progress(
            f"revision {revision_id} live; load: {[(p.clients, p.duration_s) for p in phases]}"
        )
        seen: list[tuple[float, int, str]] = []
        stop = threading.Event()
        watcher = threading.Thread(
            target=watch_replicas, args=(api, revision_id, stop, seen), daemon=True
        )
        context = multiprocessing.get_context("spawn")
        with context.Pool(1, initializer=ignore_sigint) as pool:
            started = time.time()
            watcher.start()
            try:
                records = pool.apply(run_phases, (server.base_url, phases, sentences))
                time.sleep(POLL_S * 2)
            finally:
                stop.set()
                watcher.join()
        decided = decisions(server.log_path, revision_id)
    report(phases, started, records, seen, decided)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, help="kept (its ONNX cache); a temp dir if not given"
    )
    parser.add_argument(
        "--runtime",
        choices=["local", "ray"],
        default="local",
        help="runtime backend of the server, passed as GREENROOM_RUNTIME (ray: a private "
        "local Ray unless RAY_ADDRESS is set); default: %(default)s",
    )
    parser.add_argument(
        "--clients", type=int, default=32, help="clients of the high phase (%(default)s)"
    )
    parser.add_argument(
        "--low-s", type=float, default=10.0, help="seconds at 1 client first (%(default)s)"
    )
    parser.add_argument(
        "--high-s", type=float, default=40.0, help="seconds at --clients (%(default)s)"
    )
    parser.add_argument(
        "--after-s", type=float, default=25.0, help="seconds at 1 client after (%(default)s)"
    )
    parser.add_argument(
        "--target",
        type=float,
        default=2.0,
        help="target_ongoing_requests per replica (%(default)s)",
    )
    parser.add_argument(
        "--upscale-delay-s", type=float, default=3.0, help="upscale_delay_s (%(default)s)"
    )
    parser.add_argument(
        "--downscale-delay-s", type=float, default=10.0, help="downscale_delay_s (%(default)s)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_in_data_dir(run_benchmark, args, "greenroom-autoscale-")


if __name__ == "__main__":
    sys.exit(main())
