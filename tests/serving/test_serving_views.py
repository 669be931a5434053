"""`/v1/embeddings`, `/v1/models` and the operations endpoints over real HTTP.

The main server runs the real local runtime (replica processes) with the tiny model as its
default model; a second one runs on the fake runtime to reach the overload and outage paths.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from factories import HashEngine
from fastapi import FastAPI
from fastapi.responses import Response
from helpers import wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server
from starlette.types import Receive, Scope, Send

from greenroom.app import create_app
from greenroom.auth.deps import authorize
from greenroom.config import Settings
from greenroom.errors import INTERNAL_ERROR, ServiceUnavailableError
from greenroom.runtime.fake import FakeRuntime
from greenroom.serving.sync import RouterSync

MODEL = "tiny"


def data_dir_with_shared_cache(root: Path, onnx_cache_dir: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "onnx").symlink_to(onnx_cache_dir)
    return root


@pytest.fixture(scope="module")
def base_url(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, onnx_cache_dir: Path
) -> Iterator[str]:
    data_dir = data_dir_with_shared_cache(tmp_path_factory.mktemp("views") / "data", onnx_cache_dir)
    settings = Settings(
        data_dir=data_dir,
        default_model_id=MODEL,
        default_model_source=str(tiny_model_dir),
        admin_token=ADMIN_TOKEN,
    )
    with running_server(create_app(settings)) as url:
        yield url


def embed(base_url: str, body: object, **kwargs: object) -> httpx.Response:
    kwargs.setdefault("headers", ADMIN_HEADERS)
    return httpx.post(f"{base_url}/v1/embeddings", json=body, timeout=30, **kwargs)  # type: ignore[arg-type]


def assert_openai_error(response: httpx.Response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == error_type
    assert error["message"]
    return error


def test_floats_come_back_with_usage_and_the_embedding_space(base_url: str) -> None:
    response = embed(base_url, {"model": MODEL, "input": ["hello world", "good morning"]})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [item["index"] for item in body["data"]] == [0, 1]
    vectors = np.array([item["embedding"] for item in body["data"]])
    assert vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 4
    space = response.headers["x-embedding-space"]
    assert space.startswith(f"{MODEL}@") and space.endswith("/32/l2")


def test_base64_decodes_to_the_same_vectors(base_url: str) -> None:
    floats = embed(base_url, {"model": MODEL, "input": "hello world"}).json()
    encoded = embed(base_url, {"model": MODEL, "input": "hello world", "encoding_format": "base64"})
    raw = base64.b64decode(encoded.json()["data"][0]["embedding"])
    np.testing.assert_allclose(
        np.frombuffer(raw, dtype="<f4"), floats["data"][0]["embedding"], rtol=1e-6
    )


def test_token_ids_are_accepted_as_one_or_many_inputs(base_url: str) -> None:
    one = embed(base_url, {"model": MODEL, "input": [2, 10, 11, 3]}).json()
    many = embed(base_url, {"model": MODEL, "input": [[2, 10, 11, 3], [2, 12, 3]]}).json()
    assert len(one["data"]) == 1 and len(many["data"]) == 2
    assert one["usage"]["prompt_tokens"] == 4
    np.testing.assert_allclose(one["data"][0]["embedding"], many["data"][0]["embedding"], rtol=1e-5)


def test_the_openai_client_works_unchanged(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=ADMIN_TOKEN, max_retries=0)
    default = client.embeddings.create(model=MODEL, input=["hello world", "good night"])
    floats = client.embeddings.create(model=MODEL, input="hello world", encoding_format="float")
    assert len(default.data) == 2 and len(default.data[0].embedding) == 32
    np.testing.assert_allclose(default.data[0].embedding, floats.data[0].embedding, rtol=1e-6)
    assert default.usage.prompt_tokens > 0
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    stranger = openai.OpenAI(base_url=f"{base_url}/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.embeddings.create(model=MODEL, input="x")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"input": "x"}, "model"),
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": ""}, "empty"),
        ({"model": MODEL, "input": []}, "empty"),
        ({"model": MODEL, "input": ["ok", ""]}, "empty"),
        ({"model": MODEL, "input": [[1, 2], []]}, "empty"),
        ({"model": MODEL, "input": 5}, "input"),
        ({"model": MODEL, "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": MODEL, "input": ["x"] * 2049}, "at most 2048"),
        ({"model": MODEL, "input": "x", "dimensions": 8}, "does not support"),
        ({"model": MODEL, "input": "x", "dimensions": 0}, "positive"),
        ({"model": MODEL, "input": [[10**9]]}, "Token ids"),
        ({"model": MODEL, "input": [[2**63]]}, "token ids must be integers"),
        ({"model": MODEL, "input": [-1]}, "token ids must be integers"),
        ({"model": MODEL, "input": "x", "user": "u" * 257}, "user"),
    ],
)
def test_bad_input_is_a_400_in_the_openai_envelope(
    base_url: str, body: dict, fragment: str
) -> None:
    error = assert_openai_error(embed(base_url, body), 400, "invalid_request_error")
    assert fragment in error["message"]


def test_malformed_json_is_a_400(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/embeddings", content=b"{not json", headers=ADMIN_HEADERS, timeout=30
    )
    assert_openai_error(response, 400, "invalid_request_error")


def test_a_body_over_8_mib_is_a_413(base_url: str) -> None:
    response = embed(base_url, {"model": MODEL, "input": "x" * (8 * 1024 * 1024 + 10)})
    assert_openai_error(response, 413, "invalid_request_error")


def test_an_unknown_model_is_a_404_model_not_found(base_url: str) -> None:
    error = assert_openai_error(
        embed(base_url, {"model": "nope", "input": "x"}), 404, "invalid_request_error"
    )
    assert error["code"] == "model_not_found"


def test_a_wrong_method_keeps_the_openai_envelope(base_url: str) -> None:
    response = httpx.get(f"{base_url}/v1/embeddings", headers=ADMIN_HEADERS)
    assert_openai_error(response, 405, "server_error")
    # without a token nothing is told about the route, not even its methods (issue 9)
    assert_openai_error(httpx.get(f"{base_url}/v1/embeddings"), 401, "authentication_error")


def test_models_lists_the_live_served_names(base_url: str) -> None:
    body = httpx.get(f"{base_url}/v1/models", headers=ADMIN_HEADERS).json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        (MODEL, "model", "greenroom")
    ]


def test_operations_endpoints(base_url: str) -> None:
    assert httpx.get(f"{base_url}/healthz").status_code == 200
    ready = httpx.get(f"{base_url}/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == [MODEL]
    embed(base_url, {"model": MODEL, "input": "count me"})
    metrics = httpx.get(f"{base_url}/metrics", headers=ADMIN_HEADERS)
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in (
        f'greenroom_embedding_requests_total{{model="{MODEL}",status="200"}}',
        "greenroom_embedding_request_duration_seconds_bucket",
        "greenroom_batch_size_bucket",
        f'greenroom_queue_depth{{model="{MODEL}"}}',
        "greenroom_replica_ready{",
        "greenroom_replica_restarts_total{",
    ):
        assert name in text


# ----- the fake runtime: overload, outage, readiness --------------------------------------------


@pytest.fixture
def fake_runtime() -> FakeRuntime:
    return FakeRuntime(lambda spec: HashEngine(dimension=32))


@pytest.fixture
def fake_app(fake_runtime: FakeRuntime, tiny_model_dir: Path, tmp_path: Path) -> FastAPI:
    settings = Settings(
        data_dir=tmp_path,
        default_model_id=MODEL,
        default_model_source=str(tiny_model_dir),
        admin_token=ADMIN_TOKEN,
    )
    return create_app(settings, fake_runtime)


def test_a_full_queue_is_a_429_with_retry_after(fake_app: FastAPI) -> None:
    with running_server(fake_app) as url:
        fake_app.state.router.live(MODEL).queue.max_queue = 0
        response = embed(url, {"model": MODEL, "input": "x"})
        assert_openai_error(response, 429, "rate_limit_error")
        assert response.headers["retry-after"] == "1"


def test_an_unexpected_error_is_a_500_in_the_openai_envelope(
    fake_app: FastAPI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a secret detail")

    with running_server(fake_app) as url:
        monkeypatch.setattr(fake_app.state.router, "embed", broken)
        response = embed(url, {"model": MODEL, "input": "x"})
        error = assert_openai_error(response, 500, "server_error")
        assert error["message"] == INTERNAL_ERROR
        assert "secret" not in response.text
    assert "a secret detail" in caplog.text  # the server log has the details


def test_embeddings_skip_fastapi_and_the_other_routes_do_not(fake_app: FastAPI) -> None:
    """The edge answers `POST /v1/embeddings` itself (its shortcut); a dependency of every
    FastAPI route that fails shows which requests went through FastAPI."""

    async def refuse() -> None:
        raise ServiceUnavailableError("reached FastAPI")

    with running_server(fake_app) as url:
        fake_app.dependency_overrides[authorize] = refuse
        assert embed(url, {"model": MODEL, "input": "x"}).status_code == 200
        models = httpx.get(f"{url}/v1/models", headers=ADMIN_HEADERS, timeout=30)
        assert assert_openai_error(models, 503, "server_error")["message"] == "reached FastAPI"


def test_embeddings_skip_starlettes_middleware_stack(fake_app: FastAPI) -> None:
    """The front door takes `POST /v1/embeddings` from the server straight to the edge: a
    middleware stack that answers 418 to everything shows which requests went through it."""

    async def teapot(scope: Scope, receive: Receive, send: Send) -> None:
        await Response(status_code=418)(scope, receive, send)

    with running_server(fake_app) as url:
        fake_app.middleware_stack = teapot
        assert embed(url, {"model": MODEL, "input": "x"}).status_code == 200
        assert embed(url, {"model": MODEL, "input": "x"}, headers={}).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers=ADMIN_HEADERS).status_code == 418


def test_an_unexpected_error_at_the_front_door_is_a_500_in_the_openai_envelope(
    fake_app: FastAPI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(token_hash: str) -> None:
        raise RuntimeError("the store is down: a secret detail")

    with running_server(fake_app) as url:
        monkeypatch.setattr(fake_app.state.authenticator, "resolve", broken)
        response = embed(url, {"model": MODEL, "input": "x"})
        error = assert_openai_error(response, 500, "server_error")
        assert error["message"] == INTERNAL_ERROR and "secret" not in response.text
    assert "a secret detail" in caplog.text


def test_no_ready_replica_is_a_503(fake_app: FastAPI) -> None:
    with running_server(fake_app) as url:
        runtime: FakeRuntime = fake_app.state.runtime
        (replica,) = runtime.replicas(runtime.revisions()[0])
        runtime.run_threadsafe(runtime.crash(replica.replica_id))
        assert_openai_error(embed(url, {"model": MODEL, "input": "x"}), 503, "server_error")
        assert httpx.get(f"{url}/readyz").status_code == 503


def test_readyz_waits_for_the_default_model(fake_app: FastAPI, fake_runtime: FakeRuntime) -> None:
    runtime = fake_runtime
    runtime.ready_gate.clear()
    with running_server(fake_app, wait_ready=False) as url:
        wait_until_sync(lambda: runtime.loop is not None)
        response = httpx.get(f"{url}/readyz")
        assert response.status_code == 503 and MODEL in response.json()["reason"]

        async def open_gate() -> None:
            runtime.ready_gate.set()

        runtime.run_threadsafe(open_gate())
        wait_until_sync(lambda: httpx.get(f"{url}/readyz").status_code == 200)


def test_readyz_waits_for_the_first_read_of_what_is_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart with no default model: until the router has read the live names from the
    store it knows of none, and "ready" would promise what it cannot serve yet."""
    release = threading.Event()
    read_store = RouterSync._read_store

    def held_read(self: RouterSync, known: set[str]) -> Any:
        assert release.wait(60), "the test never released the store read"
        return read_store(self, known)

    monkeypatch.setattr(RouterSync, "_read_store", held_read)
    settings = Settings(data_dir=tmp_path, default_model_id="", admin_token=ADMIN_TOKEN)
    app = create_app(settings, FakeRuntime(lambda spec: HashEngine()))
    with running_server(app, wait_ready=False) as url:
        try:
            response = httpx.get(f"{url}/readyz")
            assert response.status_code == 503
            assert response.json()["reason"] == "Reading what is live from the store."
        finally:
            release.set()
        wait_until_sync(lambda: httpx.get(f"{url}/readyz").status_code == 200)


def test_readyz_names_a_live_model_that_cannot_be_served(fake_app: FastAPI) -> None:
    with running_server(fake_app) as url:
        fake_app.state.sync.unservable = {"gone"}  # what a pass finds when its files are gone
        response = httpx.get(f"{url}/readyz")
        assert response.status_code == 503
        assert response.json()["reason"] == (
            "'gone' cannot be served: its model files cannot be read; the server log says why."
        )


class HeldTokenizer:
    """The route's tokenizer, held on an event the test sets."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode_batch_fast(self, inputs: list[str]) -> list[Any]:
        self.entered.set()
        assert self.release.wait(60), "the test never released the tokenizer"
        return self.tokenizer.encode_batch_fast(inputs)

    def to_str(self) -> str:
        return self.tokenizer.to_str()


def test_healthz_answers_while_a_large_string_is_tokenised(fake_app: FastAPI) -> None:
    """One string over the inline bound is tokenised off the event loop: with the tokenizer
    held, the loop still answers."""
    with running_server(fake_app) as url:
        route = fake_app.state.router.live(MODEL)
        held = HeldTokenizer(route.tokenizer)
        route.tokenizer = held
        answers: list[httpx.Response] = []
        body = {"model": MODEL, "input": "hello world " * 20_000}
        request = threading.Thread(target=lambda: answers.append(embed(url, body)))
        request.start()
        try:
            assert held.entered.wait(60)
            assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        finally:
            held.release.set()
            request.join(60)
        assert answers[0].status_code == 200, answers[0].text


class UnreachableStore:
    """A store whose every session fails with a driver's kind of message."""

    def session_scope(self) -> Any:
        raise RuntimeError("connection to 10.1.2.3:5432 failed: password for user 'gr' is wrong")


def test_readyz_tells_the_stage_never_the_error(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, default_model_id="", admin_token=ADMIN_TOKEN)
    app = create_app(settings, FakeRuntime(lambda spec: HashEngine()))
    with running_server(app) as url:
        store = app.state.store
        app.state.store = UnreachableStore()
        try:
            response = httpx.get(f"{url}/readyz")
        finally:
            app.state.store = store
        assert response.status_code == 503
        assert response.json()["reason"] == "The store is unreachable; the server log says why."
        app.state.startup.error = "could not be registered: /home/alice/models/x: Errno 13"
        response = httpx.get(f"{url}/readyz")
        assert response.status_code == 503
        assert "alice" not in response.text and "could not be deployed" in response.text
