"""Pinned names and the adapted stage in the router (docs/api/migrations.md, "Names on
/v1/embeddings"): `name@live`, `name@staged` and `name@<revision id>` each answer with one
revision's raw vectors, tokenizer and space; under `adapted` the served name answers through the
adapter in the old space."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from helpers import async_test, wait_until
from migration_harness import NAME, migration_harness, sample

from greenroom.app import install_error_handlers
from greenroom.auth.deps import current_principal
from greenroom.auth.service import Principal
from greenroom.errors import InvalidRequestError, ModelNotFoundError, ServiceUnavailableError
from greenroom.migrations.adapters import LoadedAdapter
from greenroom.migrations.schemas import AdapterRow
from greenroom.serving import views
from greenroom.serving.router import Router

TEXT = "hello world"


@pytest.fixture
def cased_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with another tokenizer (it keeps case): other ids for the same text."""
    model_dir = Path(shutil.copytree(tiny_model_dir, tmp_path / "cased"))
    tokenizer_file = model_dir / "tokenizer.json"
    config = json.loads(tokenizer_file.read_text())
    config["normalizer"]["lowercase"] = False
    tokenizer_file.write_text(json.dumps(config))
    return model_dir


def adapter_row(weight: np.ndarray, *, revision_id: str, space: str, normalize: bool) -> AdapterRow:
    parameters = {"weight": weight.astype(np.float32), "bias": np.zeros(weight.shape[1], "f4")}
    return AdapterRow(
        id="adapter-1",
        revision_id=revision_id,
        kind="ridge",
        parameters=LoadedAdapter(kind="ridge", parameters=parameters).to_bytes(),
        target_embedding_space=space,
        target_normalize=normalize,
    )


@async_test
async def test_pinned_names_answer_with_their_own_revision_and_space(tiny_model_dir: Path) -> None:
    async with migration_harness(tiny_model_dir) as h:
        blue = await h.live("blue", offset=0.0)
        green = await h.start("green", dimension=16, offset=1.0)
        h.stage("green")
        answers = {
            model: await h.router.embed(model, [TEXT])
            for model in (NAME, f"{NAME}@live", f"{NAME}@blue", f"{NAME}@staged", f"{NAME}@green")
        }
        for model in (NAME, f"{NAME}@live", f"{NAME}@blue"):
            np.testing.assert_allclose(answers[model].vectors[0], h.expected("blue", TEXT), 1e-5)
            assert answers[model].embedding_space == blue.embedding_space()
        for model in (f"{NAME}@staged", f"{NAME}@green"):
            assert answers[model].vectors.shape == (1, 16)
            np.testing.assert_allclose(answers[model].vectors[0], h.expected("green", TEXT), 1e-5)
            assert answers[model].embedding_space == green.embedding_space()
        assert blue.embedding_space() != green.embedding_space()
        # the plain name is never shadowed into the answer: still blue's
        assert h.engines["green"].batches == [1, 1]


@async_test
async def test_each_pinned_name_uses_its_revisions_tokenizer(
    tiny_model_dir: Path, cased_model_dir: Path
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("green", offset=1.0, model_dir=cased_model_dir)
        h.stage("green")
        text = "Text Keeps Its Case"
        assert h.ids(text, revision_id="blue") != h.ids(text, revision_id="green")
        staged = await h.router.embed(f"{NAME}@staged", [text])
        np.testing.assert_allclose(staged.vectors[0], h.expected("green", text), rtol=1e-5)
        live = await h.router.embed(f"{NAME}@live", [text])
        np.testing.assert_allclose(live.vectors[0], h.expected("blue", text), rtol=1e-5)
        # token ids are read in the vocabulary of the revision that computes them
        ids = [5, 6, 7]
        by_id = await h.router.embed(f"{NAME}@green", [ids])
        np.testing.assert_allclose(by_id.vectors[0], h.engines["green"].vector(ids), rtol=1e-5)


@pytest.mark.parametrize(
    "model",
    [
        f"{NAME}@staged",  # nothing is staged
        f"{NAME}@nope",
        f"{NAME}@",
        f"{NAME}@00000000-0000-0000-0000-000000000000",
        f"{NAME}@other",  # a revision the router knows, neither live nor staged for the name
        "nope@live",
        f"{NAME}@live@live",
    ],
)
@async_test
async def test_anything_but_a_live_or_staged_revision_is_model_not_found(
    tiny_model_dir: Path, model: str
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("other", name="another")
        with pytest.raises(ModelNotFoundError, match="does not exist"):
            await h.router.embed(model, [TEXT])


@async_test
async def test_a_withdrawn_staged_revision_is_not_found_and_in_flight_pins_get_503(
    tiny_model_dir: Path,
) -> None:
    """Pinned requests are never sent elsewhere: one waiting on a revision that goes away gets
    the 503, later ones the 404."""
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("green", offset=1.0)
        h.stage("green")
        green = h.engines["green"]
        green.gate.clear()
        in_flight = asyncio.create_task(h.router.embed(f"{NAME}@green", ["first"]))
        await asyncio.to_thread(green.entered.wait, 10)
        waiting = asyncio.create_task(h.router.embed(f"{NAME}@staged", ["second"]))
        # queued, or out at the replica behind the first (a second pipeline slot)
        await wait_until(lambda: h.router._routes["green"].in_flight() == 2, what="a queued pin")
        h.router.clear_migration(NAME)
        await h.router.drop_revision("green")
        green.gate.set()
        with pytest.raises(ServiceUnavailableError):
            await waiting
        with pytest.raises(ServiceUnavailableError):
            await in_flight
        assert h.engines["blue"].batches == []  # never sent to the live revision
        for model in (f"{NAME}@green", f"{NAME}@staged"):
            with pytest.raises(ModelNotFoundError):
                await h.router.embed(model, [TEXT])


@async_test
async def test_a_staged_revision_without_a_ready_replica_answers_503(tiny_model_dir: Path) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("green", offset=1.0)
        h.stage("green")
        await h.runtime.stop_revision("green")
        await wait_until(lambda: not h.router.staged(NAME).workers, what="green to stop")
        with pytest.raises(ServiceUnavailableError, match="No ready replica"):
            await h.router.embed(f"{NAME}@staged", [TEXT])
        assert (await h.router.embed(NAME, [TEXT])).vectors.shape == (1, 8)


# ----- the adapted stage ----------------------------------------------------------------------


@async_test
async def test_under_adapted_the_served_name_answers_through_the_adapter(
    tiny_model_dir: Path,
) -> None:
    """The promoted revision (16-d) is live; the served name answers in the old 8-d space:
    the adapter's output, L2-normalised, with the old space's header; `name@live` stays raw."""
    async with migration_harness(tiny_model_dir) as h:
        promoted = await h.live("green", dimension=16, offset=1.0, allow_dimensions=True)
        weight = np.random.default_rng(0).normal(size=(16, 8))
        old_space = "m@0123456789ab/8/l2"
        h.adapt("blue", adapter_row(weight, revision_id="green", space=old_space, normalize=True))
        assert h.router.pinned_report() == {NAME: {"staged": None, "adapter": "adapter-1"}}

        result = await h.router.embed(NAME, [TEXT, "good morning"])
        raw = np.stack([h.expected("green", TEXT), h.expected("green", "good morning")])
        mapped = raw @ weight.astype(np.float32)
        mapped /= np.linalg.norm(mapped, axis=1, keepdims=True)
        np.testing.assert_allclose(result.vectors, mapped, rtol=1e-4, atol=1e-6)
        assert result.embedding_space == old_space
        metric = {"model": NAME}
        assert sample(h.router.metrics, "greenroom_adapter_inputs_total", metric) == 2

        live = await h.router.embed(f"{NAME}@live", [TEXT])
        np.testing.assert_allclose(live.vectors[0], raw[0], rtol=1e-5)
        assert live.embedding_space == promoted.embedding_space()

        # `dimensions` cut the adapter's output, not the raw vectors
        cut = await h.router.embed(NAME, [TEXT], dimensions=4)
        expected = mapped[0, :4] / np.linalg.norm(mapped[0, :4])
        np.testing.assert_allclose(cut.vectors[0], expected, rtol=1e-4, atol=1e-6)
        assert cut.embedding_space == "m@0123456789ab/4/l2"
        with pytest.raises(InvalidRequestError, match="between 1 and 8"):
            await h.router.embed(NAME, [TEXT], dimensions=9)


@async_test
async def test_an_unnormalised_target_space_keeps_the_adapter_output(tiny_model_dir: Path) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("green", offset=1.0)
        weight = 2.0 * np.eye(8)
        row = adapter_row(weight, revision_id="green", space="m@x/8/none", normalize=False)
        h.adapt("blue", row)
        result = await h.router.embed(NAME, [TEXT])
        np.testing.assert_allclose(result.vectors[0], 2.0 * h.expected("green", TEXT), rtol=1e-5)
        assert result.embedding_space == "m@x/8/none"


@async_test
async def test_under_adapted_token_ids_to_the_served_name_are_refused(tiny_model_dir: Path) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("green", offset=1.0)
        row = adapter_row(np.eye(8), revision_id="green", space="m@x/8/l2", normalize=True)
        h.adapt("blue", row)
        with pytest.raises(InvalidRequestError) as info:
            await h.router.embed(NAME, [[5, 6, 7]])
        assert info.value.message == (
            "token ids are ambiguous during a migration; send text, or use name@live"
        )
        assert h.engines["green"].batches == []
        raw = await h.router.embed(f"{NAME}@live", [[5, 6, 7]])
        np.testing.assert_allclose(raw.vectors[0], h.engines["green"].vector([5, 6, 7]), 1e-5)


@async_test
async def test_without_its_adapter_the_adapted_name_answers_503_never_raw(
    tiny_model_dir: Path,
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("green", offset=1.0)
        h.adapt("blue", None)  # the store has no adapter for the live revision (yet)
        with pytest.raises(ServiceUnavailableError, match="adapter"):
            await h.router.embed(NAME, [TEXT])
        broken = adapter_row(np.eye(8), revision_id="green", space="m@x/8/l2", normalize=True)
        h.adapt("blue", dataclasses.replace(broken, id="adapter-2", parameters=b"not an npz"))
        assert h.router.pinned_report()[NAME]["adapter"] is None
        with pytest.raises(ServiceUnavailableError, match="adapter"):
            await h.router.embed(NAME, [TEXT])
        assert (await h.router.embed(f"{NAME}@live", [TEXT])).vectors.shape == (1, 8)


@async_test
async def test_a_large_answer_is_mapped_alike_and_a_misfit_adapter_is_503(
    tiny_model_dir: Path,
) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("green", offset=1.0)
        weight = np.random.default_rng(2).normal(size=(8, 8))
        h.adapt("blue", adapter_row(weight, revision_id="green", space="m@x/8/l2", normalize=True))
        texts = [f"text {i}" for i in range(100)]  # mapped in a thread
        result = await h.router.embed(NAME, texts)
        raw = np.stack([h.expected("green", t) for t in texts]) @ weight.astype(np.float32)
        np.testing.assert_allclose(
            result.vectors, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-4, atol=1e-6
        )
        misfit = adapter_row(np.eye(4, 8), revision_id="green", space="m@x/8/l2", normalize=True)
        h.adapt("blue", dataclasses.replace(misfit, id="adapter-2"))
        with pytest.raises(ServiceUnavailableError, match="does not fit"):
            await h.router.embed(NAME, [TEXT])


@async_test
async def test_vectors_of_the_old_revision_answer_raw_in_their_own_space(
    tiny_model_dir: Path,
) -> None:
    """A request that was on the old revision when the adapted promotion switched finishes
    there: its vectors are the old space's already, never mapped again."""
    async with migration_harness(tiny_model_dir) as h:
        blue = await h.live("blue")
        await h.start("green", dimension=16, offset=1.0)
        h.engines["blue"].gate.clear()
        on_blue = asyncio.create_task(h.router.embed(NAME, [TEXT]))
        await asyncio.to_thread(h.engines["blue"].entered.wait, 10)
        h.router.set_live(NAME, "green")
        weight = np.random.default_rng(1).normal(size=(16, 8))
        h.adapt(
            "blue",
            adapter_row(weight, revision_id="green", space=blue.embedding_space(), normalize=True),
        )
        h.engines["blue"].gate.set()
        result = await on_blue
        np.testing.assert_allclose(result.vectors[0], h.expected("blue", TEXT), rtol=1e-5)
        assert result.embedding_space == blue.embedding_space()
        after = await h.router.embed(NAME, [TEXT])
        assert after.embedding_space == blue.embedding_space()
        assert after.vectors.shape == (1, 8)


# ----- /v1/models?pinned=true -------------------------------------------------------------------


def embeddings_app(router: Router) -> FastAPI:
    """The embeddings views alone on `router`, as the app renders them (auth left out)."""
    app = FastAPI()
    app.include_router(views.api_router)
    install_error_handlers(app)
    app.dependency_overrides[current_principal] = lambda: Principal("p", "p", frozenset())
    app.state.router, app.state.metrics = router, router.metrics
    app.state.settings = router.settings
    return app


@async_test
async def test_pinned_names_over_http_count_under_their_served_name(tiny_model_dir: Path) -> None:
    async with migration_harness(tiny_model_dir) as h:
        blue = await h.live("blue")
        await h.start("green", offset=1.0)
        h.stage("green")
        transport = httpx.ASGITransport(app=embeddings_app(h.router))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = {
                model: await client.post("/v1/embeddings", json={"model": model, "input": TEXT})
                for model in (f"{NAME}@live", f"{NAME}@green", f"{NAME}@nope", "nope@live")
            }
        assert answers[f"{NAME}@live"].status_code == 200
        assert answers[f"{NAME}@live"].json()["model"] == f"{NAME}@live"
        assert answers[f"{NAME}@live"].headers["x-embedding-space"] == blue.embedding_space()
        assert answers[f"{NAME}@green"].status_code == 200
        for model in (f"{NAME}@nope", "nope@live"):
            assert answers[model].status_code == 404
            error = answers[model].json()["error"]
            assert error["code"] == "model_not_found" and error["param"] == "model"
        metrics = h.router.metrics
        counted = {"model": NAME, "status": "200"}
        assert sample(metrics, "greenroom_embedding_requests_total", counted) == 2
        unknown = {"model": "unknown", "status": "404"}
        assert sample(metrics, "greenroom_embedding_requests_total", unknown) == 2
        labels = {
            s.labels.get("model")
            for family in metrics.registry.collect()
            for s in family.samples
            if "model" in s.labels
        }
        assert labels <= {NAME, "unknown"}


@async_test
async def test_models_lists_the_pinned_names_that_answer_now(tiny_model_dir: Path) -> None:
    async with migration_harness(tiny_model_dir) as h:
        await h.live("blue")
        await h.start("green", offset=1.0)
        h.stage("green")
        transport = httpx.ASGITransport(app=embeddings_app(h.router))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            plain = (await client.get("/v1/models")).json()
            pinned = (await client.get("/v1/models", params={"pinned": "true"})).json()
            await h.runtime.stop_revision("green")
            await wait_until(lambda: not h.router.staged(NAME).workers, what="green to stop")
            stopped = (await client.get("/v1/models", params={"pinned": "true"})).json()
        assert [m["id"] for m in plain["data"]] == [NAME]
        assert [m["id"] for m in pinned["data"]] == [
            NAME,
            f"{NAME}@live",
            f"{NAME}@blue",
            f"{NAME}@staged",
            f"{NAME}@green",
        ]
        assert all(m["object"] == "model" and m["created"] > 0 for m in pinned["data"])
        assert [m["id"] for m in stopped["data"]] == [NAME, f"{NAME}@live", f"{NAME}@blue"]
