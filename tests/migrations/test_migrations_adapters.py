"""Adapters on synthetic pairs whose true map is known: each candidate recovers the map it can
express, the choice goes to the one that keeps neighbours best, and a stored adapter applies
exactly as the fitted one did. Small dimensions keep every test well under a second or two."""

from __future__ import annotations

import numpy as np
import pytest

from greenroom.migrations import adapters
from greenroom.migrations.adapters import (
    MIN_PAIRS,
    FittedAdapter,
    NotEnoughPairs,
    fit_adapter,
    neighbour_overlap_at_k,
    paired_mean_cosine,
)


def _rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_procrustes_recovers_a_known_rotation() -> None:
    rng = np.random.default_rng(1)
    rotation = _rotation(rng, 32)
    x = rng.standard_normal((600, 32))
    y = 2.0 * x @ rotation + 0.5 + 0.05 * rng.standard_normal((600, 32))

    fitted = adapters.fit_candidates(x, y, rng=np.random.default_rng(0))["procrustes"]
    np.testing.assert_allclose(fitted["weight"], 2.0 * rotation, atol=0.01)
    np.testing.assert_allclose(fitted["bias"], np.full(32, 0.5), atol=0.01)

    adapter = fit_adapter(x, y)
    assert adapter.kind == "procrustes"
    assert adapter.evaluation.mean_cosine > 0.999
    assert adapter.evaluation.neighbour_overlap_at_10 > 0.95
    assert adapter.evaluation.pairs == 600
    assert adapter.evaluation.held_out == 120


def test_ridge_recovers_a_known_linear_map_across_dimensions() -> None:
    rng = np.random.default_rng(2)
    linear = rng.standard_normal((48, 16))
    x = rng.standard_normal((800, 48))
    y = x @ linear - 1.0 + 0.01 * rng.standard_normal((800, 16))

    fitted = adapters.fit_candidates(x, y, rng=np.random.default_rng(0))["ridge"]
    np.testing.assert_allclose(fitted["weight"], linear, atol=0.02)
    np.testing.assert_allclose(fitted["bias"], np.full(16, -1.0), atol=0.02)

    adapter = fit_adapter(x, y)
    assert adapter.kind in {"ridge", "mlp"}  # the MLP starts at the ridge map
    assert adapter.evaluation.mean_cosine > 0.999
    mapped = adapter.apply(x[:5])
    assert mapped.dtype == np.float32
    assert mapped.shape == (5, 16)


def test_the_mlp_wins_where_the_map_is_not_linear() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 8))
    y = np.concatenate([x, np.abs(x)], axis=1)  # |x| is beyond any linear map

    adapter = fit_adapter(x, y)
    assert adapter.kind == "mlp"
    linear = adapters.evaluate(
        "ridge", adapters.fit_candidates(x, y, rng=np.random.default_rng(0))["ridge"], x, y, pairs=1
    )
    assert adapter.evaluation.neighbour_overlap_at_10 > linear.neighbour_overlap_at_10 + 0.05
    assert adapter.evaluation.mean_cosine > 0.97


def test_too_few_distinct_pairs_are_refused_with_both_numbers() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((MIN_PAIRS - 1, 8))
    with pytest.raises(NotEnoughPairs) as raised:
        fit_adapter(x, x)
    assert (raised.value.needed, raised.value.have) == (MIN_PAIRS, MIN_PAIRS - 1)

    # the same text sampled twice is one pair: 300 rows, 150 distinct
    twice = np.concatenate([x[:150], x[:150]])
    with pytest.raises(NotEnoughPairs) as raised:
        fit_adapter(twice, twice)
    assert raised.value.have == 150


def test_bad_pairs_are_refused() -> None:
    x = np.zeros((300, 4))
    with pytest.raises(ValueError, match="as many rows"):
        fit_adapter(x, x[:-1])
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_adapter(x, x)


@pytest.mark.parametrize(
    ("make_y", "kind"),
    [(lambda x: x @ np.eye(8)[::-1], "procrustes"), (lambda x: np.abs(x), None)],
)
def test_to_bytes_from_bytes_round_trip(make_y, kind) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 8))
    adapter = fit_adapter(x, make_y(x))
    if kind is not None:
        assert adapter.kind == kind
    loaded = FittedAdapter.from_bytes(adapter.kind, adapter.to_bytes())
    assert loaded.kind == adapter.kind
    probe = rng.standard_normal((7, 8)).astype(np.float32)
    np.testing.assert_array_equal(loaded.apply(probe), adapter.apply(probe))
    assert loaded.to_bytes() == adapter.to_bytes()


def test_from_bytes_refuses_what_it_cannot_apply() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((400, 8))
    data = fit_adapter(x, x @ _rotation(rng, 8)).to_bytes()
    with pytest.raises(ValueError, match="unknown adapter kind"):
        FittedAdapter.from_bytes("linear", data)
    with pytest.raises(ValueError, match="not readable"):
        FittedAdapter.from_bytes("ridge", data[: len(data) // 2])
    with pytest.raises(ValueError, match="parameters"):
        FittedAdapter.from_bytes("mlp", data)  # a linear map has no hidden layer
    loaded = FittedAdapter.from_bytes("ridge", data)
    with pytest.raises(ValueError, match="dimension 8"):
        loaded.apply(np.zeros((2, 9), dtype=np.float32))


def test_neighbour_overlap_is_one_for_the_same_set_and_chance_for_unrelated_ones() -> None:
    rng = np.random.default_rng(7)
    a = rng.standard_normal((2000, 16))
    assert neighbour_overlap_at_k(a, a) == 1.0
    # a rotation and a rescale keep every cosine neighbour, across a change of dimension too
    wider = np.concatenate([3.0 * a @ _rotation(rng, 16), np.zeros((2000, 4))], axis=1)
    assert neighbour_overlap_at_k(a, wider) == pytest.approx(1.0, abs=1e-3)
    unrelated = neighbour_overlap_at_k(a, rng.standard_normal((2000, 24)))
    chance = 10 / 1999
    assert unrelated is not None
    assert unrelated < 3 * chance


def test_neighbour_overlap_in_chunks_matches_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    a = rng.standard_normal((500, 8))
    b = a + 0.3 * rng.standard_normal((500, 8))
    whole = neighbour_overlap_at_k(a, b, k=5)
    monkeypatch.setattr(adapters, "_KNN_CHUNK_BYTES", 4 * 500 * 7)  # 7 rows a chunk
    assert neighbour_overlap_at_k(a, b, k=5) == whole
    assert whole is not None and 0.2 < whole < 1.0


def test_neighbour_overlap_needs_more_rows_than_k() -> None:
    a = np.eye(10)
    assert neighbour_overlap_at_k(a, a, k=10) is None
    assert neighbour_overlap_at_k(np.eye(11), np.eye(11), k=10) == 1.0
    with pytest.raises(ValueError):
        neighbour_overlap_at_k(a, a[:-1])


def test_paired_mean_cosine() -> None:
    rng = np.random.default_rng(9)
    a = rng.standard_normal((50, 6))
    assert paired_mean_cosine(a, 2.0 * a) == pytest.approx(1.0)
    assert paired_mean_cosine(a, -a) == pytest.approx(-1.0)
    assert paired_mean_cosine(a, a[:, :5]) is None
    assert paired_mean_cosine(a[:0], a[:0]) is None
    assert paired_mean_cosine(np.zeros((3, 6)), a[:3]) == 0.0


def test_ridge_runs_from_least_squares_to_procrustes() -> None:
    """Weak shrinkage gives the least-squares map, strong shrinkage the Procrustes map (not zero:
    with few pairs the map keeps the source's angles instead of fading away)."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((300, 12))
    y = x @ rng.standard_normal((12, 6)) + 0.1 * rng.standard_normal((300, 6))
    moments = adapters._Moments.of(x, y)
    solve = adapters._ridge_grid_solver(moments)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    least_squares = np.linalg.lstsq(xc, yc, rcond=None)[0]
    np.testing.assert_allclose(solve(1e-9), least_squares, atol=1e-4)
    np.testing.assert_allclose(solve(1e9), moments.procrustes_weight(), atol=1e-4)
    np.testing.assert_allclose(
        moments.ridge_weight(0.3, moments.procrustes_weight()), solve(0.3), atol=1e-6
    )


def test_procrustes_from_fewer_pairs_than_dimensions_maps_unseen_directions_to_nothing() -> None:
    rng = np.random.default_rng(11)
    rotation = _rotation(rng, 16)
    x = np.zeros((40, 16))
    x[:, :6] = rng.standard_normal((40, 6))  # the pairs span 6 of 16 dimensions
    weight = adapters._fit_procrustes(adapters._Moments.of(x, x @ rotation))["weight"]
    np.testing.assert_allclose(weight[:6], rotation[:6], atol=1e-4)
    np.testing.assert_allclose(weight[6:], 0.0, atol=1e-4)
