"""The stage timestamps of `bench/request_trace.py`, in the `greenroom serve` it starts.

Python imports a `sitecustomize` module at start-up from the first directory of the path that
has one; the bench puts this directory first on the server's `PYTHONPATH`. It does nothing
unless `GREENROOM_BENCH_TRACE` names a file and the process is `greenroom serve` (not a replica,
not the load check): then each method in `STAGES` records a timestamp when it is entered and
when it returns, and the events are written to that file at exit. A wrapper costs about a
microsecond; the gaps between stages are what the bench reads.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import inspect
import os
import sys
import time
from typing import Any

STAGES = (  # module, class, method, label
    ("greenroom.edge", "BoundedHttpToolsProtocol", "data_received", "read"),
    ("greenroom.edge", "EdgeMiddleware", "__call__", "edge"),
    ("greenroom.edge", "EdgeMiddleware", "authenticate", "auth"),
    ("greenroom.serving.router", "Router", "embed", "embed"),
    ("greenroom.serving.router", "Router", "_tokenize", "tokenize"),
    ("greenroom.serving.router", "Router", "_dispatch", "queue"),
    ("greenroom.serving.batching", "BatchQueue", "take_batch", "batch"),
    ("greenroom.runtime.protocol", "ReplicaClient", "embed", "replica"),
    ("greenroom.edge", "HeadJoiningTransport", "write", "write"),
)


def _install(path: str) -> None:
    events: list[tuple[str, int]] = []
    clock = time.perf_counter_ns

    def dump() -> None:
        with open(path, "w") as out:
            out.writelines(f"{name} {at}\n" for name, at in events)

    def wrapped(function: Any, label: str) -> Any:
        enter, leave = label + ">", label + "<"
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def traced_async(*args: Any, **kwargs: Any) -> Any:
                events.append((enter, clock()))
                try:
                    return await function(*args, **kwargs)
                finally:
                    events.append((leave, clock()))

            return traced_async

        @functools.wraps(function)
        def traced(*args: Any, **kwargs: Any) -> Any:
            events.append((enter, clock()))
            try:
                return function(*args, **kwargs)
            finally:
                events.append((leave, clock()))

        return traced

    for module, cls, method, label in STAGES:
        owner = getattr(importlib.import_module(module), cls)
        setattr(owner, method, wrapped(getattr(owner, method), label))
    atexit.register(dump)


if os.environ.get("GREENROOM_BENCH_TRACE") and sys.argv[1:2] == ["serve"]:
    _install(os.environ["GREENROOM_BENCH_TRACE"])
