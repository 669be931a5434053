"""The migration state API over HTTP (docs/api/migrations.md): paths, shapes, scopes, bounds
and errors, on SQLite and PostgreSQL; the fit flow with a stand-in for the app's router."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from factories import api_app
from fastapi.testclient import TestClient
from migration_rows import OTHER_CONTENT_HASH, add_revisions

from greenroom.auth import service as auth_service
from greenroom.auth.schemas import TokenCreate
from greenroom.auth.scopes import Scope
from greenroom.config import Settings
from greenroom.edge import EdgeMiddleware
from greenroom.errors import ModelNotFoundError
from greenroom.migrations import service as migrations_service
from greenroom.migrations import views as migrations_views
from greenroom.store.db import Store

BASE = "/v1/migrations/default/docs"
LIVE_SPACE = f"docs@{'ab' * 6}/8/l2"
STAGED_SPACE = f"docs@{OTHER_CONTENT_HASH[:12]}/12/none"
STATE_FIELDS = {
    "served_name",
    "stage",
    "live",
    "staged",
    "shadow",
    "adapter",
    "samples",
    "thresholds",
}
ADAPTER_FIELDS = {
    "kind",
    "pairs",
    "held_out",
    "mean_cosine",
    "neighbour_overlap_at_10",
    "fitted_at",
}


# ----- a stand-in for the app's router: both revisions are fixed linear maps of one hidden vector


def hidden(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(16)


@dataclass(frozen=True)
class Result:
    vectors: np.ndarray
    embedding_space: str


@dataclass(frozen=True)
class Info:
    normalize: bool


@dataclass(frozen=True)
class FakeRevision:
    info: Info
    space: str

    def embedding_space(self, dimension: int | None = None) -> str:
        return self.space


@dataclass(frozen=True)
class FakeRoute:
    revision: FakeRevision
    revision_id: str


@dataclass
class FakeRouter:
    live_id: str
    staged_id: str
    shadow: tuple[np.ndarray, np.ndarray] | None = None
    calls: list[tuple[str, int, str]] = field(default_factory=list)
    maps: dict[str, np.ndarray] = field(
        default_factory=lambda: {
            "live": np.random.default_rng(1).standard_normal((16, 8)),
            "staged": np.random.default_rng(2).standard_normal((16, 12)),
        }
    )

    async def embed(self, served_name: str, inputs: list[str], *, principal: str = "") -> Result:
        self.calls.append((served_name, len(inputs), principal))
        which = {f"docs@{self.live_id}": "live", f"docs@{self.staged_id}": "staged"}.get(
            served_name
        )
        if which is None:
            raise ModelNotFoundError(f"The model '{served_name}' does not exist.")
        vectors = np.stack([hidden(text) for text in inputs]) @ self.maps[which]
        space = LIVE_SPACE if which == "live" else STAGED_SPACE
        return Result(vectors.astype(np.float32), space)

    def shadow_pairs(self, served_name: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self.shadow

    def live(self, served_name: str) -> FakeRoute | None:
        return FakeRoute(FakeRevision(Info(normalize=True), LIVE_SPACE), self.live_id)

    def pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        h = np.stack([hidden(f"shadow {i}") for i in range(n)])
        return (h @ self.maps["staged"]).astype(np.float32), (h @ self.maps["live"]).astype(
            np.float32
        )


# ----- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def revisions(store: Store, tmp_path: Path) -> tuple[str, str]:
    """(live, staged) revision ids of `docs`; nothing is staged yet."""
    with store.session_scope() as db_session:
        return add_revisions(db_session, tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def router(revisions: tuple[str, str]) -> FakeRouter:
    return FakeRouter(*revisions)


@pytest.fixture
def client(store: Store, settings: Settings, router: FakeRouter) -> Iterator[TestClient]:
    app = api_app(store, settings, migrations_views.api_router)
    app.state.router = router
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def stage(store: Store, revisions: tuple[str, str]) -> None:
    with store.session_scope() as db_session:
        migrations_service.record_staged(db_session, served_name="docs", revision_id=revisions[1])


def call(client: TestClient, method: str, path: str, status: int, **kwargs: object) -> dict:
    response = client.request(method, BASE + path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    return response.json()


def texts(n: int, prefix: str = "sample") -> list[str]:
    return [f"{prefix} text number {i}" for i in range(n)]


# ----- GET --------------------------------------------------------------------------------------


def test_a_name_not_in_a_migration_is_404(client: TestClient, store: Store) -> None:
    body = call(client, "GET", "", 404)
    assert body == {"detail": "`docs` is not in a migration and has no staged revision"}
    call(client, "PUT", "/shadow", 200, json={"fraction": 0.1})  # a row at stage none
    assert "not in a migration" in call(client, "GET", "", 404)["detail"]
    other = "/v1/migrations/team-a/docs"
    response = client.get(other)
    assert response.status_code == 404
    assert response.json() == {
        "detail": "`team-a/docs` is not in a migration and has no staged revision"
    }


def test_the_state_of_a_staged_migration(
    client: TestClient, store: Store, revisions: tuple[str, str]
) -> None:
    stage(store, revisions)
    call(client, "POST", "/samples", 200, json={"texts": texts(3)})
    with store.session_scope() as db_session:
        migrations_service.write_shadow_summary(
            db_session,
            served_name="docs",
            router_id="r1",
            summary={"staged_revision_id": revisions[1], "requests": 4, "inputs": 5},
        )
    state = call(client, "GET", "", 200)
    assert set(state) == STATE_FIELDS
    assert (state["served_name"], state["stage"], state["samples"]) == ("docs", "staged", 3)
    assert state["live"] == {"revision_id": revisions[0], "embedding_space": LIVE_SPACE}
    assert state["staged"] == {
        "revision_id": revisions[1],
        "embedding_space": STAGED_SPACE,
        "phase": "Running",
    }
    shadow = state["shadow"]
    assert (shadow["fraction"], shadow["requests"], shadow["inputs"]) == (0.05, 4, 5)
    assert (shadow["processes"], shadow["window"]) == (1, 2000)
    assert shadow["latency_ms"] == dict.fromkeys(
        ("live_p50", "live_p99", "staged_p50", "staged_p99")
    )
    assert state["adapter"] is None
    assert state["thresholds"] == {
        "adapter_mean_cosine": 0.8,
        "adapter_neighbour_overlap_at_10": 0.5,
    }


# ----- PUT shadow -------------------------------------------------------------------------------


def test_the_shadow_fraction_is_stored_before_and_while_staged(
    client: TestClient, store: Store, revisions: tuple[str, str]
) -> None:
    body = call(client, "PUT", "/shadow", 200, json={"fraction": 0.2})
    assert body == {"served_name": "docs", "fraction": 0.2}
    stage(store, revisions)
    assert call(client, "GET", "", 200)["shadow"]["fraction"] == 0.2
    call(client, "PUT", "/shadow", 200, json={"fraction": 0})
    assert call(client, "GET", "", 200)["shadow"]["fraction"] == 0.0


@pytest.mark.parametrize(
    "body",
    [{"fraction": 1.01}, {"fraction": -0.1}, {}, {"fraction": "x"}, {"fraction": 0.1, "x": 1}],
)
def test_a_fraction_out_of_bounds_is_422(client: TestClient, body: dict) -> None:
    detail = call(client, "PUT", "/shadow", 422, json=body)["detail"]
    assert isinstance(detail, list) and detail


def test_a_nan_fraction_is_422(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    call(client, "PUT", "/shadow", 422, content=b'{"fraction": NaN}', headers=headers)


def test_a_name_that_is_not_live_is_404_for_writes(client: TestClient) -> None:
    path = "/v1/migrations/default/nothing"
    for method, suffix, body in (
        ("PUT", "/shadow", {"fraction": 0.1}),
        ("POST", "/samples", {"texts": ["a"]}),
        ("POST", "/adapter", None),
    ):
        response = client.request(method, path + suffix, json=body)
        assert response.status_code == 404, response.text
        assert response.json() == {
            "detail": "`nothing` is not deployed: a migration starts from a live revision"
        }


# ----- POST samples -----------------------------------------------------------------------------


def test_samples_are_stored_before_staging(client: TestClient, store: Store) -> None:
    body = call(client, "POST", "/samples", 200, json={"texts": texts(5)})
    assert body == {"served_name": "docs", "samples": 5, "added": 5}
    body = call(client, "POST", "/samples", 200, json={"texts": texts(2048)})
    assert body == {"served_name": "docs", "samples": 2053, "added": 2048}
    with store.session_scope() as db_session:
        assert migrations_service.sample_texts(db_session, served_name="docs")[:2] == texts(2)


@pytest.mark.parametrize(
    "body",
    [
        {"texts": texts(2049)},
        {"texts": ["x" * 8193]},
        {"texts": [""]},
        {"texts": []},
        {"texts": ["a\u0000b"]},
        {"texts": [1]},
        {"texts": "a"},
        {"texts": ["a"], "extra": 1},
    ],
    ids=["2049", "8193-chars", "empty-text", "no-texts", "nul", "number", "string", "extra"],
)
def test_sample_bodies_out_of_bounds_are_422(client: TestClient, body: dict) -> None:
    detail = call(client, "POST", "/samples", 422, json=body)["detail"]
    assert isinstance(detail, list) and detail
    assert call(client, "POST", "/samples", 200, json={"texts": ["ok"]})["samples"] == 1


def test_a_lone_surrogate_is_422_not_500(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    content = b'{"texts": ["fine", "\\ud800"]}'
    detail = call(client, "POST", "/samples", 422, content=content, headers=headers)["detail"]
    assert [error["loc"] for error in detail] == [["body", "texts", 1]]


def test_the_samples_route_takes_8_mib_bodies_and_the_others_1_mib(settings: Settings) -> None:
    edge = EdgeMiddleware(lambda *_: None, settings=settings, render_error=lambda *_: None)  # type: ignore[arg-type]
    assert edge.body_limit(BASE + "/samples") == 8 * 1024 * 1024
    assert edge.body_limit("/v1/migrations/team-a/docs/samples") == 8 * 1024 * 1024
    assert edge.body_limit(BASE + "/shadow") == settings.max_control_request_bytes
    assert edge.body_limit(BASE + "/samples/x") == settings.max_control_request_bytes
    assert edge.body_limit("/v1/embeddings") == settings.max_request_bytes


# ----- scopes -----------------------------------------------------------------------------------


def test_a_read_token_reads_and_writes_nothing(
    store: Store, settings: Settings, revisions: tuple[str, str]
) -> None:
    stage(store, revisions)
    with store.session_scope() as db_session:
        token_in = TokenCreate(name="reader", scopes=[Scope.READ])
        _, secret = auth_service.create(db_session, token_in=token_in)
    app = api_app(store, settings, migrations_views.api_router, principal=None)
    with TestClient(app, headers={"Authorization": f"Bearer {secret}"}) as client:
        assert call(client, "GET", "", 200)["stage"] == "staged"
        for method, path, body in (
            ("PUT", "/shadow", {"fraction": 0.5}),
            ("POST", "/samples", {"texts": ["a"]}),
            ("POST", "/adapter", None),
        ):
            detail = call(client, method, path, 403, json=body)["detail"]
            assert detail == "The token 'reader' lacks the `deploy` scope."


def test_no_token_is_401(store: Store, settings: Settings) -> None:
    app = api_app(store, settings, migrations_views.api_router, principal=None)
    with TestClient(app) as client:
        for method, path in (("GET", ""), ("PUT", "/shadow"), ("POST", "/adapter")):
            response = client.request(method, BASE + path, json={"fraction": 0.1})
            assert response.status_code == 401
            assert set(response.json()) == {"detail"}


def test_the_policy_gives_read_to_get_and_deploy_to_the_rest() -> None:
    from greenroom.auth.policy import required_scope

    assert required_scope("GET", migrations_views.BASE) == Scope.READ
    for method, path in (("PUT", "/shadow"), ("POST", "/samples"), ("POST", "/adapter")):
        assert required_scope(method, migrations_views.BASE + path) == Scope.DEPLOY


# ----- POST adapter -----------------------------------------------------------------------------


def test_an_adapter_is_fitted_from_samples_and_shadow_pairs(
    client: TestClient, store: Store, revisions: tuple[str, str], router: FakeRouter
) -> None:
    stage(store, revisions)
    call(client, "POST", "/samples", 200, json={"texts": texts(150)})
    router.shadow = router.pairs(100)
    adapter = call(client, "POST", "/adapter", 200)
    assert set(adapter) == ADAPTER_FIELDS
    assert adapter["kind"] in {"procrustes", "ridge", "mlp"}
    assert adapter["pairs"] == 250 and adapter["held_out"] > 0
    assert adapter["neighbour_overlap_at_10"] > 0.5
    # 150 texts in chunks of 64, each by both revisions, pinned by id, for the caller
    sizes = sorted(n for name, n, _ in router.calls if name == f"docs@{revisions[1]}")
    assert sizes == [22, 64, 64]
    assert {principal for *_, principal in router.calls} == {"00000000-0000-4000-8000-000000000001"}
    assert call(client, "GET", "", 200)["adapter"] == adapter
    with store.session_scope() as db_session:
        stored = migrations_service.active_adapter(db_session, served_name="docs")
        assert stored is not None
        assert (stored.revision_id, stored.target_revision_id) == (revisions[1], revisions[0])
        assert (stored.target_embedding_space, stored.target_normalize) == (LIVE_SPACE, True)
        assert stored.parameters


def test_shadow_pairs_alone_are_enough(
    client: TestClient, store: Store, revisions: tuple[str, str], router: FakeRouter
) -> None:
    stage(store, revisions)
    router.shadow = router.pairs(220)
    assert call(client, "POST", "/adapter", 200)["pairs"] == 220
    assert router.calls == []


def test_too_few_pairs_is_409_saying_how_many(
    client: TestClient, store: Store, revisions: tuple[str, str]
) -> None:
    stage(store, revisions)
    call(client, "POST", "/samples", 200, json={"texts": texts(37)})
    assert call(client, "POST", "/adapter", 409) == {
        "detail": "`docs` has 37 pairs; an adapter needs at least 200: upload sample texts "
        "(POST /v1/migrations/default/docs/samples) or let shadow traffic run"
    }


def test_fitting_without_a_staged_revision_is_409(
    client: TestClient, store: Store, revisions: tuple[str, str]
) -> None:
    expected = '`docs` has no staged revision: deploy with "strategy": "staged" first'
    assert call(client, "POST", "/adapter", 409) == {"detail": expected}  # live, no row
    stage(store, revisions)
    with store.session_scope() as db_session:
        migrations_service.record_promoted(
            db_session, served_name="docs", mode="adapted", old_revision_id=revisions[0]
        )
    assert "promoted already" in call(client, "POST", "/adapter", 409)["detail"]


def test_a_revision_this_process_does_not_serve_is_503(
    client: TestClient, store: Store, revisions: tuple[str, str], router: FakeRouter
) -> None:
    stage(store, revisions)
    call(client, "POST", "/samples", 200, json={"texts": texts(3)})
    router.staged_id = "not-served-here"
    detail = call(client, "POST", "/adapter", 503)["detail"]
    assert f"docs@{revisions[1]}" in detail and "try again" in detail
