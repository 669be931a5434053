"""Shadow traffic (docs/api/migrations.md, "Rules"): while a revision is staged, sampled live
requests are also embedded by it after the live answer is ready, only when its queue is idle;
the recorder keeps the pairs, latencies and counts of the shadow report."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import async_test, wait_until
from migration_harness import NAME, MigrationHarness, migration_harness, sample

from greenroom.migrations.adapters import neighbour_overlap_at_k
from greenroom.serving import shadow as shadow_module
from greenroom.serving.shadow import LATENCY_SAMPLES, MAX_SHADOW_INPUTS, ShadowRecorder

TEXTS = [f"sentence number {i} about topic {i % 7}" for i in range(40)]


def counts(h: MigrationHarness) -> dict[str, int]:
    recorder = h.router.shadow_recorders()[NAME]
    return {
        "requests": recorder.requests,
        "inputs": recorder.inputs,
        "dropped": recorder.dropped,
        "errors": recorder.errors,
        "pairs": recorder.pairs,
    }


async def shadows_done(h: MigrationHarness) -> None:
    await wait_until(lambda: not h.router._shadow_tasks, what="the shadow calls to end")


@async_test
async def test_the_shadow_never_delays_the_live_answer(tiny_model_dir: Path) -> None:
    """The staged replica is held: every live answer comes back while the shadow waits."""
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("green", dimension=16, offset=1.0)
        h.stage("green", fraction=1.0)
        green = h.engines["green"]
        green.gate.clear()
        first = await asyncio.wait_for(h.router.embed(NAME, ["first"]), 10)
        np.testing.assert_allclose(first.vectors[0], h.expected("blue", "first"), rtol=1e-5)
        await asyncio.to_thread(green.entered.wait, 10)  # the shadow of `first` is on green
        for text in ("second", "third"):  # green is busy: answered, their shadows dropped
            result = await asyncio.wait_for(h.router.embed(NAME, [text]), 10)
            np.testing.assert_allclose(result.vectors[0], h.expected("blue", text), rtol=1e-5)
        assert counts(h) == {"requests": 3, "inputs": 3, "dropped": 2, "errors": 0, "pairs": 0}
        green.gate.set()
        await shadows_done(h)
        assert counts(h)["pairs"] == 1
        staged, live = h.router.shadow_pairs(NAME)
        np.testing.assert_allclose(staged[0], h.expected("green", "first"), rtol=1e-5)
        np.testing.assert_allclose(live[0], h.expected("blue", "first"), rtol=1e-5)
        labels = {"model": NAME}
        assert sample(h.router.metrics, "greenroom_shadow_requests_total", labels) == 3
        assert sample(h.router.metrics, "greenroom_shadow_inputs_total", labels) == 3
        assert sample(h.router.metrics, "greenroom_shadow_dropped_inputs_total", labels) == 2
        for side in ("live", "staged"):
            count = {"model": NAME, "side": side}
            assert sample(h.router.metrics, "greenroom_shadow_latency_seconds_count", count) == 1


@async_test
async def test_shadow_inputs_are_dropped_while_the_staged_queue_is_not_idle(
    tiny_model_dir: Path,
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("green", offset=1.0)
        h.stage("green", fraction=1.0)
        green = h.engines["green"]
        green.gate.clear()
        pinned = asyncio.create_task(h.router.embed(f"{NAME}@staged", ["an indexer's batch"]))
        await asyncio.to_thread(green.entered.wait, 10)
        await h.router.embed(NAME, TEXTS[:5])
        await shadows_done(h)
        assert counts(h) == {"requests": 1, "inputs": 5, "dropped": 5, "errors": 0, "pairs": 0}
        green.gate.set()
        await pinned
        await h.router.embed(NAME, TEXTS[:5])  # idle again: sent
        await shadows_done(h)
        assert counts(h)["pairs"] == 5 and counts(h)["dropped"] == 5
        assert green.batches == [1, 5]


@pytest.mark.parametrize(("fraction", "sampled"), [(0.0, 0), (1.0, 20)])
@async_test
async def test_requests_are_sampled_at_the_stored_fraction(
    tiny_model_dir: Path, fraction: float, sampled: int
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("green", offset=1.0)
        h.stage("green", fraction=fraction)
        for text in TEXTS[:20]:
            await h.router.embed(NAME, [text])
            await shadows_done(h)  # one at a time: none is dropped
        assert counts(h) == {
            "requests": sampled,
            "inputs": sampled,
            "dropped": 0,
            "errors": 0,
            "pairs": sampled,
        }
        assert len(h.engines["green"].batches) == sampled


@async_test
async def test_a_sampled_request_shadows_at_most_32_inputs_and_pinned_ones_none(
    tiny_model_dir: Path,
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("green", offset=1.0)
        h.stage("green", fraction=1.0)
        await h.router.embed(NAME, TEXTS)
        await shadows_done(h)
        assert len(TEXTS) > MAX_SHADOW_INPUTS
        assert counts(h)["inputs"] == counts(h)["pairs"] == MAX_SHADOW_INPUTS
        staged, _ = h.router.shadow_pairs(NAME)
        expected = np.stack([h.expected("green", t) for t in TEXTS[:MAX_SHADOW_INPUTS]])
        np.testing.assert_allclose(staged, expected, rtol=1e-5)
        for model in (f"{NAME}@live", f"{NAME}@blue", f"{NAME}@staged"):
            await h.router.embed(model, ["pinned names are never shadowed"])
        await shadows_done(h)
        assert counts(h)["requests"] == 1


@pytest.fixture
def cased_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "cased"))
    tokenizer_file = model_dir / "tokenizer.json"
    config = json.loads(tokenizer_file.read_text())
    config["normalizer"]["lowercase"] = False
    tokenizer_file.write_text(json.dumps(config))
    return model_dir


@async_test
async def test_token_ids_are_shadowed_only_with_the_same_tokenizer(
    tiny_model_dir: Path, cased_model_dir: Path
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("same", offset=1.0)
        await h.start("cased", offset=2.0, model_dir=cased_model_dir)
        h.stage("cased", fraction=1.0)
        await h.router.embed(NAME, [[5, 6, 7]])
        await h.router.embed(NAME, ["Text Is Tokenised Again"])  # text: by cased's tokenizer
        await shadows_done(h)
        assert counts(h)["requests"] == 1 and counts(h)["pairs"] == 1
        staged, _ = h.router.shadow_pairs(NAME)
        np.testing.assert_allclose(staged[0], h.expected("cased", "Text Is Tokenised Again"), 1e-5)
        h.stage("same", fraction=1.0)  # another staged revision: a new recorder
        assert counts(h)["requests"] == 0
        await h.router.embed(NAME, [[5, 6, 7]])
        await shadows_done(h)
        staged, live = h.router.shadow_pairs(NAME)
        np.testing.assert_allclose(staged[0], h.engines["same"].vector([5, 6, 7]), rtol=1e-5)
        np.testing.assert_allclose(live[0], h.engines["blue"].vector([5, 6, 7]), rtol=1e-5)


@async_test
async def test_a_failing_staged_revision_is_counted_and_the_live_answer_stands(
    tiny_model_dir: Path,
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("green", offset=1.0)
        h.stage("green", fraction=1.0)
        h.engines["green"].fail = True
        result = await h.router.embed(NAME, [TEXTS[0]])
        await shadows_done(h)
        np.testing.assert_allclose(result.vectors[0], h.expected("blue", TEXTS[0]), rtol=1e-5)
        assert counts(h) == {"requests": 1, "inputs": 1, "dropped": 0, "errors": 1, "pairs": 0}
        labels = {"model": NAME}
        assert sample(h.router.metrics, "greenroom_shadow_errors_total", labels) == 1


@async_test
async def test_the_summary_says_what_the_window_holds(tiny_model_dir: Path) -> None:
    async with migration_harness(tiny_model_dir, shadow_window=30) as h:
        await h.live("blue")
        await h.start("green", dimension=16, offset=1.0)
        h.stage("green", fraction=1.0)
        for start in range(0, 40, 10):
            await h.router.embed(NAME, TEXTS[start : start + 10])
            await shadows_done(h)
        summary = await h.router.shadow_recorders()[NAME].summary()
        staged, live = h.router.shadow_pairs(NAME)
        assert staged.shape == (30, 16) and live.shape == (30, 8)  # the window: the last 30
        np.testing.assert_allclose(staged[-1], h.expected("green", TEXTS[-1]), rtol=1e-5)
        assert summary["staged_revision_id"] == "green"
        assert (summary["requests"], summary["inputs"], summary["dropped"]) == (4, 40, 0)
        assert (summary["errors"], summary["pairs"], summary["window"]) == (0, 30, 30)
        assert len(summary["live_latency_ms"]) == len(summary["staged_latency_ms"]) == 4
        assert all(ms > 0 for ms in summary["live_latency_ms"] + summary["staged_latency_ms"])
        assert summary["mean_cosine"] is None  # 16-d against 8-d: not comparable
        assert summary["neighbour_overlap_at_10"] == pytest.approx(
            neighbour_overlap_at_k(staged, live, k=10)
        )
        json.dumps(summary)  # what the store keeps


def test_the_recorder_is_bounded_and_compares_equal_dimensions() -> None:
    recorder = ShadowRecorder("green", window=50)
    rng = np.random.default_rng(0)
    for _ in range(LATENCY_SAMPLES + 10):
        live = rng.normal(size=(1, 4)).astype(np.float32)
        recorder.sampled(1)
        recorder.record(live, live, live_latency_s=0.001, staged_latency_s=0.004)
    summary = recorder.snapshot().summary()
    assert summary["pairs"] == 50 and summary["requests"] == LATENCY_SAMPLES + 10
    assert len(summary["live_latency_ms"]) == LATENCY_SAMPLES
    assert summary["staged_latency_ms"][0] == pytest.approx(4.0)
    assert summary["mean_cosine"] == pytest.approx(1.0)
    assert summary["neighbour_overlap_at_10"] == pytest.approx(1.0)
    empty = ShadowRecorder("green", window=50).snapshot().summary()
    assert empty["pairs"] == 0 and empty["mean_cosine"] is None
    assert empty["neighbour_overlap_at_10"] is None


@async_test
async def test_an_unchanged_window_is_not_compared_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quadratic figures are computed once per recorded pair, not once per summary."""
    calls: list[int] = []
    real = shadow_module.neighbour_overlap_at_k

    def counted(a: np.ndarray, b: np.ndarray, *, k: int) -> float:
        calls.append(len(a))
        return real(a, b, k=k)

    monkeypatch.setattr(shadow_module, "neighbour_overlap_at_k", counted)
    recorder = ShadowRecorder("green", window=50)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(20, 4)).astype(np.float32)
    recorder.record(vectors, vectors, live_latency_s=0.001, staged_latency_s=0.002)
    first = await recorder.summary()
    recorder.sampled(3)  # counts change, pairs do not
    second = await recorder.summary()
    assert calls == [20]
    assert second["requests"] == 1 and second["pairs"] == 20
    assert second["neighbour_overlap_at_10"] == first["neighbour_overlap_at_10"]
    recorder.record(vectors[:5], -vectors[:5], live_latency_s=0.001, staged_latency_s=0.002)
    third = await recorder.summary()
    assert calls == [20, 25] and third["pairs"] == 25
    assert third["mean_cosine"] < first["mean_cosine"]
