"""Where the HTTP path's latency goes at concurrency 1: prints figures, it is not a test.

One `greenroom serve` with the default model (optionally redeployed with `--threads` engine
threads), a replica of our own started as the supervisor starts one, then `--rounds` interleaved
rounds of three measurements, `--duration` s each after a warm-up:

1. single sentences through HTTP at concurrency 1 (`bench/serving.py`'s load generator, in its
   own process), with the server's own metrics for the same window: the mean time in the
   handler and the mean round trip of a batch to its replica, measured inside the API process;
2. our own replica called directly (`ReplicaClient`, pre-tokenised), from this process;
3. the server's replica called directly, its port and secret read from the store.

The gap between 1 and 2 is the HTTP path's overhead (issue 13's goal: ≤ 1 ms p50); 3 against the
round trip of 1 tells whether the server's replica or the API process is the slower part.
Run: `.venv/bin/python bench/http_overhead.py --data-dir /tmp/gr-bench` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import os
import secrets
import sys
from pathlib import Path

import serving
from serving import MODEL_NAME, BenchError, prepare_data_dir, progress


def redeploy(server: serving.Server, threads: int) -> None:
    """The default model again, with `threads` engine threads per replica."""
    serving.deploy_and_wait(server, {"threads": threads})
    progress(f"redeployed {MODEL_NAME} with {threads} engine thread(s)")


def live_replica(server: serving.Server) -> tuple[int, str]:
    """Port and secret of the live revision's ready replica, from the store."""
    from greenroom.store.db import Store
    from greenroom.workloads.models import LiveRevision, Revision

    store = Store(f"sqlite:///{server.data_dir / 'greenroom.db'}")
    try:
        with store.session_scope() as session:
            live = session.get(LiveRevision, MODEL_NAME)
            revision = session.get(Revision, live.revision_id) if live else None
            if revision is None:
                raise BenchError(f"{MODEL_NAME} has no live revision")
            ready = [r for r in revision.replicas if r.get("state") == "ready"]
            if not ready:
                raise BenchError("the live revision reports no ready replica")
            return int(ready[0]["port"]), revision.replica_secret
    finally:
        store.dispose()


def run(args: argparse.Namespace, data_dir: Path) -> None:
    sentences = serving.make_sentences()
    model = serving.resolve_model()
    model = dataclasses.replace(model, threads=args.threads or model.threads)
    token_ids = serving.tokenize(model, sentences)
    prepare_data_dir(data_dir)  # a first start: the live config is the default one
    spawn = multiprocessing.get_context("spawn")
    with spawn.Pool(1, initializer=serving.ignore_sigint) as pool:
        pool.apply(os.getpid)
        with serving.running_server(data_dir, "local") as server:
            if args.threads:
                redeploy(server, args.threads)
            port, secret = live_replica(server)
            own_secret = secrets.token_hex(32)
            log_path = data_dir / "logs" / "bench-own-replica.log"
            with serving.own_replica(model, data_dir / "onnx", log_path, own_secret) as own:
                print(
                    f"\nsingle sentences at concurrency 1, {args.duration:.0f} s each, "
                    f"{model.threads} engine thread(s) per replica (ms)"
                )
                print(
                    "round  http p50  handler  round trip  own replica p50  "
                    "server's replica p50  overhead p50  API CPU/request"
                )
                for number in range(args.rounds):
                    spec = serving.LoadSpec(
                        "c", server.base_url, 1, 1, args.duration, serving.WARMUP_S,
                        tuple(sentences),
                    )  # fmt: skip
                    http = serving.run_scenario(pool, server, spec)
                    direct = asyncio.run(
                        serving.direct_latency(own, own_secret, token_ids, args.duration)
                    )
                    theirs = asyncio.run(
                        serving.direct_latency(port, secret, token_ids, args.duration)
                    )
                    print(
                        f"{number:5d}  {http.p50_ms:8.2f}  {http.server_handler_ms:7.2f}  "
                        f"{http.replica_round_trip_ms:10.2f}  {direct.p50_ms:15.2f}  "
                        f"{theirs.p50_ms:20.2f}  {http.p50_ms - direct.p50_ms:12.2f}  "
                        f"{http.server_cpu_ms_per_request:15.2f}"
                    )
    print(
        "\nhandler and round trip are means from the server's metrics (the round trip is "
        "measured around ReplicaClient.embed in the API process); overhead = http p50 - own "
        "replica p50 (goal <= 1 ms); API CPU/request: the API process's CPU time over the "
        "round (warm-up included) per request it handled"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The HTTP path's latency at concurrency 1 against direct replica calls, in "
        "interleaved rounds. Prints figures; not a test.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--duration", type=float, default=6.0, help="measured seconds of each measurement"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="redeploy the default model with this many engine threads per replica (and start "
        "our own replica so); 0 keeps the default",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="the server's data directory; reuse one to skip the ONNX export (DATA_DIR/onnx is "
        "kept, DATA_DIR/greenroom.db* deleted first); default: a temporary directory, removed "
        "afterwards",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.threads < 0:
        parser.error("--rounds and --duration must be positive, --threads at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return serving.run_in_data_dir(run, args, "greenroom-overhead-")


if __name__ == "__main__":
    sys.exit(main())
