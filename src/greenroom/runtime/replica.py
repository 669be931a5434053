"""A replica process: one running copy of a revision, serving the replica protocol.

Started by the local runtime's supervisor as `python -m greenroom.runtime.replica …`. It loads the
engine, embeds a warm-up batch, listens on loopback and prints one JSON line
`{"event": "ready", "port": N}` on standard output: that line is its readiness. It dies with its
parent (parent-death signal), so a killed `greenroom serve` leaves no orphans.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from greenroom.runtime import protocol
from greenroom.runtime.engines import Engine, EngineOptions, load_engine

log = logging.getLogger("greenroom.replica")
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL us when the parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid and os.getppid() != parent_pid:
        os._exit(0)


class ReplicaServer:
    """Serves one engine; inference runs on one thread so batches never contend for cores."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                payload = await protocol.read_frame(reader)
                writer.write(await self._answer(loop, payload))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the peer left, or we are shutting down: both end this connection quietly
        finally:
            writer.close()

    async def _answer(self, loop: asyncio.AbstractEventLoop, payload: bytes) -> bytes:
        op = payload[0] if payload else 0
        try:
            if op == protocol.OP_EMBED:
                lengths, flat_ids = protocol.decode_embed(payload)
                vectors = await loop.run_in_executor(
                    self.executor, self.engine.embed, lengths, flat_ids
                )
                return protocol.ok_vectors(vectors)
            if op == protocol.OP_HEALTH:
                await loop.run_in_executor(self.executor, self.engine.warm_up)
                return protocol.ok_json({"healthy": True})
            if op == protocol.OP_INFO:
                info = self.engine.info
                return protocol.ok_json(
                    {
                        "dimension": info.dimension,
                        "pid": os.getpid(),
                        "engine": self.engine.options.engine,
                    }
                )
            return protocol.error(f"unknown op {op}")
        except Exception as exc:  # reported to the caller; the replica keeps serving
            log.exception("request failed")
            return protocol.error(f"{type(exc).__name__}: {exc}")


async def serve(engine: Engine, host: str, port: int) -> None:
    server = await asyncio.start_server(ReplicaServer(engine).handle, host, port)
    bound_port = server.sockets[0].getsockname()[1]
    print(json.dumps({"event": "ready", "port": bound_port, "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run one greenroom replica.")
    parser.add_argument("--model-path", required=True, type=Path, help="model directory")
    parser.add_argument("--content-hash", required=True, help="sha256 of the model's files")
    parser.add_argument("--engine", default="onnx", choices=["onnx", "torch"])
    parser.add_argument("--quantization", default="none", choices=["none", "int8"])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads")
    parser.add_argument("--gpu", type=int, default=0, help="GPUs to use (torch engine)")
    parser.add_argument("--cache-dir", type=Path, help="ONNX export cache directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process dies")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    die_with_parent(args.parent_pid)
    options = EngineOptions(
        model_path=args.model_path,
        content_hash=args.content_hash,
        engine=args.engine,
        quantization=args.quantization,
        threads=args.threads,
        cache_dir=args.cache_dir,
        gpu=args.gpu,
    )
    engine = load_engine(options)
    engine.warm_up()
    asyncio.run(serve(engine, args.host, args.port))


if __name__ == "__main__":
    main()
