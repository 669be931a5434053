"""The console's files at `/ui` (docs/console.md): open, with no data in them, served with a
strict Content-Security-Policy; no inline script anywhere."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from greenroom.console import STATIC_DIR


def test_the_console_is_open_and_sent_with_a_strict_policy(client: TestClient) -> None:
    response = client.get("/ui/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert client.get("/ui", follow_redirects=False).status_code in (301, 302, 307, 308)


def test_every_file_the_page_names_is_served_from_here(client: TestClient) -> None:
    index = client.get("/ui/").text
    named = re.findall(r'(?:src|href)="([^"#]+)"', index)
    local = [path for path in named if not path.startswith("data:")]
    assert local and all(path.startswith("/ui/") for path in local), local  # no CDN
    for path in local:
        response = client.get(path)
        assert response.status_code == 200, path
        assert "content-security-policy" in response.headers
    assert (
        client.get("/ui/js/app.js")
        .headers["content-type"]
        .startswith(("text/javascript", "application/javascript"))
    )


def test_no_inline_script_or_html_sink_in_the_console() -> None:
    for path in STATIC_DIR.rglob("*.html"):
        for tag in re.findall(r"<script\b[^>]*>", path.read_text()):
            assert "src=" in tag, f"{path}: inline script {tag}"
        assert not re.search(r"\son[a-z]+\s*=", path.read_text()), f"{path}: inline handler"
    for path in (STATIC_DIR / "js").rglob("*.js"):
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{path}: {sink} (every value is set as text)"


def test_an_unknown_file_is_a_404(client: TestClient) -> None:
    assert client.get("/ui/nothing-here.js").status_code == 404
    assert client.get("/ui/%2e%2e/pyproject.toml").status_code == 404  # never outside the files


def test_the_page_holds_no_data(client: TestClient) -> None:
    """The same bytes whatever the store holds: everything comes through the APIs."""
    assert client.get("/ui/").content == (STATIC_DIR / "index.html").read_bytes()
