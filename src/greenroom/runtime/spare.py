"""The spare replica process: a replica started ahead of need, its interpreter up and its
engine's modules imported, that the next replica start of the same kind takes over.

Those two are about half of a replica's start on 2 cores (0.4-0.6 s of 1.3-1.8 s under load),
and a rollout's green and an autoscaler's new replica both wait for them. The local runtime
keeps at most one spare (`SpareProcess`), for the environment and engine of the replica it
started last (a process's environment is fixed when it starts, so a replica that needs
another one starts a process of its own; its niceness is raised after, as for any replica).
The spare is started `SPARE_DELAY_S` after a replica is ready, never during its start, and
waits on its standard input for its assignment: one JSON line with the replica's arguments,
the revision's secret and its log file (`assign`); then it runs as a replica started with them
(`greenroom.runtime.replica`). It dies with its parent like any replica, and exits when its
standard input closes unassigned (`close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import orjson

log = logging.getLogger("greenroom.runtime.spare")
REPLICA_COMMAND = (sys.executable, "-m", "greenroom.runtime.replica")
SPARE_DELAY_S = 1.0  # after a replica is ready: the spare's own start never slows that one
STOP_TIMEOUT_S = 5.0
# the assignment line: the replica's arguments, a 43-character secret, a log path
MAX_ASSIGNMENT_BYTES = 64 * 1024


class SpareProcess:
    """At most one spare replica process, for one environment and engine."""

    def __init__(self, *, parent_pid: int, log_path: Path, delay_s: float = SPARE_DELAY_S) -> None:
        self.parent_pid = parent_pid
        self.log_path = log_path
        self.delay_s = delay_s
        self._process: asyncio.subprocess.Process | None = None
        self._kind: tuple[dict[str, str], str] | None = None  # (environment, engine)
        self._filling: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The waiting spare's pid, None when there is none."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def take(self, env: Mapping[str, str], engine: str) -> asyncio.subprocess.Process | None:
        """The spare, for a replica of this environment and engine, else None; once taken it
        is no longer the runtime's spare (`want` starts the next one)."""
        process = self._process
        if process is None or process.returncode is not None or self._kind != (dict(env), engine):
            return None
        self._process, self._kind = None, None
        return process

    def want(self, env: Mapping[str, str], engine: str) -> None:
        """Have a spare for this environment and engine, `delay_s` from now (one for another
        kind is replaced); the latest call wins."""
        if self._filling is not None:
            self._filling.cancel()
        self._filling = asyncio.get_running_loop().create_task(
            self._fill(dict(env), engine), name="spare replica process"
        )

    async def _fill(self, env: dict[str, str], engine: str) -> None:
        await asyncio.sleep(self.delay_s)
        if self.pid is not None and self._kind == (env, engine):
            return
        await self._stop()
        log_file = self.log_path.open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                *REPLICA_COMMAND,
                "--spare", engine,
                "--parent-pid", str(self.parent_pid),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
            )  # fmt: skip
        except OSError as exc:  # a spare is an optimisation: replicas still start without it
            log.warning("no spare replica process: %s", exc)
            return
        finally:
            log_file.close()
        self._kind = (env, engine)

    async def _stop(self) -> None:
        process, self._process, self._kind = self._process, None, None
        if process is None or process.returncode is not None:
            return
        if process.stdin is not None:
            process.stdin.close()  # unassigned, it exits on its own
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filling
        await self._stop()


async def assign(
    process: asyncio.subprocess.Process, args: list[str], secret: str, log_path: Path
) -> bool:
    """Give a spare its replica's arguments, secret and log file, and close its standard input
    (a pipe only the two processes hold: the secret is never in argv or the environment).
    False when the spare has died meanwhile."""
    assert process.stdin is not None
    line = orjson.dumps({"args": args, "secret": secret, "log": str(log_path)}) + b"\n"
    try:
        process.stdin.write(line)
        await process.stdin.drain()
    except ConnectionError:
        return False
    finally:
        process.stdin.close()
    return process.returncode is None


def read_assignment(stream: BinaryIO) -> tuple[list[str], str, Path] | None:
    """In the spare: its assignment from standard input, or None when the input closed first
    (the runtime needs no spare any more) or holds no assignment."""
    line = stream.readline(MAX_ASSIGNMENT_BYTES)
    try:
        data = orjson.loads(line)
        args = [str(arg) for arg in data["args"]]
        return args, str(data["secret"]), Path(data["log"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def log_to(path: Path) -> None:
    """Standard error (where the replica logs) onto its replica's log file from now on."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)
