"""Issue 9, items 3 and 9: authentication before any body is read, bounded bodies and headers,
out-of-range token ids, against `greenroom serve` itself (its process's memory is measured).

The server is bare (no default model, no worker); nothing here needs a model: every request is
refused, or answered, before one would be asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import free_port, stop_process, wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN

from greenroom.edge import MAX_HEADER_BYTES, HeadJoiningTransport

MiB = 1024 * 1024
CHUNK = b" " * (64 * 1024)
GUARDED_JSON_ROUTES = ["/v1/embeddings", "/v1/tokens", "/internal/inference-deployment/deploy"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """`greenroom serve` in its own process: (base URL, pid)."""
    data_dir = tmp_path_factory.mktemp("edge") / "data"
    port = free_port()
    env = {
        **os.environ,
        "GREENROOM_DATA_DIR": str(data_dir),
        "GREENROOM_DEFAULT_MODEL_ID": "",
        "GREENROOM_WORKER_ENABLED": "false",
        "GREENROOM_ADMIN_TOKEN": ADMIN_TOKEN,
        "HF_HUB_OFFLINE": "1",
    }
    log = tmp_path_factory.mktemp("edge-log") / "serve.log"
    command = [sys.executable, "-m", "greenroom.cli", "serve", "--port", str(port)]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, "--log-level", "warning"], env=env, stdout=log_file, stderr=log_file
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_sync(
            lambda: process.poll() is not None or _answers(url), deadline_s=120, what="healthz"
        )
        assert process.poll() is None, log.read_text()[-3000:]
        yield url, process.pid
    finally:
        stop_process(process)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def peak_rss_bytes(pid: int) -> int:
    """The process's resident-set high-water mark (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def chunks(total: int) -> Iterator[bytes]:
    """`total` bytes, streamed: no Content-Length, so the server cannot refuse up front."""
    for _ in range(total // len(CHUNK)):
        yield CHUNK


def token_with(url: str, *scopes: str) -> str:
    body = {"name": "-".join(scopes), "scopes": list(scopes)}
    response = httpx.post(f"{url}/v1/tokens", json=body, headers=ADMIN_HEADERS, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def raw_request(url: str, head: str, *, timeout: float = 30) -> str:
    """Send a request's head (and nothing more) on a plain socket; the status line answered."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        return sock.recv(65536).decode("latin-1").split("\r\n", 1)[0]


def test_a_256_mib_body_without_a_token_is_refused_unread(server: tuple[str, int]) -> None:
    url, pid = server
    for path in ("/v1/embeddings", "/v1/embedding-models"):  # warm up both families' paths
        assert httpx.post(f"{url}{path}", content=b"{}", timeout=30).status_code == 401
    before = peak_rss_bytes(pid)
    for path in ("/v1/embeddings", "/v1/embedding-models"):
        response = httpx.post(f"{url}{path}", content=chunks(256 * MiB), timeout=120)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
    grown = peak_rss_bytes(pid) - before
    assert grown < 8 * MiB, f"the server grew by {grown / MiB:.1f} MiB"


@pytest.mark.parametrize("path", GUARDED_JSON_ROUTES)
def test_malformed_json_without_a_token_is_a_401_not_a_422(
    server: tuple[str, int], path: str
) -> None:
    url, _ = server
    headers = {"content-type": "application/json"}
    response = httpx.post(f"{url}{path}", content=b"{not json", headers=headers, timeout=30)
    assert response.status_code == 401, response.text
    if path == "/v1/embeddings":
        assert response.json()["error"]["type"] == "authentication_error"
    else:
        assert set(response.json()) == {"detail"}


def test_malformed_json_with_a_token_lacking_the_scope_is_a_403(server: tuple[str, int]) -> None:
    url, _ = server
    reader = {"Authorization": f"Bearer {token_with(url, 'read')}"}
    for path in GUARDED_JSON_ROUTES:
        response = httpx.post(f"{url}{path}", content=b"{not json", headers=reader, timeout=30)
        assert response.status_code == 403, (path, response.text)


@pytest.mark.parametrize(
    ("path", "limit"), [("/v1/embeddings", 8 * MiB), ("/v1/embedding-models", MiB)]
)
def test_a_chunked_body_over_the_limit_with_a_token_is_a_413(
    server: tuple[str, int], path: str, limit: int
) -> None:
    url, pid = server
    before = peak_rss_bytes(pid)
    response = httpx.post(
        f"{url}{path}", content=chunks(limit + 4 * MiB), headers=ADMIN_HEADERS, timeout=60
    )
    assert response.status_code == 413, response.text
    message = response.text
    assert f"{limit // MiB} MiB" in message
    # nothing much over the limit was held (the limit itself may be buffered)
    assert peak_rss_bytes(pid) - before < limit + 8 * MiB


def test_a_declared_length_over_the_limit_is_refused_before_the_body_comes(
    server: tuple[str, int],
) -> None:
    """The head alone is sent: a server that waited for the body would never answer."""
    url, _ = server
    for path in ("/v1/embeddings", "/v1/embedding-models"):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\n{_authorization()}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n"
        )
        assert raw_request(url, head).split()[1] == "413"


def test_a_body_within_the_limit_is_read(server: tuple[str, int]) -> None:
    url, _ = server
    body = b'{"model": "none", "input": "' + b"x" * (7 * MiB) + b'"}'
    response = httpx.post(
        f"{url}/v1/embeddings", content=iter([body]), headers=ADMIN_HEADERS, timeout=60
    )
    assert response.status_code == 404, response.text  # read, parsed, and no such model


def test_a_huge_header_is_refused(server: tuple[str, int]) -> None:
    url, _ = server
    head = f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {'a' * (1 * MiB)}\r\n\r\n"
    assert raw_request(url, head).split()[1] in ("400", "431")
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200  # and it still serves


def test_a_head_within_the_bound_is_served_and_one_over_it_refused(
    server: tuple[str, int],
) -> None:
    url, _ = server
    line = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: "
    fits = MAX_HEADER_BYTES - len(line) - 64
    assert raw_request(url, f"{line}{'a' * fits}\r\n\r\n").split()[1] == "200"
    over = f"{line}{'a' * (MAX_HEADER_BYTES + 1)}\r\n\r\n"
    assert raw_request(url, over).split()[1] == "400"


def test_a_header_that_never_ends_is_refused_without_buffering_it(
    server: tuple[str, int],
) -> None:
    """llhttp keeps a header's pieces until it ends: the edge stops it after the bound."""
    url, pid = server
    host, port = url.removeprefix("http://").split(":")
    before = peak_rss_bytes(pid)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        with contextlib.suppress(ConnectionError):  # refused mid-way: the server closed it
            while sent < 64 * MiB:
                sock.sendall(CHUNK)
                sent += len(CHUNK)
        answer = sock.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 400"), answer[:200]
    assert sent < 8 * MiB  # refused long before the end of what the client would have sent
    assert peak_rss_bytes(pid) - before < 8 * MiB


@pytest.mark.parametrize(
    "token_ids", [[2**63], [[1, 2], [2**64 + 5]], [10**30], [-(2**63) - 1], [[1.5]], [True]]
)
def test_out_of_range_token_ids_are_a_400_in_the_openai_envelope(
    server: tuple[str, int], token_ids: list[object]
) -> None:
    url, _ = server
    body = {"model": "anything", "input": token_ids}
    response = httpx.post(f"{url}/v1/embeddings", json=body, headers=ADMIN_HEADERS, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "token ids must be integers from 0 to 2147483647" in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "m" * 257), ("model", ""), ("user", "u" * 257), ("dimensions", 10**6)],
)
def test_embedding_fields_are_bounded(server: tuple[str, int], field: str, value: object) -> None:
    url, _ = server
    body = {"model": "anything", "input": "x", field: value}
    response = httpx.post(f"{url}/v1/embeddings", json=body, headers=ADMIN_HEADERS, timeout=30)
    assert response.status_code == 400, response.text
    assert f"Invalid '{field}'" in response.json()["error"]["message"]


def test_the_bounds_are_in_the_openapi_document(server: tuple[str, int]) -> None:
    url, _ = server
    document = httpx.get(f"{url}/openapi.json", timeout=30).json()
    content = document["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]
    schema = content["application/json"]["schema"]["properties"]
    assert schema["model"]["maxLength"] == 256 and schema["user"]["anyOf"][0]["maxLength"] == 256
    assert schema["dimensions"]["anyOf"][0]["maximum"] == 65536
    assert "2147483647" in str(schema["input"])


def _authorization() -> str:
    return f"Authorization: Bearer {ADMIN_TOKEN}"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


async def _one_turn() -> None:
    await asyncio.sleep(0)


def test_a_small_response_leaves_in_one_write() -> None:
    async def respond() -> list[bytes]:
        transport = RecordingTransport()
        joined = HeadJoiningTransport(transport)  # type: ignore[arg-type]
        joined.write(b"HTTP/1.1 200 OK\r\n\r\n")
        assert transport.writes == []  # held for the body
        joined.write(b"{}")
        joined.write(b"more")
        await _one_turn()
        return transport.writes

    assert asyncio.run(respond()) == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"more"]


def test_a_head_without_a_body_yet_leaves_on_the_next_turn() -> None:
    async def respond() -> list[bytes]:
        transport = RecordingTransport()
        joined = HeadJoiningTransport(transport)  # type: ignore[arg-type]
        joined.write(b"head")
        await _one_turn()
        assert transport.writes == [b"head"]  # a streamed response's first part may come later
        joined.write(b"part")
        return transport.writes

    assert asyncio.run(respond()) == [b"head", b"part"]


def test_a_large_body_is_not_copied_onto_the_head() -> None:
    body = b"x" * (HeadJoiningTransport.JOIN_MAX_BYTES + 1)

    async def respond() -> list[bytes]:
        transport = RecordingTransport()
        joined = HeadJoiningTransport(transport)  # type: ignore[arg-type]
        joined.write(b"head")
        joined.write(body)
        return transport.writes

    writes = asyncio.run(respond())
    assert writes == [b"head", body] and writes[1] is body


def test_close_sends_a_held_head_first_and_the_rest_is_the_transports() -> None:
    async def respond() -> RecordingTransport:
        transport = RecordingTransport()
        joined = HeadJoiningTransport(transport)  # type: ignore[arg-type]
        joined.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        joined.close()
        assert joined.is_closing() and joined.get_extra_info("peername") == "info peername"
        await _one_turn()  # the scheduled flush finds nothing left to send
        return transport

    transport = asyncio.run(respond())
    assert transport.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and transport.closed
