"""Security benchmark for greenroom (issue 9): prints figures, it is not a test.

`greenroom serve` (default model all-minilm-l6-v2, ONNX fp32, 1 replica, the local runtime), with
the load from a separate process (httpx.AsyncClient):

1. `/healthz` during the largest allowed requests (item 4): while one client sends 8 MiB bodies
   (one string of words; one giant word; 2048 strings of 4 KiB each), another GETs `/healthz`
   back to back; its p50, p99 and worst latency, and how long each large request took.
2. Fairness (item 7): a heavy token keeps `--heavy-concurrency` (8) requests of 2048 sentences in
   flight, saturating the model; a light token sends one sentence at a time. The light client's
   p50 and p99 (goal: p99 under 1 s), and the answers each token got.

With `--baseline-src DIR` (the `src/` of the code before the fix, e.g. `git archive bf25e6a src |
tar -x -C /tmp/gr-before` and DIR=/tmp/gr-before/src) everything is measured against that code
too (the server runs with PYTHONPATH=DIR) and printed side by side.
Every process started here is stopped at the end, also on Ctrl-C or an error.
Run: `.venv/bin/python bench/security.py --data-dir /tmp/gr-bench-security` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import httpx
import numpy as np
import orjson
from serving import (
    AUTH_HEADERS,
    MODEL_NAME,
    BenchError,
    Server,
    ignore_sigint,
    make_sentences,
    progress,
    running_server,
)

MiB = 1024 * 1024
BODY_BYTES = 8 * MiB - 4096  # the largest body `/v1/embeddings` takes, less a margin
MANY_ITEMS = 2048
HEAVY_ITEMS = 2048
REQUEST_TIMEOUT_S = 600.0
LIGHT_GOAL_P99_S = 1.0


@dataclass(frozen=True)
class EdgeSpec:
    base_url: str
    body: bytes
    headers: dict[str, str]
    rounds: int


@dataclass
class EdgeResult:
    healthz_ms: list[float] = field(default_factory=list)
    large_s: list[float] = field(default_factory=list)
    large_status: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class FairnessSpec:
    base_url: str
    heavy_token: str
    light_token: str
    heavy_concurrency: int
    duration_s: float
    warmup_s: float
    sentences: tuple[str, ...]


@dataclass
class FairnessResult:
    light_s: list[float] = field(default_factory=list)
    light_status: Counter[str] = field(default_factory=Counter)
    heavy_status: Counter[str] = field(default_factory=Counter)
    light_unfinished_s: float = 0.0  # how long the light request open at the end had waited


# ----- bodies ---------------------------------------------------------------------------------
def largest_bodies(sentences: list[str]) -> dict[str, bytes]:
    """8 MiB request bodies: one string of words, one giant word, 2048 strings of 4 KiB."""
    text = " ".join(sentences)
    words = (text * (BODY_BYTES // len(text) + 1))[: BODY_BYTES - 64]
    per_item = (BODY_BYTES - 64) // MANY_ITEMS - 4
    items = [(text * (per_item // len(text) + 1))[i : i + per_item] for i in range(MANY_ITEMS)]
    return {
        "one 8 MiB string of words": _body(words),
        "one 8 MiB giant word": _body("a" * (BODY_BYTES - 64)),
        f"{MANY_ITEMS} strings of {per_item / 1024:.0f} KiB": _body(items),
    }


def _body(value: str | list[str]) -> bytes:
    body = orjson.dumps({"model": MODEL_NAME, "input": value})
    assert len(body) <= 8 * MiB, len(body)
    return body


# ----- the load generator: runs in its own process ---------------------------------------------
def run_edge(spec: EdgeSpec) -> EdgeResult:
    return asyncio.run(_edge(spec))


async def _edge(spec: EdgeSpec) -> EdgeResult:
    result = EdgeResult()
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    async with (
        httpx.AsyncClient(base_url=spec.base_url, timeout=timeout) as large,
        httpx.AsyncClient(base_url=spec.base_url, timeout=timeout) as probe,
    ):
        done = asyncio.Event()

        async def send_large() -> None:
            try:
                for _ in range(spec.rounds):
                    started = time.perf_counter()
                    try:
                        response = await large.post(
                            "/v1/embeddings", content=spec.body, headers=spec.headers
                        )
                        result.large_status[str(response.status_code)] += 1
                    except httpx.HTTPError as exc:
                        result.large_status[type(exc).__name__] += 1
                    result.large_s.append(time.perf_counter() - started)
            finally:
                done.set()

        async def probe_healthz() -> None:
            await asyncio.sleep(0.05)  # the large body is on its way
            while not done.is_set():
                started = time.perf_counter()
                await probe.get("/healthz")
                result.healthz_ms.append(1000 * (time.perf_counter() - started))
                await asyncio.sleep(0.005)

        await asyncio.gather(send_large(), probe_healthz())
    return result


def run_fairness(spec: FairnessSpec) -> FairnessResult:
    return asyncio.run(_fairness(spec))


async def _fairness(spec: FairnessSpec) -> FairnessResult:
    result = FairnessResult()
    heavy_bodies = [
        _body([spec.sentences[(start + i) % len(spec.sentences)] for i in range(HEAVY_ITEMS)])
        for start in range(spec.heavy_concurrency)
    ]
    limits = httpx.Limits(max_connections=spec.heavy_concurrency + 1)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    heavy_headers = {"content-type": "application/json", **bearer(spec.heavy_token)}
    light_headers = {"content-type": "application/json", **bearer(spec.light_token)}
    async with httpx.AsyncClient(base_url=spec.base_url, limits=limits, timeout=timeout) as client:
        deadline = time.perf_counter() + spec.warmup_s + spec.duration_s
        measure_from = time.perf_counter() + spec.warmup_s

        async def heavy(body: bytes) -> None:
            while time.perf_counter() < deadline:
                try:
                    response = await client.post(
                        "/v1/embeddings", content=body, headers=heavy_headers
                    )
                    result.heavy_status[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    result.heavy_status[type(exc).__name__] += 1

        async def light() -> None:
            index = 0
            while time.perf_counter() < deadline:
                body = _body(spec.sentences[index % len(spec.sentences)])
                index += 1
                started = time.perf_counter()
                try:
                    remaining = max(deadline - started, 0.01)
                    response = await asyncio.wait_for(
                        client.post("/v1/embeddings", content=body, headers=light_headers),
                        remaining,
                    )
                except TimeoutError:
                    result.light_unfinished_s = time.perf_counter() - started
                    return
                if started >= measure_from:
                    result.light_status[str(response.status_code)] += 1
                    if response.status_code == 200:
                        result.light_s.append(time.perf_counter() - started)

        heavy_tasks = [asyncio.create_task(heavy(body)) for body in heavy_bodies]
        await light()
        for task in heavy_tasks:
            task.cancel()
        await asyncio.gather(*heavy_tasks, return_exceptions=True)
    return result


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ----- the driver ------------------------------------------------------------------------------
@contextlib.contextmanager
def server_for(data_dir: Path, baseline_src: Path | None) -> Iterator[Server]:
    """`greenroom serve` of this checkout, or of `baseline_src` (PYTHONPATH) in its own data dir."""
    saved = os.environ.get("PYTHONPATH")
    if baseline_src is not None:
        os.environ["PYTHONPATH"] = str(baseline_src)
    try:
        with running_server(data_dir, "local") as server:
            yield server
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def new_token(server: Server, name: str) -> str:
    body = {"name": name, "scopes": ["infer"]}
    response = httpx.post(f"{server.base_url}/v1/tokens", json=body, headers=AUTH_HEADERS)
    if response.status_code != 201:
        raise BenchError(f"Creating a token failed: {response.status_code} {response.text}")
    return response.json()["token"]


def measure(pool: Pool, args: argparse.Namespace, server: Server, label: str) -> dict[str, object]:
    sentences = make_sentences()
    figures: dict[str, object] = {}
    headers = {"content-type": "application/json", **AUTH_HEADERS}
    for name, body in largest_bodies(sentences).items():
        progress(f"[{label}] /healthz during {name} ({len(body) / MiB:.1f} MiB)")
        spec = EdgeSpec(server.base_url, body, headers, rounds=args.rounds)
        figures[name] = pool.apply(run_edge, (spec,))
    progress(
        f"[{label}] fairness: {args.heavy_concurrency} x {HEAVY_ITEMS} sentences vs one "
        f"sentence, {args.warmup:.0f} s warm-up + {args.duration:.0f} s"
    )
    fairness = FairnessSpec(
        server.base_url,
        new_token(server, "heavy"),
        new_token(server, "light"),
        args.heavy_concurrency,
        args.duration,
        args.warmup,
        tuple(sentences),
    )
    figures["fairness"] = pool.apply(run_fairness, (fairness,))
    return figures


def run(args: argparse.Namespace, data_dir: Path) -> dict[str, dict[str, object]]:
    runs: dict[str, Path | None] = {}
    if args.baseline_src is not None:
        runs["before"] = args.baseline_src.expanduser().resolve()
    runs["after"] = None
    (data_dir / "onnx").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, object]] = {}
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1, initializer=ignore_sigint) as pool:
        pool.apply(os.getpid)
        for label, src in runs.items():
            own = data_dir / label
            own.mkdir(exist_ok=True)
            if not (own / "onnx").exists():
                (own / "onnx").symlink_to(data_dir / "onnx")  # one ONNX export for both
            with server_for(own, src) as server:
                results[label] = measure(pool, args, server, label)
    return results


# ----- output ----------------------------------------------------------------------------------
def percentiles(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return math.nan, math.nan, math.nan
    p50, p99 = np.percentile(values, [50, 99])
    return float(p50), float(p99), max(values)


def print_report(results: dict[str, dict[str, object]]) -> None:
    labels = list(results)
    print("\ngreenroom security benchmark (issue 9)")
    print("\n/healthz while the largest allowed requests are served (ms: p50 / p99 / worst)")
    for name in results[labels[0]]:
        if name == "fairness":
            continue
        print(f"  {name}")
        for label in labels:
            edge: EdgeResult = results[label][name]  # type: ignore[assignment]
            p50, p99, worst = percentiles(edge.healthz_ms)
            large = ", ".join(f"{s:.1f}" for s in edge.large_s)
            print(
                f"    {label:6} /healthz {p50:7.1f} / {p99:7.1f} / {worst:7.1f}  "
                f"({len(edge.healthz_ms)} probes); the request took {large} s, "
                f"answers {dict(edge.large_status)}"
            )
    print("\nfairness: a light token's single sentence behind a heavy token's backlog (s)")
    for label in labels:
        fair: FairnessResult = results[label]["fairness"]  # type: ignore[assignment]
        p50, p99, worst = percentiles(fair.light_s)
        verdict = "goal met" if p99 < LIGHT_GOAL_P99_S else "goal missed"
        unfinished = ""
        if fair.light_unfinished_s:
            unfinished = f", the last one still waiting after {fair.light_unfinished_s:.1f} s"
        print(
            f"  {label:6} light p50 {p50:.3f}  p99 {p99:.3f}  worst {worst:.3f}  "
            f"({len(fair.light_s)} answered{unfinished}; {verdict}: p99 < {LIGHT_GOAL_P99_S:.0f} s)"
        )
        print(f"         answers: light {dict(fair.light_status)}, heavy {dict(fair.heavy_status)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the security fixes of issue 9: /healthz during the largest "
        "requests, and one client's latency behind another's backlog. Prints figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="state and ONNX cache")
    parser.add_argument(
        "--baseline-src", type=Path, default=None, help="src/ of the code before the fix"
    )
    parser.add_argument("--rounds", type=int, default=2, help="each large request, this often")
    parser.add_argument("--heavy-concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="fairness window, seconds")
    parser.add_argument("--warmup", type=float, default=10.0, help="fairness warm-up, seconds")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="greenroom-bench-security-"))
    data_dir = data_dir.expanduser().resolve()
    try:
        print_report(run(args, data_dir))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process started here was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
