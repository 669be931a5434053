"""The exact embedding cache (serving.cache): the LRU alone, then in the router (fake runtime,
model-free engines) and over HTTP (`x-cache`)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from factories import HashEngine
from fastapi import FastAPI
from helpers import async_test, wait_until
from migration_harness import NAME, MigrationHarness, migration_harness, sample
from servers import ADMIN_HEADERS, ADMIN_TOKEN, running_server
from test_serving_sync import NAME as SYNC_NAME
from test_serving_sync import setup as sync_setup

from greenroom.app import create_app
from greenroom.config import Settings
from greenroom.runtime.fake import FakeRuntime
from greenroom.serving.cache import ENTRY_OVERHEAD, MIB, EmbeddingCache, cache_key
from greenroom.store.db import Store
from greenroom.workloads import service as workloads_service

TEXT = "hello world"
DIMENSION = 8


def key(*ids: int) -> bytes:
    return cache_key(np.asarray(ids, dtype=np.int64))


def vector(value: float, dimension: int = DIMENSION) -> np.ndarray:
    return np.full(dimension, value, dtype=np.float32)


# ----- the LRU alone -------------------------------------------------------------------------


def test_the_key_is_the_exact_int64_ids() -> None:
    assert key(1, 2) == np.array([1, 2], dtype=np.int64).tobytes()
    assert key(1, 2) != key(2, 1) != key(1, 2, 0)
    assert cache_key(np.array([1, 2], dtype=np.int32)) == key(1, 2)


def test_a_cache_of_zero_mib_is_no_cache() -> None:
    assert EmbeddingCache.of_mib(0) is None
    cache = EmbeddingCache.of_mib(3)
    assert cache is not None and cache.max_bytes == 3 * MIB
    with pytest.raises(ValueError):
        EmbeddingCache(0)


def test_get_returns_a_read_only_copy_of_what_was_put() -> None:
    cache = EmbeddingCache(MIB)
    batch = np.stack([vector(1.0), vector(2.0)])
    cache.put(key(1), batch[1])
    batch[1] = 9.0  # the batch the row came from changes: the stored copy does not
    stored = cache.get(key(1))
    assert stored is not None and stored.dtype == np.float32
    np.testing.assert_array_equal(stored, vector(2.0))
    assert not stored.flags.writeable
    assert cache.get(key(2)) is None


def test_the_bound_counts_key_vector_and_overhead_and_evicts_the_least_recently_used() -> None:
    one = EmbeddingCache.entry_cost(key(1), vector(0.0))
    assert one == 8 + DIMENSION * 4 + ENTRY_OVERHEAD
    cache = EmbeddingCache(3 * one)
    for i in (1, 2, 3):
        cache.put(key(i), vector(i))
    assert cache.bytes == 3 * one and len(cache) == 3
    assert cache.get(key(1)) is not None  # 1 is now the most recently used: 2 goes first
    cache.put(key(4), vector(4.0))
    assert cache.get(key(2)) is None
    assert [cache.get(key(i)) is not None for i in (1, 3, 4)] == [True, True, True]
    assert cache.bytes == 3 * one and cache.bytes <= cache.max_bytes
    for i in range(5, 50):
        cache.put(key(i), vector(i))
        assert cache.bytes <= cache.max_bytes
    assert len(cache) == 3


def test_putting_a_key_again_replaces_it_and_an_entry_over_the_bound_is_not_stored() -> None:
    cache = EmbeddingCache(1000)
    cache.put(key(1), vector(1.0))
    cache.put(key(1), vector(5.0))
    assert len(cache) == 1 and cache.bytes == EmbeddingCache.entry_cost(key(1), vector(5.0))
    np.testing.assert_array_equal(cache.get(key(1)), vector(5.0))  # type: ignore[arg-type]
    cache.put(key(2), vector(1.0, dimension=1000))
    assert cache.get(key(2)) is None and len(cache) == 1


# ----- in the router -------------------------------------------------------------------------


def hits(h: MigrationHarness) -> tuple[float, float]:
    labels = {"model": NAME}
    return (
        sample(h.router.metrics, "greenroom_embedding_cache_hits_total", labels),
        sample(h.router.metrics, "greenroom_embedding_cache_misses_total", labels),
    )


@async_test
async def test_a_repeat_is_answered_from_the_cache_without_the_replica(
    tiny_model_dir: Path,
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue", cache_mib=1)
        engine = h.engines["blue"]
        first = await h.router.embed(NAME, [TEXT])
        assert first.cached == 0 and engine.batches == [1]
        again = await h.router.embed(NAME, [TEXT])
        assert again.cached == 1 and engine.batches == [1]  # the replica was not called
        np.testing.assert_array_equal(again.vectors, first.vectors)
        np.testing.assert_allclose(again.vectors[0], h.expected("blue", TEXT), rtol=1e-5)
        assert again.prompt_tokens == first.prompt_tokens
        assert hits(h) == (1.0, 1.0)
        assert h.router.cache_bytes() == {(NAME, "blue"): h.router.live(NAME).cache.bytes}


@async_test
async def test_only_misses_are_queued_and_the_answer_keeps_the_input_order(
    tiny_model_dir: Path,
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue", cache_mib=1)
        engine = h.engines["blue"]
        await h.router.embed(NAME, ["b", "d"])
        texts = ["a", "b", "c", "b", "d", "a"]
        result = await h.router.embed(NAME, texts)
        # "a" and "c" were missing ("a" twice in the request: computed once)
        assert engine.batches == [2, 2] and result.cached == 3
        for row, text in zip(result.vectors, texts, strict=True):
            np.testing.assert_allclose(row, h.expected("blue", text), rtol=1e-5)
        assert hits(h) == (3.0, 5.0)


@async_test
async def test_without_a_cache_nothing_is_stored_or_counted(tiny_model_dir: Path) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        assert h.router.live(NAME).cache is None
        await h.router.embed(NAME, [TEXT])
        again = await h.router.embed(NAME, [TEXT])
        assert again.cached == 0 and h.engines["blue"].batches == [1, 1]
        assert hits(h) == (0.0, 0.0) and h.router.cache_bytes() == {}
        assert (
            h.router.metrics.registry.get_sample_value(
                "greenroom_embedding_cache_hits_total", {"model": NAME}
            )
            is None
        )


@async_test
async def test_after_a_switch_the_new_revision_does_not_see_the_old_ones_entries(
    tiny_model_dir: Path,
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue", cache_mib=1)
        await h.router.embed(NAME, [TEXT])
        await h.start("green", offset=1.0, cache_mib=1)
        h.router.set_live(NAME, "green")
        result = await h.router.embed(NAME, [TEXT])
        assert result.cached == 0 and h.engines["green"].batches == [1]
        np.testing.assert_allclose(result.vectors[0], h.expected("green", TEXT), rtol=1e-5)
        again = await h.router.embed(NAME, [TEXT])
        assert again.cached == 1
        np.testing.assert_allclose(again.vectors[0], h.expected("green", TEXT), rtol=1e-5)
        sizes = h.router.cache_bytes()
        assert set(sizes) == {(NAME, "blue"), (NAME, "green")}


@async_test
async def test_dimensions_and_pinned_names_are_answered_from_the_raw_entries(
    tiny_model_dir: Path,
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue", cache_mib=1, allow_dimensions=True)
        engine = h.engines["blue"]
        full = await h.router.embed(NAME, [TEXT])
        cut = await h.router.embed(NAME, [TEXT], dimensions=4)
        assert cut.cached == 1 and engine.batches == [1]
        raw = h.expected("blue", TEXT)[:4]
        np.testing.assert_allclose(cut.vectors[0], raw / np.linalg.norm(raw), rtol=1e-5)
        assert cut.embedding_space.endswith("/4/l2")
        for model in (f"{NAME}@live", f"{NAME}@blue"):
            pinned = await h.router.embed(model, [TEXT])
            assert pinned.cached == 1
            np.testing.assert_array_equal(pinned.vectors, full.vectors)
        assert engine.batches == [1]


@async_test
async def test_the_router_keeps_the_bound_while_it_evicts(tiny_model_dir: Path) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue", cache_mib=1)
        route = h.router.live(NAME)
        ids = [[5, 6], [7, 8], [9, 10]]
        cost = EmbeddingCache.entry_cost(key(5, 6), vector(0.0))
        route.cache = EmbeddingCache(2 * cost)  # room for two entries of this model
        await h.router.embed(NAME, ids)
        assert len(route.cache) == 2 and route.cache.bytes <= route.cache.max_bytes
        result = await h.router.embed(NAME, ids[1:])
        assert result.cached == 2
        assert (await h.router.embed(NAME, ids[:1])).cached == 0  # the oldest went first


@async_test
async def test_shadow_traffic_bypasses_the_staged_cache(tiny_model_dir: Path) -> None:
    """A shadow call is always computed by the staged replica: its latency is never a hit's."""
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue", cache_mib=1)
        await h.start("green", dimension=16, offset=1.0, cache_mib=1)
        h.stage("green", fraction=1.0)
        staged = h.router._routes["green"]
        staged.cache.put(cache_key(np.asarray(h.ids(TEXT), dtype=np.int64)), vector(0.0, 16))
        for _ in range(2):
            await h.router.embed(NAME, [TEXT])
            await wait_until(lambda: not h.router._shadow_tasks, what="the shadow calls")
        assert h.engines["green"].batches == [1, 1] and len(staged.cache) == 1
        pairs = h.router.shadow_pairs(NAME)
        assert pairs is not None
        np.testing.assert_allclose(pairs[0][0], h.expected("green", TEXT), rtol=1e-5)


# ----- over HTTP -----------------------------------------------------------------------------


@pytest.fixture
def fake_app(tiny_model_dir: Path, tmp_path: Path) -> FastAPI:
    settings = Settings(
        data_dir=tmp_path,
        default_model_id="tiny",
        default_model_source=str(tiny_model_dir),
        admin_token=ADMIN_TOKEN,
    )
    return create_app(settings, FakeRuntime(lambda spec: HashEngine(dimension=32)))


def test_every_200_says_how_many_inputs_the_cache_answered(fake_app: FastAPI) -> None:
    with running_server(fake_app) as url:

        def post(inputs: list[str]) -> httpx.Response:
            body = {"model": "tiny", "input": inputs}
            response = httpx.post(
                f"{url}/v1/embeddings", json=body, headers=ADMIN_HEADERS, timeout=30
            )
            assert response.status_code == 200, response.text
            return response

        assert post(["a", "b"]).headers["x-cache"] == "0/2"  # the default: no cache
        assert post(["a"]).headers["x-cache"] == "0/1"
        fake_app.state.router.live("tiny").cache = EmbeddingCache.of_mib(1)
        assert post(["a"]).headers["x-cache"] == "0/1"
        assert post(["a"]).headers["x-cache"] == "1/1"
        assert post(["a", "c", "a"]).headers["x-cache"] == "2/3"
        metrics = httpx.get(f"{url}/metrics", headers=ADMIN_HEADERS, timeout=30).text
        assert 'greenroom_embedding_cache_hits_total{model="tiny"} 3.0' in metrics
        assert 'greenroom_embedding_cache_bytes{model="tiny"' in metrics


# ----- from the revision's config ------------------------------------------------------------


@async_test
async def test_cache_mib_reaches_the_router_from_the_revisions_config(
    store: Store, tiny_model_dir: Path
) -> None:
    async with sync_setup(store, tiny_model_dir, supervisor_here=True) as s:
        blue = s.add_revision(offset=0.0)
        with store.session_scope() as session:
            revision = workloads_service.get_revision_or_fail(session, revision_id=blue)
            revision.config = {**revision.config, "cache_mib": 2}
        await s.start(blue)
        s.point_live(blue)
        await s.sync.sync_once()
        route = s.router.live(SYNC_NAME)
        assert route is not None and route.revision.cache_mib == 2
        assert route.cache is not None and route.cache.max_bytes == 2 * MIB
