"""Probes: the smoke test's verdict, the gate's cosine, and probing real replicas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import async_test

from greenroom.rollout.probes import (
    PROBE_TEXTS,
    ProbeError,
    ProbeResult,
    embed_probes,
    mean_cosine,
    smoke_problem,
    tokenize_probes,
)

N = len(PROBE_TEXTS)


def unit(rows: int, dimension: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dimension))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def check(vectors: np.ndarray, latency_s: float = 0.01, normalize: bool = True) -> str | None:
    return smoke_problem(
        ProbeResult(vectors, latency_s), dimension=8, normalize=normalize, latency_bound_s=1.0
    )


def test_good_vectors_pass_the_smoke_test() -> None:
    assert check(unit(N, 8)) is None
    assert check(unit(N, 8) * 3, normalize=False) is None


@pytest.mark.parametrize(
    ("vectors", "latency_s", "problem"),
    [
        (unit(N, 4), 0.01, "vectors have shape"),
        (unit(N - 1, 8), 0.01, "vectors have shape"),
        (np.full((N, 8), np.nan), 0.01, "NaN or infinite"),
        (unit(N, 8) * 2, 0.01, "not unit length"),
        (unit(N, 8), 5.0, "over the bound of 1.0 s"),
    ],
)
def test_bad_vectors_fail_the_smoke_test(
    vectors: np.ndarray, latency_s: float, problem: str
) -> None:
    found = check(vectors, latency_s)
    assert found is not None and problem in found


def test_mean_cosine() -> None:
    blue = unit(N, 8)
    assert mean_cosine(blue, blue) == pytest.approx(1.0)
    assert mean_cosine(blue, -blue) == pytest.approx(-1.0)
    assert mean_cosine(blue, unit(N, 16)) is None  # other dimensions: not comparable


def test_probe_texts_tokenize_with_the_model_s_tokenizer(tiny_model_dir: Path) -> None:
    lengths, ids = tokenize_probes(tiny_model_dir)
    assert lengths.shape == (N,) and int(lengths.sum()) == len(ids)
    assert (lengths > 0).all()


@async_test
async def test_probing_needs_a_ready_replica(tiny_model_dir: Path) -> None:
    with pytest.raises(ProbeError, match="no ready replica"):
        await embed_probes(tiny_model_dir, [{"state": "starting", "port": 1}], secret="s")
    with pytest.raises(ProbeError, match="no ready replica"):
        await embed_probes(tiny_model_dir, [], secret="s")
