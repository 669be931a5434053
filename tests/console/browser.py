"""The console in a real Chromium: a `greenroom serve` process with the tiny models, Debian's
Chromium driven by Playwright, axe-core's accessibility check, and screenshots of each page.

Playwright's own browser download is not reachable here: the tests launch `/usr/bin/chromium`
(`apt-get install -y chromium`; `.ci/run` installs it when missing). Without it, or without the
`playwright` and `axe-playwright-python` packages, the browser tests skip, except under `CI=true`
where that is a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from helpers import free_port, stop_process, wait_until_sync
from servers import ADMIN_TOKEN

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
# The machine's network is closed: without the background-networking flags Chromium keeps
# opening connections that are refused, many at a time.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# What axe may find without failing a page: `minor` and `moderate` are printed only.
BLOCKING_IMPACTS = {"serious", "critical"}
START_DEADLINE_S = 180.0
TASK_DEADLINE_MS = 120_000  # a task's steps on a 2-core machine shared with other work
FINAL = {"done", "failed", "canceled", "refused"}


def require_browser() -> None:
    """Skip (fail under CI=true) when Chromium or the Python packages are missing."""
    reason = None
    try:
        import axe_playwright_python  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as exc:
        reason = f"{exc.name} is not installed (pip install -e '.[dev]')"
    if reason is None and not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true requires the browser tests)")
        pytest.skip(reason)


# ----- the server ---------------------------------------------------------------------------


@dataclass
class Server:
    """A running `greenroom serve` and a client of its APIs with the admin token."""

    url: str
    data_dir: Path
    log: Path
    process: subprocess.Popen

    def call(self, method: str, path: str, *, token: str = ADMIN_TOKEN, **kwargs: Any) -> Any:
        """An API call that must succeed; the parsed answer (None when empty)."""
        response = self.request(method, path, token=token, **kwargs)
        assert response.status_code < 400, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json() if response.content else None

    def request(
        self, method: str, path: str, *, token: str = ADMIN_TOKEN, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=120, **kwargs)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@contextmanager
def serve(data_dir: Path, *, env: dict[str, str]) -> Iterator[Server]:
    """`greenroom serve` on a free loopback port with `env` (GREENROOM_* settings) until the block
    ends; waits for `/readyz` (the default model deployed). Stopped, with its replicas, on exit."""
    port = free_port()
    log = data_dir.parent / "serve.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("GREENROOM_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "greenroom.cli", "serve", "--port", str(port)],
        env={**base, "GREENROOM_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", **env},
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    server = Server(f"http://127.0.0.1:{port}", data_dir, log, process)
    try:
        wait_until_sync(
            lambda: _ready(server.url) or process.poll() is not None,
            deadline_s=START_DEADLINE_S,
            interval_s=0.1,
            what="greenroom serve to be ready",
        )
        assert process.poll() is None, f"greenroom serve exited:\n{server.log_tail()}"
        yield server
    finally:
        stop_process(process)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# ----- what the tests look at: screenshots and axe ------------------------------------------


@dataclass
class Violation:
    page: str
    rule: str
    impact: str
    help: str
    targets: list[str]
    detail: str  # axe's sentence about the first element (a contrast's colours and ratio)

    def __str__(self) -> str:
        where = ", ".join(self.targets)
        return f"[{self.page}] {self.rule} ({self.impact}): {self.help} — at {where}; {self.detail}"


@dataclass
class Looks:
    """Screenshots under one directory and the accessibility findings of the pages looked at."""

    directory: Path
    taken: list[Path] = field(default_factory=list)
    blocking: list[Violation] = field(default_factory=list)

    def look(self, page: Page, name: str, *, full_page: bool = True) -> None:
        """A screenshot of the page as it is now (`<name>.png`), then axe-core's check of it:
        every violation is printed; serious and critical ones are kept for `assert_accessible`."""
        page.mouse.move(0, 0)  # no button left under the cursor (hovered) from the last click
        path = self.directory / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        self.taken.append(path)
        from axe_playwright_python.sync_playwright import Axe

        results = Axe().run(page)
        for raw in results.response["violations"]:
            targets = [", ".join(map(str, node["target"])) for node in raw["nodes"]]
            checks = [c for node in raw["nodes"][:1] for c in node["any"] + node["none"]]
            detail = checks[0]["message"] if checks else ""
            violation = Violation(
                name, raw["id"], raw["impact"] or "?", raw["help"], targets, detail
            )
            print(f"axe: {violation}")
            if violation.impact in BLOCKING_IMPACTS:
                self.blocking.append(violation)

    def assert_accessible(self) -> None:
        """No serious or critical violation on any page looked at so far (then forgotten)."""
        found, self.blocking = self.blocking, []
        assert not found, "axe found serious or critical violations:\n" + "\n".join(map(str, found))
