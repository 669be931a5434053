"""A replica process: one running copy of a revision, serving the replica protocol.

Started by the local runtime's supervisor as `python -m greenroom.runtime.replica …`, with the
revision's secret as the first line of its standard input (never argv or the environment). It
loads the engine, embeds a warm-up batch, listens on loopback and prints one JSON line
`{"event": "ready", "port": N}` on standard output: that line is its readiness. Only clients that
know the secret get answers (`protocol.accept`); requests are bounded by the revision's limits
and errors carry one sentence, their details go to the replica's log. It dies with its parent
(parent-death signal), so a killed `greenroom serve` leaves no orphans. A staged revision's
replica starts with `--nice N` and lowers its own CPU priority before loading anything. Started
as `--spare ENGINE`, it imports that engine's modules and waits for its assignment (the
arguments, the secret and the log file) on standard input (`greenroom.runtime.spare`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib
import json
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from greenroom.runtime import protocol, spare
from greenroom.runtime.engines import ENGINES, Engine, EngineOptions, load_engine

log = logging.getLogger("greenroom.replica")
PR_SET_PDEATHSIG = 1
MAX_SECRET_LINE = 256
FAILED = "The replica could not embed this batch."
# A health check that finds batches in flight, the engine having started or finished one less
# than this long ago, answers at once: the batches are the proof of life. Queued behind them (a
# staged replica at a low CPU priority under load, a large model's long texts), its own warm-up
# embed could wait past the supervisor's health timeout, and a working replica would be killed.
BUSY_IS_HEALTHY_S = 300.0


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL us when the parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid and os.getppid() != parent_pid:
        os._exit(0)


class ReplicaServer:
    """Serves one engine to clients that know the revision's secret; inference runs on one
    thread so batches never contend for cores."""

    def __init__(self, engine: Engine, secret: str, *, max_batch_size: int = 32) -> None:
        self.engine = engine
        self._secret = secret
        info = engine.info
        self.limits = protocol.Limits.for_batches(
            max_batch_size, info.max_seq_length, info.vocab_size
        )
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._in_flight = 0  # embed requests queued or running (counted on the event loop)
        self._progress_at = 0.0  # monotonic time the engine last started or finished a batch

    def _embed(self, lengths: Any, flat_ids: Any) -> Any:
        """Embed on the engine thread, recording its progress (`_is_busy_and_alive`)."""
        self._progress_at = time.monotonic()
        try:
            return self.engine.embed(lengths, flat_ids)
        finally:
            self._progress_at = time.monotonic()

    def _is_busy_and_alive(self) -> bool:
        recent = time.monotonic() - self._progress_at < BUSY_IS_HEALTHY_S
        return self._in_flight > 0 and recent

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            if not await protocol.accept(reader, writer, self._secret):
                log.warning("refused a connection from %s: no proof of the secret", _peer(writer))
                return
            while True:
                try:
                    payload = await protocol.read_frame(reader, self.limits.max_request_bytes)
                except protocol.FrameTooLarge as exc:
                    log.warning("refused a frame of %d bytes from %s", exc.length, _peer(writer))
                    writer.write(protocol.error("The request is larger than this replica accepts."))
                    await writer.drain()
                    return  # its body is never read: the connection goes
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
                lengths, flat_ids = protocol.decode_embed(payload, self.limits)
                self._in_flight += 1
                try:
                    vectors = await loop.run_in_executor(
                        self.executor, self._embed, lengths, flat_ids
                    )
                finally:
                    self._in_flight -= 1
                return protocol.ok_vectors(vectors)
            if op == protocol.OP_HEALTH:
                if not self._is_busy_and_alive():
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
            return protocol.error("The replica does not know this request.")
        except protocol.RefusedRequest as exc:
            return protocol.error(str(exc))
        except Exception:  # the details stay in our log; the replica keeps serving
            log.exception("request (op %d) failed", op)
            return protocol.error(FAILED)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "an unknown peer"


def read_secret(stream: BinaryIO) -> str:
    """The revision's secret: the first line the supervisor writes to our standard input, which
    is then closed (the secret is never in argv or the environment)."""
    line = stream.readline(MAX_SECRET_LINE)
    stdin_to_devnull()
    return line.decode(errors="replace").strip()


def stdin_to_devnull() -> None:
    """fd 0 stays taken (no file lands on it), and children read nothing."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)


async def serve(engine: Engine, secret: str, host: str, port: int, max_batch_size: int) -> None:
    replica = ReplicaServer(engine, secret, max_batch_size=max_batch_size)
    server = await asyncio.start_server(replica.handle, host, port)
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
    parser.add_argument(
        "--max-batch-size", type=int, default=32, help="the revision's max batch size"
    )
    parser.add_argument(
        "--nice",
        type=niceness,
        default=0,
        help="raise this process's niceness by N (0-19) before anything starts: a staged "
        "revision's replicas yield the CPU to the live revision's",
    )
    add_spare_argument(parser)
    return parser.parse_args(argv)


def niceness(value: str) -> int:
    """`--nice`: an increment of 0 to 19 (the kernel caps the result at 19)."""
    number = int(value)
    if not 0 <= number <= 19:
        raise argparse.ArgumentTypeError(f"{number} is not between 0 and 19")
    return number


def lower_priority(increment: int) -> None:
    """Raise our niceness by `increment`. On Linux a thread's niceness is its own and new
    threads inherit their creator's, so this runs first, on the main thread, before the
    engine or our thread pool starts a thread; threads that imports already started (a BLAS
    pool of numpy's) are reniced one by one, so no thread of a staged replica runs at the
    live replicas' priority."""
    if increment <= 0:
        return
    niceness = os.nice(increment)
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return
    for task in tasks.iterdir():
        with contextlib.suppress(ValueError, OSError):  # a thread that just ended
            thread_id = int(task.name)
            if os.getpriority(os.PRIO_PROCESS, thread_id) < niceness:
                os.setpriority(os.PRIO_PROCESS, thread_id, niceness)


def parse_spare_args(argv: list[str]) -> argparse.Namespace:
    """`--spare` and `--parent-pid` alone (`--help` is `parse_args`'s)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_spare_argument(parser)
    parser.add_argument("--parent-pid", type=int, default=0)
    return parser.parse_known_args(argv)[0]


def add_spare_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--spare",
        choices=sorted(ENGINES),
        help="start as a spare for this engine instead (only --parent-pid besides): import "
        "its modules, then wait on standard input for the replica's arguments, secret and log "
        "file",
    )


def await_assignment(engine: str, parent_pid: int) -> tuple[list[str], str]:
    """As a spare: the engine's modules imported, then the replica's arguments and secret from
    standard input, with our log moved to the replica's file; exits when none comes."""
    die_with_parent(parent_pid)
    importlib.import_module(ENGINES[engine][0])
    assignment = spare.read_assignment(sys.stdin.buffer)
    stdin_to_devnull()
    if assignment is None:
        os._exit(0)  # not needed any more (its input closed)
    args, secret, log_path = assignment
    spare.log_to(log_path)
    return args, secret


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    spare_args = parse_spare_args(argv)
    secret = ""
    if spare_args.spare:
        argv, secret = await_assignment(spare_args.spare, spare_args.parent_pid)
    args = parse_args(argv)
    lower_priority(args.nice)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    die_with_parent(args.parent_pid)
    log.info(
        "replica process %d up%s", os.getpid(), " (it was the spare)" if spare_args.spare else ""
    )
    if not spare_args.spare:  # a spare had its secret with its assignment
        secret = read_secret(sys.stdin.buffer) if sys.stdin is not None else ""
    if not secret:
        log.error("no replica secret on standard input: the supervisor writes it there")
        sys.exit(2)
    options = EngineOptions(
        model_path=args.model_path,
        content_hash=args.content_hash,
        engine=args.engine,
        quantization=args.quantization,
        threads=args.threads,
        cache_dir=args.cache_dir,
        gpu=args.gpu,
    )
    started = time.perf_counter()
    engine = load_engine(options)
    loaded = time.perf_counter()
    engine.warm_up()
    log.info(
        "model loaded in %.2f s, warm-up %.2f s", loaded - started, time.perf_counter() - loaded
    )
    asyncio.run(serve(engine, secret, args.host, args.port, args.max_batch_size))
    # Nothing is left to write, and the interpreter's teardown (the engine's sessions and
    # thread pools, every module) took longer than the rest of a stop; a rollout waits for it.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
