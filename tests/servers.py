"""Run a greenroom app in a background thread on 127.0.0.1 for HTTP-level tests.

Test servers take `ADMIN_TOKEN` as their admin token (`Settings(admin_token=ADMIN_TOKEN)`, as
`GREENROOM_ADMIN_TOKEN` would) and tests send it (`ADMIN_HEADERS`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

from greenroom.edge import UVICORN_LIMITS

START_DEADLINE_S = 120.0
ADMIN_TOKEN = "test-admin-token-0123456789abcdefghijklmnopqrstuv"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@contextmanager
def running_server(app: FastAPI, *, wait_ready: bool = True) -> Iterator[str]:
    """Serve the app until the block ends; yields the base URL (waiting on the open `/readyz`).

    The server (and with it every replica it started) is shut down on exit.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **UVICORN_LIMITS)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait(base_url, "/readyz" if wait_ready else "/healthz", server)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def _wait(base_url: str, path: str, server: uvicorn.Server) -> None:
    deadline = time.monotonic() + START_DEADLINE_S
    last = ""
    while time.monotonic() < deadline:
        if server.started:
            try:
                response = httpx.get(base_url + path, timeout=5)
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.HTTPError as exc:
                last = repr(exc)
        time.sleep(0.05)
    raise AssertionError(f"server at {base_url} not ready: {last}")
