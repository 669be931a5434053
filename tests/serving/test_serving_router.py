"""The router against in-process replicas (fake runtime, model-free engines)."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from factories import HashEngine
from helpers import async_test, wait_until

from greenroom.config import Settings
from greenroom.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    ServiceUnavailableError,
)
from greenroom.metrics import Metrics
from greenroom.registry.weights import inspect_model
from greenroom.runtime.base import RevisionSpec
from greenroom.runtime.fake import FakeRuntime
from greenroom.serving.router import Router, ServedRevision


class GatedEngine(HashEngine):
    """A HashEngine that records its batches and can be held on a gate."""

    def __init__(self, gate: threading.Event, offset: float = 0.0) -> None:
        super().__init__()
        self.gate = gate
        self.offset = offset
        self.batches: list[int] = []
        self.entered = threading.Event()

    def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        self.batches.append(len(lengths))
        return super().embed(lengths, flat_ids) + self.offset


@dataclass
class Harness:
    runtime: FakeRuntime
    router: Router
    engines: dict[str, list[GatedEngine]]
    gate: threading.Event
    model_dir: Path

    async def serve(
        self,
        revision_id: str,
        *,
        replicas: int = 1,
        name: str = "m",
        model_dir: Path | None = None,
        **kwargs: object,
    ) -> ServedRevision:
        revision = await self.prepare(
            revision_id, replicas=replicas, name=name, model_dir=model_dir, **kwargs
        )
        self.router.set_live(name, revision_id)
        return revision

    async def prepare(
        self,
        revision_id: str,
        *,
        replicas: int = 1,
        name: str = "m",
        model_dir: Path | None = None,
        **kwargs: object,
    ) -> ServedRevision:
        """Start a revision's replicas and add it to the router, without making it live."""
        model_dir = model_dir or self.model_dir
        revision = ServedRevision(
            revision_id=revision_id,
            served_name=name,
            embedding_model_id=name,
            content_hash="ab" * 32,
            info=inspect_model(model_dir),
            **kwargs,  # type: ignore[arg-type]
        )
        spec = RevisionSpec(
            revision_id=revision_id,
            model_path=model_dir,
            content_hash="ab" * 32,
            replicas=replicas,
        )
        await self.runtime.start_revision(spec)
        await wait_for(lambda: len(self.runtime.ready_replicas(revision_id)) == replicas)
        self.router.add_revision(revision)
        return revision


async def wait_for(predicate) -> None:  # type: ignore[no-untyped-def]
    await wait_until(predicate, what="the router to get there")


@asynccontextmanager
async def harness(model_dir: Path, **settings: object) -> AsyncIterator[Harness]:
    gate = threading.Event()
    gate.set()
    engines: dict[str, list[GatedEngine]] = {}
    offsets: dict[str, float] = {}

    def factory(spec: RevisionSpec) -> GatedEngine:
        offset = offsets.setdefault(spec.revision_id, float(len(offsets)))
        engine = GatedEngine(gate, offset)
        engines.setdefault(spec.revision_id, []).append(engine)
        return engine

    runtime = FakeRuntime(factory)
    router = Router(runtime, Metrics(), Settings(**settings))  # type: ignore[arg-type]
    try:
        yield Harness(runtime, router, engines, gate, model_dir)
    finally:
        gate.set()
        await router.close()
        await runtime.close()


@async_test
async def test_revisions_of_one_tokenizer_share_it(
    tiny_model_dir: Path, tiny_model_2_dir: Path
) -> None:
    async with harness(tiny_model_dir) as h:
        await h.serve("blue")
        await h.prepare("green")
        await h.prepare("other", name="n", model_dir=tiny_model_2_dir)
        routes = h.router._routes
        assert routes["green"].tokenizer is routes["blue"].tokenizer
        h.router.set_live("m", "green")
        await h.router.drop_revision("blue")  # the one that loaded it goes; green keeps it
        assert (await h.router.embed("m", ["hello world"])).vectors.shape[0] == 1
        same_file = routes["other"].tokenizer_key == routes["green"].tokenizer_key
        assert (routes["other"].tokenizer is routes["green"].tokenizer) == same_file


@async_test
async def test_strings_are_tokenised_once_and_embedded(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir) as h:
        revision = await h.serve("r1")
        result = await h.router.embed("m", ["hello world", "a longer sentence here"])
        tokenizer = h.router.live("m").tokenizer
        expected_ids = [
            e.ids for e in tokenizer.encode_batch(["hello world", "a longer sentence here"])
        ]
        assert result.prompt_tokens == sum(len(ids) for ids in expected_ids)
        np.testing.assert_allclose(
            result.vectors[0], HashEngine().expected(expected_ids[0]), rtol=1e-5
        )
        assert result.embedding_space == f"m@{'ab' * 6}/{revision.info.dimension}/l2"


@async_test
async def test_token_ids_are_used_as_given_and_truncated(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir) as h:
        revision = await h.serve("r1")
        limit = revision.info.max_seq_length
        result = await h.router.embed("m", [[5, 6, 7], list(range(1, limit + 20))])
        assert result.prompt_tokens == 3 + limit
        np.testing.assert_allclose(result.vectors[0], HashEngine().expected([5, 6, 7]), rtol=1e-5)


@async_test
async def test_token_ids_outside_the_vocabulary_are_refused(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir) as h:
        revision = await h.serve("r1")
        with pytest.raises(InvalidRequestError, match="Token ids"):
            await h.router.embed("m", [[revision.info.vocab_size]])


@async_test
async def test_an_unknown_name_is_model_not_found(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir) as h:
        with pytest.raises(ModelNotFoundError):
            await h.router.embed("nope", ["x"])


@async_test
async def test_requests_queue_while_the_replica_is_busy_and_go_in_one_batch(
    tiny_model_dir: Path,
) -> None:
    async with harness(tiny_model_dir, replica_pipeline_depth=1) as h:
        await h.serve("r1")
        engine = h.engines["r1"][0]
        h.gate.clear()
        first = asyncio.create_task(h.router.embed("m", ["first"]))
        await asyncio.to_thread(engine.entered.wait, 10)
        rest = [asyncio.create_task(h.router.embed("m", [f"text {i}"])) for i in range(10)]
        await wait_for(lambda: len(h.router.live("m").queue) == 10)
        h.gate.set()
        await asyncio.gather(first, *rest)
        assert engine.batches == [1, 10]


@async_test
async def test_a_second_batch_waits_at_the_replica_while_the_first_computes(
    tiny_model_dir: Path,
) -> None:
    async with harness(tiny_model_dir, replica_pipeline_depth=2) as h:
        await h.serve("r1")
        engine = h.engines["r1"][0]
        route = h.router.live("m")
        h.gate.clear()
        first = asyncio.create_task(h.router.embed("m", ["first"]))
        await asyncio.to_thread(engine.entered.wait, 10)
        second = asyncio.create_task(h.router.embed("m", ["second"]))
        await wait_for(lambda: route.batches_in_flight == 2)  # out at once, not queued
        rest = [asyncio.create_task(h.router.embed("m", [f"text {i}"])) for i in range(5)]
        await wait_for(lambda: len(route.queue) == 5)  # both slots taken: these wait here
        h.gate.set()
        await asyncio.gather(first, second, *rest)
        assert engine.batches == [1, 1, 5]


@async_test
async def test_switch_sends_new_requests_to_green_while_blue_finishes(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir) as h:
        await h.serve("blue")
        await h.serve("green", name="other")  # prepared under another name first
        h.gate.clear()
        on_blue = asyncio.create_task(h.router.embed("m", ["sent before the switch"]))
        await asyncio.to_thread(h.engines["blue"][0].entered.wait, 10)
        assert h.router.in_flight("blue") == 1
        h.router.set_live("m", "green")
        h.gate.set()
        blue_result, green_result = await asyncio.gather(on_blue, h.router.embed("m", ["after"]))
        assert blue_result.vectors[0][0] < 1.5  # offsets: blue 0, green 1 (vectors are unit)
        assert green_result.vectors[0][0] > 0
        assert h.engines["green"][0].batches == [1]
        assert h.router.in_flight("blue") == 0


@async_test
async def test_a_replica_dying_mid_batch_is_retried_on_another(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir) as h:
        await h.serve("r1", replicas=2)
        h.gate.clear()
        request = asyncio.create_task(h.router.embed("m", ["survives a crash"]))
        await wait_for(lambda: any(e.entered.is_set() for e in h.engines["r1"]))
        busy = next(i for i, e in enumerate(h.engines["r1"]) if e.entered.is_set())
        await h.runtime.crash(f"r1-{busy}")
        other = h.engines["r1"][1 - busy]
        await asyncio.to_thread(other.entered.wait, 10)
        h.gate.set()
        result = await request
        assert result.vectors.shape[0] == 1
        assert other.batches == [1]


@async_test
async def test_with_every_replica_down_queued_requests_fail_after_the_wait(
    tiny_model_dir: Path,
) -> None:
    async with harness(tiny_model_dir, replica_wait_s=0.2) as h:
        await h.serve("r1")
        h.gate.clear()
        request = asyncio.create_task(h.router.embed("m", ["x"]))
        await asyncio.to_thread(h.engines["r1"][0].entered.wait, 10)
        await h.runtime.crash("r1-0")
        with pytest.raises(ServiceUnavailableError):
            await request
        with pytest.raises(ServiceUnavailableError, match="No ready replica"):
            await h.router.embed("m", ["y"])


@async_test
async def test_a_restarted_replica_picks_up_waiting_requests(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir, replica_wait_s=30) as h:
        await h.serve("r1")
        h.gate.clear()
        request = asyncio.create_task(h.router.embed("m", ["x"]))
        await asyncio.to_thread(h.engines["r1"][0].entered.wait, 10)
        await h.runtime.crash("r1-0")
        h.gate.set()
        await h.runtime.restart("r1-0")
        assert (await request).vectors.shape == (1, 8)


@async_test
async def test_a_full_queue_refuses_with_overloaded(tiny_model_dir: Path) -> None:
    # one principal may hold the whole queue here: the model's own bound is what is tested
    async with harness(tiny_model_dir, principal_queue_share=1.0, replica_pipeline_depth=1) as h:
        await h.serve("r1", max_queue=2)
        h.gate.clear()
        busy = asyncio.create_task(h.router.embed("m", ["in flight"]))
        await asyncio.to_thread(h.engines["r1"][0].entered.wait, 10)
        queued = [asyncio.create_task(h.router.embed("m", ["q"])) for _ in range(2)]
        await wait_for(lambda: h.router.live("m").queue.requests_waiting == 2)
        with pytest.raises(OverloadedError):
            await h.router.embed("m", ["one too many"])
        h.gate.set()
        await asyncio.gather(busy, *queued)


@async_test
async def test_dimensions_need_a_model_that_allows_them(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir) as h:
        await h.serve("r1")
        await h.serve("r2", name="matryoshka", allow_dimensions=True)
        with pytest.raises(InvalidRequestError, match="does not support"):
            await h.router.embed("m", ["x"], dimensions=4)
        result = await h.router.embed("matryoshka", ["x"], dimensions=4)
        assert result.vectors.shape == (1, 4)
        assert np.linalg.norm(result.vectors[0]) == pytest.approx(1.0, rel=1e-5)
        assert result.embedding_space.endswith("/4/l2")
        with pytest.raises(InvalidRequestError, match="between"):
            await h.router.embed("matryoshka", ["x"], dimensions=10_000)


@async_test
async def test_a_client_that_leaves_frees_its_queued_items(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir, replica_pipeline_depth=1) as h:
        await h.serve("r1")
        engine = h.engines["r1"][0]
        h.gate.clear()
        busy = asyncio.create_task(h.router.embed("m", ["in flight"]))
        await asyncio.to_thread(engine.entered.wait, 10)
        leaver = asyncio.create_task(h.router.embed("m", ["a", "b", "c"]))
        stayer = asyncio.create_task(h.router.embed("m", ["d"]))
        await wait_for(lambda: len(h.router.live("m").queue) == 4)
        leaver.cancel()
        h.gate.set()
        await asyncio.gather(busy, stayer)
        assert engine.batches == [1, 1]


@async_test
async def test_removing_a_name_answers_not_found(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir) as h:
        await h.serve("r1")
        h.router.remove("m")
        with pytest.raises(ModelNotFoundError):
            await h.router.embed("m", ["x"])


@async_test
async def test_a_long_string_is_cut_yet_embeds_as_the_whole_string(tiny_model_dir: Path) -> None:
    """Off the event loop and from a short prefix (serving.tokenizing), the same vector."""
    async with harness(tiny_model_dir) as h:
        await h.serve("r1")
        text = " \t" * 300_000 + "hello world, a longer sentence here " * 2_000
        full_ids = h.router.live("m").tokenizer.encode_batch_fast([text])[0].ids
        result = await h.router.embed("m", [text, "short"], principal="someone")
        np.testing.assert_allclose(result.vectors[0], HashEngine().expected(full_ids), rtol=1e-5)
        assert result.prompt_tokens == len(full_ids) + len(
            h.router.live("m").tokenizer.encode("short").ids
        )


# ----- a missed switch: requests that reach a withdrawn revision go to the live one -------------


@pytest.fixture
def other_tokenizer_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with another tokenizer (it keeps case): its token ids mean other text."""
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "cased"))
    tokenizer_file = model_dir / "tokenizer.json"
    config = json.loads(tokenizer_file.read_text())
    config["normalizer"]["lowercase"] = False
    tokenizer_file.write_text(json.dumps(config))
    return model_dir


def switch_on_ask(h: Harness, name: str, revision_id: str) -> list[str]:
    """A live source that finds `revision_id` live for `name` (what the store says after a
    switch the router missed); records each time the router asks."""
    asked: list[str] = []

    async def live_source() -> None:
        asked.append(name)
        h.router.set_live(name, revision_id)

    h.router.on_missed_switch(live_source)
    return asked


def green_vector(ids: list[int]) -> np.ndarray:
    return HashEngine().expected(ids) + 1.0  # offsets: blue 0, green 1


@async_test
async def test_a_batch_on_a_revision_that_stops_is_sent_to_the_live_one(
    tiny_model_dir: Path,
) -> None:
    async with harness(tiny_model_dir, replica_wait_s=60) as h:
        await h.serve("blue")
        await h.prepare("green")  # the store made green live; this router has not followed
        asked = switch_on_ask(h, "m", "green")
        h.gate.clear()
        during = asyncio.create_task(h.router.embed("m", ["sent while blue stops"]))
        await asyncio.to_thread(h.engines["blue"][0].entered.wait, 10)
        await h.runtime.stop_revision("blue")
        h.gate.set()
        after = await h.router.embed("m", ["sent after blue stopped"])
        result = await during
        tokenizer = h.router.live("m").tokenizer
        for embedded, text in (
            (result, "sent while blue stops"),
            (after, "sent after blue stopped"),
        ):
            np.testing.assert_allclose(
                embedded.vectors[0], green_vector(tokenizer.encode(text).ids), rtol=1e-5
            )
        assert asked and h.router.live("m").revision_id == "green"


@async_test
async def test_a_request_to_a_revision_without_replicas_asks_and_goes_to_the_live_one(
    tiny_model_dir: Path,
) -> None:
    async with harness(tiny_model_dir) as h:
        await h.serve("blue")
        await h.prepare("green")
        await h.runtime.stop_revision("blue")
        await wait_for(lambda: not h.router.live("m").workers)  # blue has no replica left
        asked = switch_on_ask(h, "m", "green")
        result = await h.router.embed("m", [[5, 6, 7]])  # token ids: green has blue's tokenizer
        np.testing.assert_allclose(result.vectors[0], green_vector([5, 6, 7]), rtol=1e-5)
        assert asked == ["m"]


@async_test
async def test_token_ids_are_never_replayed_into_another_tokenizer(
    tiny_model_dir: Path, other_tokenizer_dir: Path
) -> None:
    async with harness(tiny_model_dir) as h:
        await h.serve("blue")
        await h.prepare("green", model_dir=other_tokenizer_dir)
        await h.runtime.stop_revision("blue")
        await wait_for(lambda: not h.router.live("m").workers)  # blue has no replica left
        switch_on_ask(h, "m", "green")
        with pytest.raises(ServiceUnavailableError, match="another tokenizer") as info:
            await h.router.embed("m", [[5, 6, 7]])
        assert "Tokenise the input again (or send the text) and retry" in info.value.message
        assert h.engines["green"][0].batches == []
        # text is tokenised again, by green's tokenizer
        result = await h.router.embed("m", ["Text Keeps Its Case"])
        ids = h.router.live("m").tokenizer.encode("Text Keeps Its Case").ids
        np.testing.assert_allclose(result.vectors[0], green_vector(ids), rtol=1e-5)


@async_test
async def test_with_no_other_live_revision_the_503_stands(tiny_model_dir: Path) -> None:
    async with harness(tiny_model_dir) as h:
        await h.serve("r1")
        await h.runtime.stop_revision("r1")
        await wait_for(lambda: not h.router.live("m").workers)  # r1 has no replica left
        asked: list[str] = []

        async def live_source() -> None:
            asked.append("m")  # the store still names r1

        h.router.on_missed_switch(live_source)
        with pytest.raises(ServiceUnavailableError, match="No ready replica"):
            await h.router.embed("m", ["x"])
        assert asked == ["m"]
