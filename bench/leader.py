"""Supervisor take-over benchmark for greenroom: prints figures, it is not a test.

Two `greenroom serve` processes on one store (one data dir with SQLite, or one PostgreSQL database
with `--database-url`): the first start registers and deploys the default model once (or the
model at `--model-source`), one server leads the `local` runtime target and owns the replicas,
the other stands by and routes to them through the store. Clients embed through the standby's
endpoint (`--clients`, default 4) while the leader is killed with SIGKILL; its replicas die with
it, the standby takes the lead (its lock retry, `GREENROOM_LEADER_RETRY_S`, default 1 s) and starts
them again. The killed server is then started again as the new standby, and that is repeated
`--rounds` times (default 3).

Per round it prints: the take-over time (SIGKILL → the standby's "leading supervisor-local" log
line), the restart time (SIGKILL → the first 200 for a request sent after it), the longest
stretch without any 200, the 503 count and the count of every other failure (expected: 0).
Every process started here is stopped at the end, also on Ctrl-C or an error.

Run: `.venv/bin/python bench/leader.py` (SQLite in a fresh temp dir) or
     `.venv/bin/python bench/leader.py --database-url postgresql+psycopg://postgres@127.0.0.1/db`
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

LEADING = re.compile(r"^(\S+ \S+) INFO greenroom\.leadership: leading supervisor-local", re.M)
MODEL = "all-minilm-l6-v2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def leads_since(self, after: float) -> float | None:
        """Wall time of this server's first 'leading' log line after `after`, if any."""
        for match in LEADING.finditer(self.log.read_text(errors="replace")):
            moment = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if moment >= after - 0.001:
                return moment
        return None


class Servers:
    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.started: list[subprocess.Popen] = []
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "GREENROOM_DATA_DIR": str(data_dir),
            "GREENROOM_ADMIN_TOKEN": args.token,
            "GREENROOM_DEFAULT_MODEL_ID": MODEL,
            "GREENROOM_LEADER_RETRY_S": str(args.retry_s),
        }
        if args.model_source:
            self.env["GREENROOM_DEFAULT_MODEL_SOURCE"] = args.model_source
        if args.database_url:
            self.env["GREENROOM_DATABASE_URL"] = args.database_url

    def start(self, name: str) -> Server:
        port = free_port()
        log = self.data_dir / f"bench-{name}.{len(self.started)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "greenroom.cli", "serve", "--port", str(port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        self.started.append(process)
        return Server(name, port, process, log)

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.terminate()
        for process in self.started:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 300.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.05)


def ready(server: Server) -> bool:
    if server.process.poll() is not None:
        raise SystemExit(f"{server.name} exited; see {server.log}")
    try:
        return httpx.get(server.url + "/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


class Load:
    """Clients embedding through one endpoint; every answer is kept (wall clock)."""

    def __init__(self, url: str, token: str, clients: int) -> None:
        self.url, self.headers = url, {"Authorization": f"Bearer {token}"}
        self.answers: list[tuple[float, float, int]] = []  # sent, answered, status (-1: error)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        body = {"model": MODEL, "input": ["The supervisor died.", "Another one took over."]}
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                sent = time.time()
                try:
                    status = client.post(
                        f"{self.url}/v1/embeddings", json=body, headers=self.headers
                    ).status_code
                except httpx.HTTPError:
                    status = -1
                self.answers.append((sent, time.time(), status))
                if status != 200:
                    time.sleep(0.02)

    def ok_after(self, moment: float) -> int:
        return sum(1 for sent, _, status in list(self.answers) if sent > moment and status == 200)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


@dataclass
class Round:
    take_over_s: float
    restart_s: float
    gap_s: float
    requests: int
    unavailable: int
    failed: int


def leader_of(servers: list[Server], since: float) -> Server:
    leaders = [s for s in servers if s.leads_since(since) is not None]
    if len(leaders) != 1:
        raise SystemExit(f"expected one leader, found {[s.name for s in leaders]}")
    return leaders[0]


def one_round(args: argparse.Namespace, leader: Server, standby: Server) -> Round:
    load = Load(standby.url, args.token, args.clients)
    try:
        wait_for(lambda: load.ok_after(0) >= 50, "traffic through the standby")
        killed_at = time.time()
        os.kill(leader.process.pid, signal.SIGKILL)
        leader.process.wait()
        wait_for(lambda: standby.leads_since(killed_at) is not None, "the take-over", 60)
        wait_for(lambda: load.ok_after(killed_at) >= 50, "requests to resume", 300)
        time.sleep(args.settle_s)
    finally:
        load.stop()
    answers = list(load.answers)
    led_at = standby.leads_since(killed_at)
    assert led_at is not None
    done = sorted(answered for _, answered, status in answers if status == 200)
    first_ok = min(answered for sent, answered, s in answers if s == 200 and sent > killed_at)
    return Round(
        take_over_s=led_at - killed_at,
        restart_s=first_ok - killed_at,
        gap_s=max(b - a for a, b in itertools.pairwise(done)),
        requests=len(answers),
        unavailable=sum(1 for *_, status in answers if status == 503),
        failed=sum(1 for *_, status in answers if status not in (200, 503)),
    )


def run(args: argparse.Namespace, data_dir: Path) -> list[Round]:
    servers = Servers(args, data_dir)
    try:
        started_at = time.time()
        pair = [servers.start("a"), servers.start("b")]  # together: the bootstrap runs once
        for server in pair:
            wait_for(lambda s=server: ready(s), f"{server.name} to be ready")
        leader = leader_of(pair, started_at)
        rounds = []
        for number in range(1, args.rounds + 1):
            (standby,) = [s for s in pair if s is not leader]
            result = one_round(args, leader, standby)
            print(
                f"round {number}: take-over {result.take_over_s:.2f} s, restart "
                f"{result.restart_s:.2f} s, longest stretch without a 200 {result.gap_s:.2f} s; "
                f"{result.requests} requests, {result.unavailable} × 503, "
                f"{result.failed} other failures",
                flush=True,
            )
            rounds.append(result)
            fresh = servers.start(leader.name)  # the killed one comes back as the standby
            wait_for(lambda s=fresh: ready(s), f"{fresh.name} to be ready again")
            pair, leader = [standby, fresh], standby
        return rounds
    finally:
        servers.stop_all()


def summary(rounds: list[Round]) -> None:
    def span(values: list[float]) -> str:
        return f"{min(values):.2f}–{max(values):.2f} s (mean {sum(values) / len(values):.2f} s)"

    print(
        f"\n{len(rounds)} rounds: take-over {span([r.take_over_s for r in rounds])}; "
        f"restart {span([r.restart_s for r in rounds])}; "
        f"longest stretch without a 200 {span([r.gap_s for r in rounds])}; "
        f"503s {sum(r.unavailable for r in rounds)} of {sum(r.requests for r in rounds)} "
        f"requests; other failures {sum(r.failed for r in rounds)}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="postgresql+psycopg://… (default: SQLite)")
    parser.add_argument("--data-dir", type=Path, help="the servers' data dir (default: temp)")
    parser.add_argument("--model-source", help="the model deployed (default: the default model)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--retry-s", type=float, default=1.0, help="GREENROOM_LEADER_RETRY_S")
    parser.add_argument("--settle-s", type=float, default=1.0, help="load kept after resuming")
    args = parser.parse_args(argv)
    args.token = secrets.token_urlsafe(32)
    return args


def main() -> None:
    args = parse_args()
    temp = None if args.data_dir else Path(tempfile.mkdtemp(prefix="gr-bench-leader-"))
    data_dir = args.data_dir or temp
    assert data_dir is not None
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        summary(run(args, data_dir))
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
