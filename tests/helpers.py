"""Small helpers for tests: running async tests without a plugin, waiting, process checks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, ParamSpec

from sqlalchemy import Engine, event

P = ParamSpec("P")
DEFAULT_DEADLINE_S = 60.0


def async_test(func: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an `async def` test in its own event loop; fixtures are passed through unchanged."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(func(*args, **kwargs))

    return wrapper


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    interval_s: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll `condition` until it holds; fail after a generous deadline (never a timing check)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > end:
            raise AssertionError(f"{what} did not happen within {deadline_s:.0f}s")
        await asyncio.sleep(interval_s)


def wait_until_sync(
    condition: Callable[[], bool],
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    interval_s: float = 0.05,
    what: str = "condition",
) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not happen within {deadline_s:.0f}s")
        time.sleep(interval_s)


def pid_alive(pid: int) -> bool:
    """Whether a process runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in {"Z", "X"}


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a process a test started (killed when it ignores that for 30 s) and reap it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    """A loopback port nobody listens on now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, …), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat_line = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat_line.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@contextlib.contextmanager
def statements_run(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements the engine runs inside the block, as it sends them."""
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
