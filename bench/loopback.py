"""What one hop between two processes costs on this machine: prints figures, it is not a test.

A request through greenroom's HTTP path crosses two more process boundaries than a direct call
to a replica (client -> API -> replica -> API -> client, against client -> replica -> client),
and at concurrency 1 each crossing wakes a process that was asleep: the API process sleeps
while its replica computes, the replica while it waits. This bench measures that floor, apart
from any of greenroom's code: a forked echo process, `--messages` messages of `--size` bytes
per case, each sent after a pause of `--gaps` ms (0: the peer is still awake), over TCP on
127.0.0.1 (with TCP_NODELAY, as uvicorn and the router use it) and over a Unix socket. It prints
the median and p90 of the time `send()` takes and of the round trip.

    .venv/bin/python bench/loopback.py
    .venv/bin/python bench/loopback.py --gaps 0,10 --size 2000 --messages 500
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class HopResult:
    kind: str
    gap_ms: float
    send_us: list[float]
    round_trip_us: list[float]


def listening_socket(kind: str, directory: Path) -> tuple[socket.socket, object]:
    if kind == "tcp":
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
    else:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(directory / "echo.sock"))
    server.listen(1)
    return server, server.getsockname()


def echo_until_closed(server: socket.socket, kind: str) -> None:
    connection, _ = server.accept()
    if kind == "tcp":
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := connection.recv(65536):
        connection.sendall(data)


def measure(kind: str, gap_ms: float, size: int, messages: int) -> HopResult:
    with tempfile.TemporaryDirectory(prefix="gr-loopback-") as directory:
        server, address = listening_socket(kind, Path(directory))
        pid = os.fork()
        if pid == 0:  # the echo process
            try:
                echo_until_closed(server, kind)
            finally:
                os._exit(0)
        server.close()
        family = socket.AF_INET if kind == "tcp" else socket.AF_UNIX
        client = socket.socket(family, socket.SOCK_STREAM)
        try:
            client.connect(address)
            if kind == "tcp":
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            result = HopResult(kind, gap_ms, [], [])
            message = b"x" * size
            for _ in range(messages):
                time.sleep(gap_ms / 1000)
                started = time.perf_counter()
                client.sendall(message)
                sent = time.perf_counter()
                received = 0
                while received < size:
                    received += len(client.recv(65536))
                done = time.perf_counter()
                result.send_us.append((sent - started) * 1e6)
                result.round_trip_us.append((done - started) * 1e6)
            return result
        finally:
            client.close()
            os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="The cost of one hop between two processes (TCP loopback and a Unix "
        "socket), with the peer awake and asleep. Prints figures; not a test.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--gaps", default="0,1,10", help="pauses before each message, ms, comma-separated"
    )
    parser.add_argument("--size", type=int, default=400, help="bytes per message")
    parser.add_argument("--messages", type=int, default=300, help="messages per case")
    args = parser.parse_args()
    gaps = [float(gap) for gap in args.gaps.split(",")]
    print(f"{args.messages} messages of {args.size} bytes per case (microseconds)")
    columns = ("socket", "gap ms", "send p50", "send p90", "rtt p50", "rtt p90")
    print("  ".join(f"{column:>8}" for column in columns))
    for gap_ms in gaps:
        for kind in ("tcp", "unix"):
            hop = measure(kind, gap_ms, args.size, args.messages)
            figures = (
                *np.percentile(hop.send_us, [50, 90]),
                *np.percentile(hop.round_trip_us, [50, 90]),
            )
            print(f"{kind:>8}  {gap_ms:>8.0f}  " + "  ".join(f"{f:>8.0f}" for f in figures))


if __name__ == "__main__":
    main()
