"""`GET /v1/traffic` over real HTTP (docs/api/traffic.md): embeddings sent to a real app (fake
runtime, hash engine) show up in the merged history; the scopes, the bounds, the schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from factories import HashEngine
from fastapi import FastAPI
from helpers import wait_until_sync
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server

from greenroom.app import create_app
from greenroom.config import Settings
from greenroom.runtime.fake import FakeRuntime
from greenroom.serving.traffic import BATCH_SIZE_BOUNDS, LATENCY_BOUNDS_MS

MODEL = "tiny"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("traffic"),
        default_model_id=MODEL,
        default_model_source=str(tiny_model_dir),
        admin_token=ADMIN_TOKEN,
        traffic_summary_interval_s=0.1,
    )
    app = create_app(settings, FakeRuntime(lambda spec: HashEngine(dimension=32)))
    with running_server(app) as url:
        yield app, url


def embed(url: str, model: str, inputs: Any) -> httpx.Response:
    body = {"model": model, "input": inputs}
    return httpx.post(f"{url}/v1/embeddings", json=body, headers=ADMIN_HEADERS, timeout=30)


def get_traffic(
    url: str, headers: dict[str, str] = ADMIN_HEADERS, **query: object
) -> httpx.Response:
    return httpx.get(f"{url}/v1/traffic", params=query, headers=headers, timeout=30)


def totals(series: dict[str, Any]) -> dict[str, int]:
    points = series["points"]
    return {
        key: sum(p[key] for p in points) for key in ("requests", "errors", "inputs", "batches")
    } | {
        "answered": sum(sum(p["latency_counts"]) for p in points),
        "batch_counts": sum(sum(p["batch_counts"]) for p in points),
    }


def metric(text: str, name: str, **labels: str) -> float:
    shown = ",".join(f'{key}="{value}"' for key, value in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(shown)}\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{{{shown}}} is not on /metrics"
    return float(match.group(1))


def test_embeddings_show_up_per_served_name_and_revision(server: tuple[FastAPI, str]) -> None:
    app, url = server
    live_id = app.state.router.live(MODEL).revision_id
    for inputs in (["one", "two"], ["three", "four"], ["five", "six"]):
        assert embed(url, MODEL, inputs).status_code == 200
    assert embed(url, f"{MODEL}@live", "pinned").status_code == 200  # counted under the name
    assert embed(url, MODEL, [[2, 10**9]]).status_code == 400  # reached the revision: an error
    assert embed(url, "no-such-model", "x").status_code == 404  # no series of its own

    def counted() -> bool:
        body = get_traffic(url, served_name=MODEL).json()
        return bool(body["series"]) and totals(body["series"][0])["requests"] == 5

    wait_until_sync(counted, what="the requests in GET /v1/traffic")
    response = get_traffic(url)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["resolution_s"], body["window_s"], body["processes"]) == (10, 3600, 1)
    assert body["latency_bounds_ms"] == list(LATENCY_BOUNDS_MS)
    assert body["batch_size_bounds"] == list(BATCH_SIZE_BOUNDS)
    (series,) = body["series"]
    assert (series["served_name"], series["revision_id"]) == (MODEL, live_id)
    counts = totals(series)
    assert (counts["requests"], counts["errors"], counts["inputs"]) == (5, 1, 7)
    assert counts["answered"] == 4  # a latency per answered request
    assert counts["batches"] >= 1 and counts["batch_counts"] == counts["batches"]
    starts = [p["t"] for p in series["points"]]
    assert starts == sorted(starts) and all(t % 10 == 0 for t in starts)
    assert all(t <= body["now"] for t in starts)
    answered = [p for p in series["points"] if sum(p["latency_counts"])]
    assert all(p["p50_ms"] is not None and p["p99_ms"] >= p["p50_ms"] for p in answered)
    assert sum(p["latency_sum_ms"] for p in series["points"]) > 0

    metrics = httpx.get(f"{url}/metrics", headers=ADMIN_HEADERS, timeout=30).text
    requests = "greenroom_embedding_requests_total"
    assert metric(metrics, requests, model=MODEL, status="200") == 4.0
    assert metric(metrics, requests, model=MODEL, status="400") == 1.0
    assert metric(metrics, "greenroom_embedding_inputs_total", model=MODEL) == 7.0
    assert metric(metrics, "greenroom_batch_size_count", model=MODEL) == counts["batches"]

    other = get_traffic(url, served_name="no-such-model").json()
    assert other["series"] == [] and other["processes"] == 0


def test_a_read_token_may_see_the_traffic_and_an_infer_token_may_not(
    server: tuple[FastAPI, str],
) -> None:
    _, url = server
    secrets = {}
    for scope in ("read", "infer"):
        created = httpx.post(
            f"{url}/v1/tokens",
            json={"name": f"traffic-{scope}", "scopes": [scope]},
            headers=ADMIN_HEADERS,
            timeout=30,
        )
        assert created.status_code == 201, created.text
        secrets[scope] = {"Authorization": f"Bearer {created.json()['token']}"}
    assert get_traffic(url, secrets["read"], window_s=60).status_code == 200
    refused = get_traffic(url, secrets["infer"])
    assert refused.status_code == 403 and isinstance(refused.json()["detail"], str)
    assert get_traffic(url, {}).status_code == 401


@pytest.mark.parametrize(
    "query",
    [{"window_s": 59}, {"window_s": 3601}, {"window_s": "an hour"}, {"served_name": "x" * 201}],
)
def test_the_query_is_bounded(server: tuple[FastAPI, str], query: dict[str, object]) -> None:
    _, url = server
    response = get_traffic(url, **query)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_the_schema_is_documented(server: tuple[FastAPI, str]) -> None:
    _, url = server
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    answer = spec["paths"]["/v1/traffic"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"]["$ref"].endswith("/TrafficRead")
    point = spec["components"]["schemas"]["TrafficPointRead"]["properties"]
    assert {"t", "requests", "errors", "latency_counts", "p50_ms", "batch_counts"} <= set(point)
