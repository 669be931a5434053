"""Issue 9, item 7: one client cannot starve another. Over real HTTP (the fake runtime's replica,
held one batch at a time), a light client's sentence is served before a heavy client's backlog
drains, and the heavy client gets 429 at its share of the queue while the light one gets 200."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from factories import HashEngine
from fastapi import FastAPI
from helpers import wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server

from greenroom.app import create_app
from greenroom.config import Settings
from greenroom.runtime.fake import FakeRuntime
from greenroom.serving.batching import BatchQueue

MODEL = "tiny"
HEAVY_ITEMS = 100  # the replica's batches hold 32 items: several batches per heavy request
DEADLINE_S = 60.0  # bounds a wait that fails; nothing here is timed


class SteppedEngine(HashEngine):
    """Once armed, embeds one batch per permit the test hands out."""

    def __init__(self) -> None:
        super().__init__(dimension=32)
        self.armed = False
        self.permits = threading.Semaphore(0)
        self.waiting = threading.Semaphore(0)  # released each time a batch arrives

    def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        if self.armed:
            self.waiting.release()
            assert self.permits.acquire(timeout=DEADLINE_S), "the test never let the batch go"
        return super().embed(lengths, flat_ids)

    def next_batch_arrived(self) -> None:
        assert self.waiting.acquire(timeout=DEADLINE_S), "no batch reached the replica"


@dataclass
class Call:
    """One embeddings request in a thread of its own."""

    url: str
    token: str
    inputs: list[str]
    response: httpx.Response | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Call:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            self.response = embed(self.url, self.token, self.inputs)
        finally:
            self.done.set()


def embed(url: str, token: str, inputs: list[str]) -> httpx.Response:
    body = {"model": MODEL, "input": inputs}
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{url}/v1/embeddings", json=body, headers=headers, timeout=DEADLINE_S)


def new_token(url: str, name: str) -> tuple[str, str]:
    """(id, secret) of a new `infer` token."""
    body = {"name": name, "scopes": ["infer"]}
    response = httpx.post(f"{url}/v1/tokens", json=body, headers=ADMIN_HEADERS, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["token"]


@pytest.fixture
def engine() -> SteppedEngine:
    return SteppedEngine()


@pytest.fixture
def app(engine: SteppedEngine, tiny_model_dir: Path, tmp_path: Path) -> FastAPI:
    settings = Settings(
        data_dir=tmp_path,
        default_model_id=MODEL,
        default_model_source=str(tiny_model_dir),
        admin_token=ADMIN_TOKEN,
        worker_enabled=True,
        replica_pipeline_depth=1,  # the replica holds one batch at a time: the queue decides
    )
    return create_app(settings, FakeRuntime(lambda spec: engine))


@pytest.fixture
def served(app: FastAPI, engine: SteppedEngine) -> Iterator[tuple[str, BatchQueue]]:
    with running_server(app) as url:
        queue = app.state.router.live(MODEL).queue
        queue.max_queue = 4  # the default share (0.5) lets one token hold 2 requests
        try:
            yield url, queue
        finally:
            engine.armed = False
            for _ in range(100):
                engine.permits.release()


def test_a_light_client_is_served_before_a_heavy_backlog_drains(
    served: tuple[str, BatchQueue], engine: SteppedEngine
) -> None:
    url, queue = served
    (heavy_id, heavy), (light_id, light) = new_token(url, "heavy"), new_token(url, "light")
    engine.armed = True
    first = Call(url, heavy, [f"heavy sentence {i}" for i in range(HEAVY_ITEMS)]).start()
    engine.next_batch_arrived()  # 32 of its items are at the replica, the rest wait
    second = Call(url, heavy, [f"more heavy text {i}" for i in range(HEAVY_ITEMS)]).start()
    wait_until_sync(lambda: queue.waiting_for(heavy_id) == 2, what="the heavy backlog")

    refused = embed(url, heavy, ["one too many"])
    assert refused.status_code == 429, refused.text
    assert "share" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "1"

    sentence = Call(url, light, ["a light sentence"]).start()
    wait_until_sync(lambda: queue.waiting_for(light_id) == 1, what="the light request")
    engine.permits.release()  # the first heavy batch goes
    engine.next_batch_arrived()  # the next batch: it holds the light sentence
    engine.permits.release()
    assert sentence.done.wait(DEADLINE_S), "the light sentence waited for the heavy backlog"
    assert sentence.response is not None and sentence.response.status_code == 200
    assert not first.done.is_set() and not second.done.is_set()  # their items still wait

    engine.armed = False
    for _ in range(20):
        engine.permits.release()
    for call in (first, second):
        assert call.done.wait(DEADLINE_S)
        assert call.response is not None and call.response.status_code == 200
        assert len(call.response.json()["data"]) == HEAVY_ITEMS


def test_the_heavy_client_gets_429_at_its_share_while_the_light_one_gets_200(
    served: tuple[str, BatchQueue], engine: SteppedEngine
) -> None:
    url, queue = served
    (heavy_id, heavy), (_, light) = new_token(url, "heavy"), new_token(url, "light")
    engine.armed = True
    calls = [Call(url, heavy, ["heavy"] * 40).start()]
    engine.next_batch_arrived()
    calls.append(Call(url, heavy, ["heavy"] * 40).start())
    wait_until_sync(lambda: queue.waiting_for(heavy_id) == 2, what="the heavy backlog")
    assert embed(url, heavy, ["x"]).status_code == 429
    calls.append(Call(url, light, ["light"]).start())
    wait_until_sync(lambda: queue.requests_waiting == 3, what="the light request")
    engine.armed = False
    for _ in range(20):
        engine.permits.release()
    for call in calls:
        assert call.done.wait(DEADLINE_S)
        assert call.response is not None and call.response.status_code == 200
    assert embed(url, heavy, ["its turn again"]).status_code == 200
