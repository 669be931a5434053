"""An embedding migration end to end over HTTP, with real replica processes and tiny models.

`docs` serves tiny-1 (32-d); the migration moves it to tiny-3 (48-d, another tokenizer) while a
client sends requests the whole time, none of which may fail: stage → shadow → samples → fit →
promote adapted → finish; then the aborts: of a staged revision, and of an adapted promotion
(the old model comes back as a new revision).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server
from test_e2e_rollout import FINAL, TASKS, call, data_dir_with_cache

from greenroom.app import create_app
from greenroom.config import Settings

MIGRATION = "/v1/migrations/default/docs"
WORDS_TEXT = """the quick brown fox jumps over the lazy dog search query document server vector
embedding words model happy sad weather rain sunny cold warm morning evening"""
WORDS = WORDS_TEXT.split()
STAGED_STEPS = ["snapshot", "start_green", "smoke_test", "compatibility_gate", "stage", "finish"]
PROMOTE_STEPS = ["gate", "start_live", "switch", "drain_blue", "finish"]
FINISH_STEPS = ["switch_space", "retire_adapter", "finish"]


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 12))) for _ in range(count)]


def embed(base: str, model: str, inputs: Any = "hello world") -> httpx.Response:
    return httpx.post(
        f"{base}/v1/embeddings",
        json={"model": model, "input": inputs},
        headers=ADMIN_HEADERS,
        timeout=60,
    )


def vector(base: str, model: str, text: str = "hello world") -> tuple[np.ndarray, str]:
    response = embed(base, model, text)
    assert response.status_code == 200, response.text
    return np.array(response.json()["data"][0]["embedding"]), response.headers["x-embedding-space"]


def run_task(base: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    task = call("POST", f"{base}{TASKS}/{kind}", json=body)
    result: dict[str, Any] = {}

    def final() -> bool:
        result.update(call("GET", f"{base}{TASKS}/{kind}/{task['id']}"))
        return result["status"] in FINAL

    wait_until_sync(final, deadline_s=180, what=f"{kind} task {task['id']} to end")
    return result


def step_names(task: dict[str, Any]) -> list[str]:
    return [step["name"] for step in task["metadata"]["steps"]]


class Traffic:
    """A client sending plain-name requests (texts) until stopped; every answer must be 200."""

    def __init__(self, base: str, model: str) -> None:
        self.base, self.model = base, model
        self.failures: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        texts = sentences(64, seed=7)
        with httpx.Client(timeout=60, headers=ADMIN_HEADERS) as client:
            while not self._stop.is_set():
                body = {"model": self.model, "input": texts[self.sent % 64 : self.sent % 64 + 3]}
                response = client.post(f"{self.base}/v1/embeddings", json=body)
                self.sent += 1
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")


@pytest.fixture
def server(tmp_path: Path, onnx_cache_dir: Path, tiny_model_dir: Path) -> Iterator[str]:
    settings = Settings(
        data_dir=data_dir_with_cache(tmp_path / "data", onnx_cache_dir),
        default_model_id="",
        drain_grace_s=3,
        admin_token=ADMIN_TOKEN,
        # tiny random models map poorly onto each other: the thresholds are tested alone
        adapter_min_mean_cosine=0.0,
        adapter_min_neighbour_overlap=0.0,
        shadow_summary_interval_s=0.5,
    )
    with running_server(create_app(settings)) as url:
        model = {"id": "docs", "source": str(tiny_model_dir)}
        call("POST", f"{url}/v1/embedding-models", json=model)
        assert run_task(url, "deploy", {"embedding_model_id": "docs"})["status"] == "done"
        yield url


def stage(base: str, source: Path) -> dict[str, Any]:
    call("PUT", f"{base}/v1/embedding-models/docs", json={"source": str(source)})
    staged = run_task(base, "deploy", {"embedding_model_id": "docs", "strategy": "staged"})
    assert staged["status"] == "done", staged
    assert staged["metadata"]["result"] == "staged"
    assert step_names(staged) == STAGED_STEPS
    return staged


def test_stage_shadow_fit_promote_adapted_finish_under_load(
    server: str, tiny_model_3_dir: Path
) -> None:
    old_vector, old_space = vector(server, "docs")
    assert old_vector.shape == (32,)
    with Traffic(server, "docs") as traffic:
        staged = stage(server, tiny_model_3_dir)
        staged_id = staged["metadata"]["revision_id"]

        # the served name still answers with the live revision; the pinned names each in its own
        plain, plain_space = vector(server, "docs")
        np.testing.assert_allclose(plain, old_vector, rtol=1e-5)
        assert plain_space == old_space
        pinned, pinned_space = vector(server, "docs@staged")
        assert pinned.shape == (48,) and pinned_space != old_space
        assert vector(server, f"docs@{staged_id}")[1] == pinned_space
        assert vector(server, "docs@live")[1] == old_space
        assert embed(server, "docs@nothing").status_code == 404
        models = call("GET", f"{server}/v1/models", params={"pinned": "true"})["data"]
        assert {"docs", "docs@staged", "docs@live"} <= {m["id"] for m in models}

        # a plain deploy and a rollback are refused while the name is in a migration
        refused = run_task(server, "deploy", {"embedding_model_id": "docs"})
        assert refused["status"] == "refused"
        assert refused["detail"] == (
            "`docs` is in a migration (staged): promote, finish or abort it first"
        )

        state = call("GET", f"{server}{MIGRATION}")
        assert state["stage"] == "staged"
        assert state["staged"]["revision_id"] == staged_id
        assert state["staged"]["phase"] == "Running"
        call("PUT", f"{server}{MIGRATION}/shadow", json={"fraction": 1.0})

        def shadowed() -> bool:
            shadow = call("GET", f"{server}{MIGRATION}")["shadow"]
            return bool(shadow) and shadow["inputs"] >= 30 and shadow["processes"] >= 1

        wait_until_sync(shadowed, deadline_s=60, what="shadow traffic to be reported")

        call("POST", f"{server}{MIGRATION}/samples", json={"texts": sentences(300, seed=1)})
        evaluation = call("POST", f"{server}{MIGRATION}/adapter")
        assert evaluation["kind"] in {"ridge", "mlp"}  # the dimensions differ: no Procrustes
        assert evaluation["pairs"] >= 300 and evaluation["held_out"] > 0

        promoted = run_task(server, "promote", {"embedding_model_id": "docs", "mode": "adapted"})
        assert promoted["status"] == "done", promoted
        assert step_names(promoted) == PROMOTE_STEPS

        # adapted: the served name answers in the old space, `docs@live` in the new one
        adapted, adapted_space = vector(server, "docs")
        assert adapted.shape == (32,) and adapted_space == old_space
        raw, raw_space = vector(server, "docs@live")
        assert raw.shape == (48,) and raw_space == pinned_space
        ids = embed(server, "docs", [[2, 35, 58, 3]])
        assert ids.status_code == 400
        assert ids.json()["error"]["message"] == (
            "token ids are ambiguous during a migration; send text, or use name@live"
        )
        assert call("GET", f"{server}{MIGRATION}")["stage"] == "adapted"

        finished = run_task(server, "finish", {"embedding_model_id": "docs"})
        assert finished["status"] == "done", finished
        assert step_names(finished) == FINISH_STEPS
        final, final_space = vector(server, "docs")
        assert final.shape == (48,) and final_space == pinned_space
    assert traffic.sent > 20
    assert traffic.failures == []
    gone = httpx.get(f"{server}{MIGRATION}", headers=ADMIN_HEADERS)
    assert gone.status_code == 404 and "detail" in gone.json()


def test_abort_a_staged_revision_then_an_adapted_promotion(
    server: str, tiny_model_3_dir: Path
) -> None:
    old_vector, old_space = vector(server, "docs")
    with Traffic(server, "docs") as traffic:
        staged_id = stage(server, tiny_model_3_dir)["metadata"]["revision_id"]
        aborted = run_task(server, "abort", {"embedding_model_id": "docs"})
        assert aborted["status"] == "done", aborted
        assert step_names(aborted) == ["withdraw_staged", "finish"]
        assert embed(server, "docs@staged").status_code == 404
        assert embed(server, f"docs@{staged_id}").status_code == 404

        stage(server, tiny_model_3_dir)
        call("POST", f"{server}{MIGRATION}/samples", json={"texts": sentences(250, seed=2)})
        call("POST", f"{server}{MIGRATION}/adapter")
        promoted = run_task(server, "promote", {"embedding_model_id": "docs", "mode": "adapted"})
        assert promoted["status"] == "done", promoted
        back = run_task(server, "abort", {"embedding_model_id": "docs"})
        assert back["status"] == "done", back
        assert back["metadata"]["result"] == "aborted"
        restored, restored_space = vector(server, "docs")
        np.testing.assert_allclose(restored, old_vector, rtol=1e-5)
        assert restored_space == old_space
    assert traffic.failures == []
    assert httpx.get(f"{server}{MIGRATION}", headers=ADMIN_HEADERS).status_code == 404
