"""Where a single-sentence request spends its time inside the API process: prints figures, it
is not a test.

`bench/http_overhead.py` measures the HTTP path from outside; on a noisy machine the replica's
own latency moves by a millisecond from round to round, more than the changes to the path being
measured. This bench looks inside instead: `greenroom serve` starts with
`bench/request_trace/sitecustomize.py` on its `PYTHONPATH`, which timestamps each stage of the
embeddings path (the HTTP read, the edge, authentication, tokenising, the hand-off to the batch
worker, the replica call, the response's writes). One load-generator process sends single
sentences at concurrency 1 (`bench/serving.py`'s); the bench prints the median of each stage over
every request, for each source tree given (`--src`, default this checkout's; old code and new in
interleaved rounds), and the API process's time on the request's path: from reading the request
to writing the response, less the replica's round trip.

It also times tokenising one sentence in this process right after another and after a pause of
10 ms: on a virtual machine whose cores other guests share, code that ran 10 ms ago runs several
times slower (its caches were taken), and at concurrency 1 every request finds the API process so.

    .venv/bin/python bench/request_trace.py --data-dir /tmp/gr-bench
    git worktree add /tmp/old HEAD~1
    .venv/bin/python bench/request_trace.py --data-dir /tmp/gr-bench --src /tmp/old/src --src src
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import serving
from serving import BenchError, prepare_data_dir, progress

TRACER_DIR = Path(__file__).resolve().parent / "request_trace"
# The stages in the order a request passes them: (from event, to event, what the gap is).
# `write` fires twice: the head (held by HeadJoiningTransport) and the body, which sends both.
STAGES = (
    ("read>", "edge>", "HTTP parse, the request's task starts (uvicorn)"),
    ("edge>", "auth>", "edge: path, limits"),
    ("auth>", "auth<", "authenticate the token"),
    ("auth<", "embed>", "read and parse the body"),
    ("embed>", "tokenize>", "route the served name"),
    ("tokenize>", "tokenize<", "tokenise"),
    ("tokenize<", "queue>", "to the queue"),
    ("queue>", "batch>", "hand-off: the batch worker wakes"),
    ("batch>", "batch<", "form the batch"),
    ("batch<", "replica>", "batch arrays, to the replica client"),
    ("replica>", "replica<", "the replica's round trip (not the API's own)"),
    ("replica<", "queue<", "the answer back to the request"),
    ("queue<", "embed<", "dimensions, usage"),
    ("embed<", "write>", "render the response, write its head (held)"),
    ("write>", "write>2", "the body's write begins"),
    ("write>2", "write<2", "head and body in one socket write"),
    ("write<2", "edge<", "after the response: counting it (off the path)"),
)
PATH_START, PATH_END = "read>", "write<2"
REPLICA = ("replica>", "replica<")
SKIP_SHARE = 0.2  # the first requests of a run (the warm-up) are left out
PAUSE_S = 0.01  # the pause before a "cold" tokenisation


def split_requests(lines: Sequence[str]) -> list[dict[str, int]]:
    """One dict of event -> time (ns) per request; a request starts at the first read after the
    previous one's edge ended; the second `write` events get a `2`."""
    requests: list[dict[str, int]] = []
    current: dict[str, int] | None = None
    for line in lines:
        name, _, at = line.partition(" ")
        if name == "read>" and (current is None or "edge<" in current):
            current = {}
            requests.append(current)
        if current is None:
            continue
        if name in current and name.startswith("write"):
            name += "2"
        current.setdefault(name, int(at))
    return [r for r in requests if all(key in r for key in ("read>", "replica<", "write<2"))]


def stage_medians(requests: list[dict[str, int]]) -> dict[str, float]:
    """Microseconds, median over the requests that have both events of a stage."""
    medians: dict[str, float] = {}
    for start, end, _ in STAGES:
        gaps = [(r[end] - r[start]) / 1000 for r in requests if start in r and end in r]
        medians[start + end] = float(np.median(gaps)) if gaps else float("nan")
    own = [
        (r[PATH_END] - r[PATH_START] - (r[REPLICA[1]] - r[REPLICA[0]])) / 1000
        for r in requests
        if REPLICA[0] in r
    ]
    medians["path"] = float(np.median(own))
    return medians


def traced_run(
    pool: multiprocessing.pool.Pool, data_dir: Path, src: str, args: argparse.Namespace
) -> tuple[dict[str, float], float, int]:
    """One server with the tracer (and `src` first on its path): stage medians, the client's
    p50 in ms and the requests traced."""
    prepare_data_dir(data_dir)
    trace_file = data_dir / "logs" / "request-trace.txt"
    trace_file.unlink(missing_ok=True)
    path = [str(TRACER_DIR), *([str(Path(src).resolve())] if src else [])]
    extra_env = {"PYTHONPATH": os.pathsep.join(path), "GREENROOM_BENCH_TRACE": str(trace_file)}
    with serving.running_server(data_dir, "local", extra_env) as server:
        serving.deploy_and_wait(server, {"threads": args.threads})
        spec = serving.LoadSpec(
            "c", server.base_url, 1, 1, args.duration, serving.WARMUP_S,
            tuple(serving.make_sentences()),
        )  # fmt: skip
        result = serving.run_scenario(pool, server, spec)
    if not trace_file.exists():
        raise BenchError(f"the server wrote no trace to {trace_file}")
    requests = split_requests(trace_file.read_text().splitlines())
    requests = requests[int(len(requests) * SKIP_SHARE) :]
    if not requests:
        raise BenchError("the trace holds no whole request")
    return stage_medians(requests), result.p50_ms, len(requests)


def tokenizing_after_a_pause(rounds: int = 300) -> tuple[float, float]:
    """Median microseconds to tokenise one sentence right after another, and after a pause."""
    from greenroom.serving.tokenizing import cut_rule, encode_texts, load_tokenizer

    model = serving.resolve_model()
    tokenizer = load_tokenizer(model.path / "tokenizer.json", model.max_seq_length)
    rule = cut_rule(tokenizer)
    sentences = serving.make_sentences()
    hot, cold = [], []
    for n in range(rounds):
        text = [sentences[n % len(sentences)]]
        time.sleep(PAUSE_S)
        started = time.perf_counter_ns()
        encode_texts(tokenizer, text, rule=rule)
        middle = time.perf_counter_ns()
        encode_texts(tokenizer, [sentences[(n + 1) % len(sentences)]], rule=rule)
        cold.append((middle - started) / 1000)
        hot.append((time.perf_counter_ns() - middle) / 1000)
    return float(np.median(hot)), float(np.median(cold))


def run(args: argparse.Namespace, data_dir: Path) -> None:
    sources: list[str] = args.src or [""]
    runs: dict[str, list[tuple[dict[str, float], float, int]]] = {src: [] for src in sources}
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1, initializer=serving.ignore_sigint) as pool:
        for number in range(args.rounds):
            for src in sources:
                progress(f"round {number + 1} of {args.rounds}: {src or 'this checkout'}")
                runs[src].append(traced_run(pool, data_dir, src, args))
    hot, cold = tokenizing_after_a_pause()
    names = [src or "this checkout" for src in sources]
    print(
        f"\nsingle sentences at concurrency 1, {args.duration:.0f} s a run, {args.rounds} "
        f"run(s) per source, {args.threads} engine thread(s); microseconds, median of each "
        "run's median"
    )
    width = max(14, *(len(name) for name in names))
    print(f"{'stage':<52}" + "".join(f"{name:>{width + 2}}" for name in names))
    for start, end, what in STAGES:
        cells = [np.median([medians[start + end] for medians, _, _ in runs[s]]) for s in sources]
        print(f"{what:<52}" + "".join(f"{cell:>{width + 2}.1f}" for cell in cells))
    rows = (
        ("the API process on the request's path", lambda r: r[0]["path"]),
        ("client p50, ms", lambda r: r[1]),
        ("requests traced", lambda r: r[2]),
    )
    for what, value in rows:
        cells = [np.median([value(one) for one in runs[s]]) for s in sources]
        print(f"{what:<52}" + "".join(f"{cell:>{width + 2}.1f}" for cell in cells))
    print(
        f"\ntokenising one sentence in this process: {hot:.1f} us right after another, "
        f"{cold:.1f} us after a {PAUSE_S * 1000:.0f}-ms pause ({cold / hot:.1f}x)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The stages of a single-sentence request inside the API process, traced. "
        "Prints figures; not a test.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--src",
        action="append",
        help="a source tree (the `src` directory of a worktree) to run the server from, put "
        "first on its PYTHONPATH; repeat to compare trees in interleaved rounds; default: this "
        "checkout's",
    )
    parser.add_argument("--rounds", type=int, default=2, help="runs per source tree")
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds a run")
    parser.add_argument("--threads", type=int, default=1, help="engine threads per replica")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="the server's data directory; reuse one to skip the ONNX export (DATA_DIR/onnx is "
        "kept, DATA_DIR/greenroom.db* deleted before each run); default: a temporary directory",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.threads < 1:
        parser.error("--rounds, --duration and --threads must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return serving.run_in_data_dir(run, args, "greenroom-trace-")


if __name__ == "__main__":
    sys.exit(main())
