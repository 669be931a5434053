"""ONNX and torch engines on real (tiny and default) models.

The torch engine imports torch into the test process: torch-using tests stay in this one file.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from greenroom.errors import BackendError
from greenroom.registry.weights import content_hash, inspect_model
from greenroom.runtime.engines import Engine, EngineOptions, load_engine, onnx_engine
from greenroom.runtime.engines.base import chunk_rows
from greenroom.runtime.engines.onnx_engine import export_dir

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world!",
    "Embedding models turn sentences into vectors for search, quickly and well.",
    "A",
    "What is the weather like today in the city near the river?",
    "greenroom serves text embeddings 24/7 without dropping requests",
]


def tokenize(model_dir: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids as the router sends them: lengths and ids back to back."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    max_length = inspect_model(model_dir).max_seq_length
    tokenizer.enable_truncation(max_length)
    encodings = tokenizer.encode_batch(texts)
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    return lengths, np.concatenate([np.array(e.ids, dtype=np.int64) for e in encodings])


def make_engine(
    model_dir: Path, cache_dir: Path, engine: str, quantization: str = "none"
) -> Engine:
    options = EngineOptions(
        model_path=model_dir,
        content_hash=content_hash(model_dir),
        engine=engine,
        quantization=quantization,
        threads=1,
        cache_dir=cache_dir,
    )
    return load_engine(options)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def assert_finite_unit_vectors(vectors: np.ndarray, dimension: int) -> None:
    assert vectors.shape == (len(SENTENCES), dimension)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_batch(tiny_model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return tokenize(tiny_model_dir, SENTENCES)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model_dir: Path, onnx_cache_dir: Path) -> Engine:
    return make_engine(tiny_model_dir, onnx_cache_dir, "onnx")


@pytest.fixture(scope="module")
def tiny_torch(tiny_model_dir: Path, onnx_cache_dir: Path) -> Engine:
    return make_engine(tiny_model_dir, onnx_cache_dir, "torch")


def test_onnx_matches_torch_on_the_tiny_model(
    tiny_onnx: Engine, tiny_torch: Engine, tiny_batch: tuple[np.ndarray, np.ndarray]
) -> None:
    onnx_vectors = tiny_onnx.embed(*tiny_batch)
    torch_vectors = tiny_torch.embed(*tiny_batch)
    assert_finite_unit_vectors(onnx_vectors, 32)
    assert_finite_unit_vectors(torch_vectors, 32)
    assert row_cosines(onnx_vectors, torch_vectors).min() >= 0.9999


def test_torch_engine_matches_sentence_transformers(
    tiny_torch: Engine, tiny_model_dir: Path, tiny_batch: tuple[np.ndarray, np.ndarray]
) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(SENTENCES)
    assert row_cosines(tiny_torch.embed(*tiny_batch), reference).min() >= 0.9999


def test_tiny_models_embed_into_different_spaces(
    tiny_onnx: Engine,
    tiny_model_2_dir: Path,
    onnx_cache_dir: Path,
    tiny_batch: tuple[np.ndarray, np.ndarray],
) -> None:
    other = make_engine(tiny_model_2_dir, onnx_cache_dir, "onnx")
    assert row_cosines(tiny_onnx.embed(*tiny_batch), other.embed(*tiny_batch)).mean() < 0.9


@pytest.mark.parametrize("engine_name", ["onnx", "torch"])
def test_a_padded_batch_equals_each_sequence_alone(
    request: pytest.FixtureRequest, engine_name: str, tiny_batch: tuple[np.ndarray, np.ndarray]
) -> None:
    engine: Engine = request.getfixturevalue(f"tiny_{engine_name}")
    lengths, flat_ids = tiny_batch
    assert len(set(lengths.tolist())) == len(lengths)  # mixed lengths: every row but one padded
    batched = engine.embed(lengths, flat_ids)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for row, (start, end) in enumerate(itertools.pairwise(offsets)):
        alone = engine.embed(lengths[row : row + 1], flat_ids[start:end])
        np.testing.assert_allclose(batched[row], alone[0], atol=1e-5)


def test_a_batch_within_the_budget_is_one_chunk_in_its_own_order() -> None:
    lengths = np.array([9, 3, 7])
    assert [c.tolist() for c in chunk_rows(lengths, 27)] == [[0, 1, 2]]
    assert [c.tolist() for c in chunk_rows(lengths, None)] == [[0, 1, 2]]
    assert [c.tolist() for c in chunk_rows(np.array([500]), 16)] == [[0]]


def test_chunks_follow_length_order_within_the_padded_budget() -> None:
    lengths = np.array([30, 4, 4, 12, 5, 40, 6])
    chunks = chunk_rows(lengths, 24)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(lengths)))  # each row once
    ordered = [lengths[c].tolist() for c in chunks]
    assert ordered == [[4, 4, 5, 6], [12], [30], [40]]  # 40 and 30 are over the budget: alone
    for chunk in chunks:
        assert len(chunk) == 1 or len(chunk) * lengths[chunk].max() <= 24


@pytest.mark.parametrize("engine_name", ["onnx", "torch"])
def test_a_batch_in_several_chunks_keeps_each_vector_in_its_row(
    request: pytest.FixtureRequest, engine_name: str, tiny_batch: tuple[np.ndarray, np.ndarray]
) -> None:
    engine: Engine = request.getfixturevalue(f"tiny_{engine_name}")
    lengths, flat_ids = tiny_batch
    whole = engine.embed(lengths, flat_ids)
    budget, engine.chunk_tokens = engine.chunk_tokens, int(lengths.max())  # one row a chunk
    try:
        assert len(chunk_rows(lengths, engine.chunk_tokens)) > 1
        chunked = engine.embed(lengths, flat_ids)
    finally:
        engine.chunk_tokens = budget
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_int8_on_the_tiny_model_is_finite_and_normalised(
    tiny_model_dir: Path, onnx_cache_dir: Path, tiny_batch: tuple[np.ndarray, np.ndarray]
) -> None:
    engine = make_engine(tiny_model_dir, onnx_cache_dir, "onnx", quantization="int8")
    assert engine.session._model_path.endswith("model-int8.onnx")
    assert_finite_unit_vectors(engine.embed(*tiny_batch), 32)


def test_export_is_cached_per_content_hash(
    tiny_onnx: Engine,
    tiny_model_dir: Path,
    onnx_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tiny_batch: tuple[np.ndarray, np.ndarray],
) -> None:
    exported = export_dir(tiny_onnx.options) / "model.onnx"
    assert exported.parent == onnx_cache_dir / content_hash(tiny_model_dir)
    mtime = exported.stat().st_mtime_ns

    def no_export(model_path: Path, output: Path) -> None:
        raise AssertionError("the ONNX model was exported again")

    monkeypatch.setattr(onnx_engine, "_export_in_child", no_export)
    again = make_engine(tiny_model_dir, onnx_cache_dir, "onnx")
    assert exported.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(again.embed(*tiny_batch), tiny_onnx.embed(*tiny_batch))


def test_export_failure_is_a_backend_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "modules.json", "tokenizer.json"):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(BackendError, match=r"ONNX export of .* failed"):
        make_engine(broken, tmp_path / "cache", "onnx")
    assert not (tmp_path / "cache" / content_hash(broken) / "model.onnx").exists()


@pytest.mark.default_model
def test_default_model_onnx_and_int8_match_torch(
    default_model_dir: Path, onnx_cache_dir: Path
) -> None:
    batch = tokenize(default_model_dir, SENTENCES)
    torch_vectors = make_engine(default_model_dir, onnx_cache_dir, "torch").embed(*batch)
    onnx_vectors = make_engine(default_model_dir, onnx_cache_dir, "onnx").embed(*batch)
    int8_vectors = make_engine(default_model_dir, onnx_cache_dir, "onnx", "int8").embed(*batch)
    for vectors in (torch_vectors, onnx_vectors, int8_vectors):
        assert_finite_unit_vectors(vectors, 384)
    assert row_cosines(onnx_vectors, torch_vectors).min() >= 0.9999
    assert row_cosines(int8_vectors, torch_vectors).min() >= 0.95


def test_an_unknown_engine_is_refused_by_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown engine 'tensorrt': use onnx or torch"):
        make_engine(tiny_model_dir, tmp_path, "tensorrt")
