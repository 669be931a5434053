"""The web console: static files served by `greenroom serve` at `/ui` (docs/console.md).

The page holds no data: it signs in with a token kept for the browser tab only and reads
everything through the same JSON APIs, with the same scopes, as any client. Every value is set
as text, never as HTML. The files are served with a strict Content-Security-Policy (no inline
script or style, nothing from another origin), so a `<script>` that a token wrote into a model's
description can never run.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
PATH = "/ui"
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",  # revalidated: an upgrade's files are picked up at once
}


class ConsoleFiles(StaticFiles):
    """The console's files (`/ui/` answers `index.html`), each with the security headers."""

    def __init__(self) -> None:
        super().__init__(directory=STATIC_DIR, html=True)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response
