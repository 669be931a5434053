"""Which transport should the router use to reach a Ray Serve replica? Prints figures.

One revision of the default model (all-MiniLM-L6-v2, ONNX fp32, 1 replica, threads = cores) on a
private local Ray, reached three ways with the same token ids:

(a) protocol: the replica protocol server inside the Serve replica (`ReplicaClient`, one
    connection per concurrent caller), what the router uses for local replicas;
(b) handle:   the Serve deployment handle (`ServeHandleClient` → `TransportReplica.embed`);
(c) http:     Serve's HTTP proxy (`POST /greenroom-<revision>`, the same binary payload).

(b) and (c) are the benchmark's own (`bench/ray_transports.py`); the router uses (a).

Single-sentence and 16-sentence batches at concurrency 1 and 8, each for `--seconds`. With
`--model <a tiny model dir>` the engine costs next to nothing and the figures are the transports'.
Run: `.venv/bin/python bench/ray_transport.py` (about a minute plus Ray's start).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
from tokenizers import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from ray_transports import ServeHandleClient, TransportReplica

from greenroom.config import DEFAULT_MODEL_SOURCE, Settings
from greenroom.registry.weights import content_hash, resolve_source
from greenroom.runtime import protocol
from greenroom.runtime.base import RevisionSpec
from greenroom.runtime.protocol import ReplicaClient
from greenroom.runtime.ray import RayRuntime, app_name

SENTENCE = "The quick brown fox jumps over the lazy dog while the router batches requests."
Embed = Callable[[np.ndarray, np.ndarray], Awaitable[np.ndarray]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def batch(tokenizer: Tokenizer, size: int) -> tuple[np.ndarray, np.ndarray]:
    encodings = tokenizer.encode_batch([f"{SENTENCE} {i}" for i in range(size)])
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    return lengths, np.concatenate([np.array(e.ids, dtype=np.int64) for e in encodings])


async def measure(
    make_embed: Callable[[], Embed],
    inputs: tuple[np.ndarray, np.ndarray],
    concurrency: int,
    seconds: float,
) -> tuple[float, float]:
    """Requests per second and median latency (ms) of `concurrency` callers for `seconds`."""
    latencies: list[float] = []
    callers = [make_embed() for _ in range(concurrency)]
    for embed in callers:  # connect and warm each caller
        await embed(*inputs)
    end = time.perf_counter() + seconds

    async def loop(embed: Embed) -> None:
        while (now := time.perf_counter()) < end:
            vectors = await embed(*inputs)
            assert vectors.shape[0] == len(inputs[0])
            latencies.append(time.perf_counter() - now)

    started = time.perf_counter()
    await asyncio.gather(*(loop(embed) for embed in callers))
    return len(latencies) / (time.perf_counter() - started), statistics.median(latencies) * 1e3


async def main(args: argparse.Namespace) -> None:
    data_dir = Path(args.data_dir)
    http_port = free_port()
    settings = Settings(data_dir=data_dir, runtime="ray", ray_http_port=http_port)
    model = resolve_source(args.model)
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    started = time.perf_counter()
    runtime = RayRuntime(settings, keep_applications=False, replica_class=TransportReplica)
    try:
        await runtime.open()
        spec = RevisionSpec(
            "bench",
            model,
            content_hash(model),
            threads=os.cpu_count() or 1,
            secret=secrets.token_hex(32),
        )
        await runtime.start_revision(spec)
        while not runtime.ready_replicas("bench"):
            await asyncio.sleep(0.2)
        print(f"Ray up and replica ready in {time.perf_counter() - started:.1f} s")
        (replica,) = runtime.ready_replicas("bench")
        assert replica.endpoint is not None
        handle = ServeHandleClient("bench")
        http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{http_port}", timeout=30,
            limits=httpx.Limits(max_keepalive_connections=16),
        )  # fmt: skip
        reply = struct.Struct("<BII")

        def protocol_embed() -> Embed:
            return ReplicaClient(*replica.endpoint, spec.secret).embed  # type: ignore[misc]

        def handle_embed() -> Embed:
            return handle.embed

        def http_embed() -> Embed:
            async def embed(lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
                body = protocol.encode_embed(lengths, flat_ids)[4:]
                response = await http.post(
                    f"/{app_name('bench')}",
                    content=body,
                    headers={"authorization": f"Bearer {spec.secret}"},
                )
                response.raise_for_status()
                dim = int(response.headers["x-dimension"])
                return np.frombuffer(response.content, dtype="<f4").reshape(-1, dim)

            return embed

        assert reply.size  # the protocol's reply header, for the curious
        transports = {"protocol": protocol_embed, "handle": handle_embed, "http": http_embed}
        print(f"{'transport':<10}{'batch':>6}{'conc':>6}{'req/s':>10}{'sent/s':>10}{'p50 ms':>10}")
        for size in (1, 16):
            inputs = batch(tokenizer, size)
            for concurrency in (1, 8):
                for name, make in transports.items():
                    rate, p50 = await measure(make, inputs, concurrency, args.seconds)
                    print(
                        f"{name:<10}{size:>6}{concurrency:>6}{rate:>10.1f}{rate * size:>10.1f}"
                        f"{p50:>10.2f}",
                        flush=True,
                    )
        await http.aclose()
    finally:
        await runtime.close()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_SOURCE,
        help="model source (a sentence-transformers directory); a tiny model isolates the "
        "transport's own cost from the engine's",
    )
    parser.add_argument(
        "--data-dir", default="/tmp/gr-bench-ray", help="ONNX export cache in DATA_DIR/onnx"
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
