"""Adapters: maps from a staged revision's embedding space into the live one's, fitted from paired
vectors (the same text embedded by both revisions), so that under an `adapted` promotion the served
name keeps answering in the space every existing vector index was built in.

Pure numpy on purpose: a fit runs inside an API process (`POST …/adapter`) and an applied adapter
runs on the request path of every router, so neither may pull in torch or scipy.

Three candidates are fitted on four fifths of the distinct pairs and judged on the held-out fifth
(seeded):

- `procrustes`: centred orthogonal Procrustes with one scale (semi-orthogonal when the dimensions
  differ, a partial isometry when there are fewer pairs than dimensions): it keeps every angle,
  so it wins whenever the spaces are one rotation apart (the same model retrained, re-quantised,
  lightly fine-tuned), and it is the safest map from very few pairs;
- `ridge`: centred least squares shrunk toward the Procrustes map rather than toward zero, its
  strength picked from a grid on an inner validation split by neighbour overlap (closed form:
  one eigendecomposition serves the whole grid). Strong shrinkage gives Procrustes, weak gives
  least squares. On all-MiniLM-L6-v2 ← all-mpnet-base-v2 this is what wins (see
  `bench/migration.py`): from 1,000 pairs it keeps 0.580 recall@10 where ridge toward zero with
  a squared-error strength keeps 0.532;
- `mlp`: the ridge map plus a one-hidden-layer relu residual, trained with Adam on the cosine loss
  around the inner ridge fit and stopped early on the inner validation split (its residual starts
  at zero, so it is never worse there than its start). It wins where the map is not linear; on
  MiniLM ← MPNet from ≤ 5,000 pairs the residual only overfits (the inner loss rises from the
  first steps), so it stays at the ridge map and the tie goes to ridge.

The candidate with the best held-out neighbour overlap@10 wins; candidates within OVERLAP_TIE of
it are tied, and the highest mean cosine among them wins (then the earlier, simpler kind). The
returned adapter is the one trained on the four fifths; its evaluation is measured on the fifth
it never saw (outputs normalised before the cosine). Every candidate folds its centring and
standardisation into `weight`/`bias`, so applying one is one or two small matrix products: about
5 µs per vector in a batch of 32, 20-40 µs for a single vector (768 → 384, measured here).

Fit time is bounded by construction (MAX_FIT_PAIRS, a fixed grid, a fixed step count and batch
for the MLP, the grid's overlap measured on at most MAX_GRID_ROWS pairs): 20,000 pairs of
768 → 384 took 3.5 s, and 9 s when the MLP ran all its steps, on 2 cores shared with other work
(measured 2026-12-01).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "KINDS",
    "MAX_FIT_PAIRS",
    "MIN_PAIRS",
    "AdapterEvaluation",
    "FittedAdapter",
    "LoadedAdapter",
    "NotEnoughPairs",
    "choose",
    "fit_adapter",
    "fit_adapters",
    "neighbour_overlap_at_k",
    "paired_mean_cosine",
]

MIN_PAIRS = 200
# Above this many pairs a seeded subsample is fitted: the fit's time stays bounded whatever the
# shadow window and the stored samples add up to (evaluation.pairs says how many were used).
MAX_FIT_PAIRS = 25_000
HELD_OUT_FRACTION = 0.2
INNER_FRACTION = 0.2  # of the training four fifths: picks the ridge strength, stops the MLP
OVERLAP_K = 10
OVERLAP_TIE = 0.005  # held-out overlaps closer than this are a tie: the mean cosine decides
# Ridge strengths, relative to the mean eigenvalue of the centred source's scatter matrix (so one
# grid serves any scale of vectors and any number of pairs).
RIDGE_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0)
MAX_GRID_ROWS = 1000  # inner-validation pairs the ridge grid's neighbour overlap is measured on
MLP_HIDDEN = 128
MLP_STEPS = 400
MLP_BATCH = 256
MLP_LEARNING_RATE = 1e-3
MLP_EVAL_EVERY = 20
MLP_PATIENCE = 4  # evaluations without improvement before stopping
_EPS = 1e-12
# Bytes of float32 similarities one chunk of the kNN may hold (rows × n × 4).
_KNN_CHUNK_BYTES = 64 * 1024 * 1024

KINDS = ("procrustes", "ridge", "mlp")
_PARAMETER_NAMES = {
    "procrustes": ("weight", "bias"),
    "ridge": ("weight", "bias"),
    "mlp": ("weight", "bias", "w1", "b1", "w2"),
}


class NotEnoughPairs(ValueError):
    """Fewer distinct pairs than an adapter needs: the caller answers 409 with both numbers."""

    def __init__(self, *, needed: int, have: int) -> None:
        super().__init__(f"an adapter needs at least {needed} distinct pairs; there are {have}")
        self.needed = needed
        self.have = have


@dataclass(frozen=True)
class AdapterEvaluation:
    kind: str
    pairs: int  # distinct pairs used (training + held out)
    held_out: int
    mean_cosine: float
    neighbour_overlap_at_10: float


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter read back from the store: its kind and parameters, applied by `apply`."""

    kind: str
    parameters: dict[str, np.ndarray] = field(repr=False)

    def apply(self, source: np.ndarray) -> np.ndarray:
        return _apply(self.kind, self.parameters, source)

    def to_bytes(self) -> bytes:
        return _to_bytes(self.parameters)


@dataclass(frozen=True)
class FittedAdapter:
    kind: str
    parameters: dict[str, np.ndarray] = field(repr=False)
    evaluation: AdapterEvaluation

    def apply(self, source: np.ndarray) -> np.ndarray:
        """(n, d_src) → (n, d_tgt) float32, not normalised (the router applies the live
        revision's normalisation afterwards)."""
        return _apply(self.kind, self.parameters, source)

    def to_bytes(self) -> bytes:
        return _to_bytes(self.parameters)

    @classmethod
    def from_bytes(cls, kind: str, data: bytes) -> LoadedAdapter:
        """Reads `to_bytes()` back (no pickles), checking the parameters' names and shapes, so a
        damaged row fails here with a ValueError rather than on a request."""
        if kind not in _PARAMETER_NAMES:
            raise ValueError(f"unknown adapter kind {kind!r}; known: {', '.join(KINDS)}")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                parameters = {name: np.asarray(archive[name]) for name in archive.files}
        except Exception as exc:  # a truncated or foreign blob: zipfile, OSError, ValueError…
            raise ValueError(f"adapter parameters are not readable: {exc}") from exc
        _check_parameters(kind, parameters)
        return LoadedAdapter(kind=kind, parameters=parameters)


# ----- applying ------------------------------------------------------------------------------


def _apply(kind: str, parameters: dict[str, np.ndarray], source: np.ndarray) -> np.ndarray:
    x = np.asarray(source, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    weight = parameters["weight"]
    if x.ndim != 2 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"adapter expects vectors of dimension {weight.shape[0]}, got {x.shape}")
    out = x @ weight + parameters["bias"]
    if kind == "mlp":
        hidden = np.maximum(x @ parameters["w1"] + parameters["b1"], 0.0)
        out += hidden @ parameters["w2"]
    return out.astype(np.float32, copy=False)


def _to_bytes(parameters: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value) for name, value in parameters.items()})
    return buffer.getvalue()


def _check_parameters(kind: str, parameters: dict[str, np.ndarray]) -> None:
    names = _PARAMETER_NAMES[kind]
    if set(parameters) != set(names):
        raise ValueError(f"a {kind} adapter has parameters {names}, got {sorted(parameters)}")
    for name, value in parameters.items():
        if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
            raise ValueError(f"adapter parameter {name} is not a finite float array")
    weight, bias = parameters["weight"], parameters["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[1],):
        raise ValueError("adapter weight/bias shapes do not match")
    if kind == "mlp":
        w1, b1, w2 = parameters["w1"], parameters["b1"], parameters["w2"]
        if (
            w1.ndim != 2
            or w1.shape[0] != weight.shape[0]
            or b1.shape != (w1.shape[1],)
            or w2.shape != (w1.shape[1], weight.shape[1])
        ):
            raise ValueError("mlp adapter layer shapes do not match")
    for name in names:
        parameters[name] = parameters[name].astype(np.float32, copy=False)


# ----- measures ------------------------------------------------------------------------------


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _EPS)


def _check_paired(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError("paired vectors must be 2-d arrays (rows × dimensions)")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired vectors need as many rows: {a.shape[0]} ≠ {b.shape[0]}")
    return a, b


def _neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine, in chunks of rows so 20,000 rows
    never hold an n × n matrix (at most _KNN_CHUNK_BYTES of float32 similarities at a time)."""
    unit = _normalised(x)
    n = unit.shape[0]
    chunk = max(1, _KNN_CHUNK_BYTES // (4 * n))
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims = unit[start:stop] @ unit.T
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        out[start:stop] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return out


def _overlap(neighbours_a: np.ndarray, neighbours_b: np.ndarray) -> float:
    k = neighbours_a.shape[1]
    both = np.sort(np.concatenate([neighbours_a, neighbours_b], axis=1), axis=1)
    shared = np.count_nonzero(both[:, 1:] == both[:, :-1], axis=1)  # each list has no repeats
    return float(shared.mean() / k)


def neighbour_overlap_at_k(a: np.ndarray, b: np.ndarray, k: int = OVERLAP_K) -> float | None:
    """For each row, the share of its k nearest neighbours (cosine, within its own set) that are
    also its k nearest in the other set. Needs no labels and works across dimensions; None when
    there are fewer than k + 1 rows (a row has fewer than k others)."""
    a, b = _check_paired(a, b)
    if k < 1:
        raise ValueError("k must be at least 1")
    if a.shape[0] < k + 1:
        return None
    return _overlap(_neighbours(a, k), _neighbours(b, k))


def paired_mean_cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    """The mean cosine of paired rows; None when the dimensions differ (not comparable) or there
    are no rows."""
    a, b = _check_paired(a, b)
    if a.shape[1] != b.shape[1] or a.shape[0] == 0:
        return None
    return float(np.mean(np.sum(_normalised(a) * _normalised(b), axis=1)))


# ----- fitting -------------------------------------------------------------------------------


def fit_adapter(source: np.ndarray, target: np.ndarray, *, seed: int = 0) -> FittedAdapter:
    """Fits every candidate on a seeded four fifths of the distinct pairs and returns the one with
    the best neighbour overlap@10 on the held-out fifth (tie: mean cosine), evaluated there.

    Pairs whose source vector repeats (the same text sampled twice) are kept once, so a held-out
    pair never has a twin in training. Raises NotEnoughPairs below MIN_PAIRS distinct pairs."""
    return choose(fit_adapters(source, target, seed=seed))


def fit_adapters(source: np.ndarray, target: np.ndarray, *, seed: int = 0) -> list[FittedAdapter]:
    """Every candidate, fitted on the same four fifths and evaluated on the same held-out fifth:
    what `fit_adapter` chooses from (the bench prints them all)."""
    x, y = _check_paired(source, target)
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise ValueError("paired vectors need at least one dimension")
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    finite = np.all(np.isfinite(x), axis=1) & np.all(np.isfinite(y), axis=1)
    if not finite.all():
        raise ValueError(f"{int((~finite).sum())} pairs hold non-finite values")
    x, y = _distinct_pairs(x, y)
    if x.shape[0] < MIN_PAIRS:
        raise NotEnoughPairs(needed=MIN_PAIRS, have=x.shape[0])
    rng = np.random.default_rng(seed)
    if x.shape[0] > MAX_FIT_PAIRS:
        keep = np.sort(rng.choice(x.shape[0], MAX_FIT_PAIRS, replace=False))
        x, y = x[keep], y[keep]
    train, held = _split(x.shape[0], HELD_OUT_FRACTION, rng)
    fitted = fit_candidates(x[train], y[train], rng=rng)
    neighbours = _neighbours(y[held], OVERLAP_K)
    return [
        FittedAdapter(
            kind=kind,
            parameters=parameters,
            evaluation=evaluate(
                kind, parameters, x[held], y[held], pairs=x.shape[0], neighbours=neighbours
            ),
        )
        for kind, parameters in fitted.items()
    ]


def choose(candidates: list[FittedAdapter]) -> FittedAdapter:
    """The best held-out overlap wins; candidates within OVERLAP_TIE of it are tied (a few
    neighbours of thousands is sampling noise) and the highest mean cosine among them wins."""
    top = max(c.evaluation.neighbour_overlap_at_10 for c in candidates)
    tied = [c for c in candidates if c.evaluation.neighbour_overlap_at_10 >= top - OVERLAP_TIE]
    return max(tied, key=lambda c: c.evaluation.mean_cosine)


def fit_candidates(
    x: np.ndarray, y: np.ndarray, *, rng: np.random.Generator
) -> dict[str, dict[str, np.ndarray]]:
    """Every candidate's parameters fitted on (x, y), the training four fifths (the tests check
    each candidate's parameters against the map that made the pairs)."""
    inner_train, inner_val = _split(x.shape[0], INNER_FRACTION, rng)
    moments = _Moments.of(x, y)
    ridge, ridge_inner = _fit_ridge(moments, x, y, inner_train, inner_val)
    mlp = _fit_mlp(
        x[inner_train], y[inner_train], x[inner_val], y[inner_val], ridge_inner, ridge, rng
    )
    return {"procrustes": _fit_procrustes(moments), "ridge": ridge, "mlp": mlp}


def evaluate(
    kind: str,
    parameters: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    pairs: int,
    neighbours: np.ndarray | None = None,
) -> AdapterEvaluation:
    """One candidate's evaluation on held-out pairs (outputs normalised before the cosine);
    `neighbours` are y's own, when the caller has them already."""
    mapped = _normalised(_apply(kind, parameters, x))
    overlap = 0.0
    if x.shape[0] > OVERLAP_K:
        target = _neighbours(y, OVERLAP_K) if neighbours is None else neighbours
        overlap = _overlap(_neighbours(mapped, OVERLAP_K), target)
    return AdapterEvaluation(
        kind=kind,
        pairs=pairs,
        held_out=x.shape[0],
        mean_cosine=float(paired_mean_cosine(mapped, y) or 0.0),
        neighbour_overlap_at_10=overlap,
    )


def _distinct_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1])))
    _, first = np.unique(rows.ravel(), return_index=True)
    keep = np.sort(first)
    return x[keep], y[keep]


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    held = max(1, round(n * fraction))
    return np.sort(order[held:]), np.sort(order[:held])


def _linear(weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    return {"weight": weight.astype(np.float32), "bias": bias.astype(np.float32)}


@dataclass(frozen=True)
class _Moments:
    """What every linear candidate needs of a set of pairs: the means, XcᵀXc and XcᵀYc (one
    pass over the pairs, in float32: the grams of 20,000 × 768 pairs are the fit's biggest
    products, and ridge's shrinkage dwarfs float32's rounding)."""

    mean_x: np.ndarray
    mean_y: np.ndarray
    gram: np.ndarray
    cross: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> _Moments:
        mean_x, mean_y = x.mean(axis=0), y.mean(axis=0)
        xc = (x - mean_x).astype(np.float32)
        yc = (y - mean_y).astype(np.float32)
        gram = (xc.T @ xc).astype(np.float64)
        cross = (xc.T @ yc).astype(np.float64)
        return cls(mean_x=mean_x, mean_y=mean_y, gram=gram, cross=cross)

    def linear(self, weight: np.ndarray) -> dict[str, np.ndarray]:
        return _linear(weight, self.mean_y - self.mean_x @ weight)

    def procrustes_weight(self) -> np.ndarray:
        """W = s·U·Vᵀ for the thin SVD U·S·Vᵀ of XcᵀYc, s = ΣS / ‖Xc‖² the least-squares scale
        (semi-orthogonal when the dimensions differ: the best map that keeps every angle of the
        source's subspace). U·Vᵀ is the polar factor, from the eigendecomposition of the smaller
        Gram of XcᵀYc (cheaper than an SVD of the whole)."""
        m = self.cross
        tall = m.shape[0] >= m.shape[1]
        eigenvalues, vectors = np.linalg.eigh(m.T @ m if tall else m @ m.T)
        singular = np.sqrt(np.maximum(eigenvalues, 0.0))
        # directions the pairs do not span (fewer pairs than dimensions) map to nothing rather
        # than to an arbitrary completion; 1e-4 is far above float32's rounding of the gram
        kept = singular > singular.max(initial=0.0) * 1e-4
        inverse = np.divide(1.0, singular, out=np.zeros_like(singular), where=kept)
        root = (vectors * inverse) @ vectors.T
        polar = m @ root if tall else root @ m
        return (singular.sum() / max(float(np.trace(self.gram)), _EPS)) * polar

    def ridge_weight(self, alpha: float, anchor: np.ndarray) -> np.ndarray:
        """One strength: (XcᵀXc + λI)⁻¹(XcᵀYc + λ·anchor) by a linear solve."""
        strength = alpha * self.scale
        system = self.gram + strength * np.eye(self.gram.shape[0])
        return np.linalg.solve(system, self.cross + strength * anchor)

    @property
    def scale(self) -> float:
        return max(float(np.trace(self.gram)) / self.gram.shape[0], _EPS)


def _fit_procrustes(moments: _Moments) -> dict[str, np.ndarray]:
    """Centred orthogonal Procrustes with one scale."""
    return moments.linear(moments.procrustes_weight())


def _fit_ridge(
    moments: _Moments, x: np.ndarray, y: np.ndarray, inner_train: np.ndarray, inner_val: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Centred ridge shrunk toward the Procrustes map (not toward zero), at the grid strength that
    keeps neighbours best on the inner validation split (then mean cosine), refitted at that
    strength on all of (x, y) (`moments`). Returns the refit and the inner-train fit (the MLP
    learns its residual on pairs that fit has not seen).

    Why toward Procrustes: with few pairs, plain ridge shrinks the map toward nothing and loses
    the source's geometry; shrinking toward the best angle-keeping map loses neither, so the
    strength runs from least squares (weak) to Procrustes (strong) and the grid picks between.
    Why neighbours rather than squared error: squared error rewards the right length, a cosine
    only sees the direction, and squared error picks a stronger shrinkage than retrieval wants."""
    inner_moments = _Moments.of(x[inner_train], y[inner_train])
    solve_inner = _ridge_grid_solver(inner_moments)
    xv, yv = x[inner_val], y[inner_val]
    if len(xv) > MAX_GRID_ROWS:  # the grid's neighbour sets: a bounded sample is enough
        keep = np.linspace(0, len(xv) - 1, MAX_GRID_ROWS).astype(np.int64)
        xv, yv = xv[keep], yv[keep]
    val_neighbours = _neighbours(yv, OVERLAP_K) if len(yv) > OVERLAP_K else None
    scores = [
        _inner_score(inner_moments.linear(solve_inner(alpha)), xv, yv, val_neighbours)
        for alpha in RIDGE_GRID
    ]
    alpha = RIDGE_GRID[max(range(len(scores)), key=lambda i: scores[i])]
    inner = inner_moments.linear(solve_inner(alpha))
    full = moments.linear(moments.ridge_weight(alpha, moments.procrustes_weight()))
    return full, inner


def _inner_score(
    parameters: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    neighbours: np.ndarray | None,
) -> tuple[float, float]:
    mapped = _normalised(_apply("ridge", parameters, x))
    cosine = float(paired_mean_cosine(mapped, y) or 0.0)
    if neighbours is None:
        return 0.0, cosine
    return _overlap(_neighbours(mapped, OVERLAP_K), neighbours), cosine


def _ridge_grid_solver(moments: _Moments) -> Callable[[float], np.ndarray]:
    """W(alpha) = argmin ‖XcW − Yc‖² + λ‖W − Wp‖² = (XcᵀXc + λI)⁻¹(XcᵀYc + λWp), Wp the
    Procrustes map and λ = alpha · the mean eigenvalue of XcᵀXc (so one grid serves any scale
    and any number of pairs); one eigendecomposition serves the whole grid."""
    eigenvalues, vectors = np.linalg.eigh(moments.gram)
    eigenvalues = np.maximum(eigenvalues, 0.0)
    projected = vectors.T @ moments.cross
    projected_anchor = vectors.T @ moments.procrustes_weight()

    def solve(alpha: float) -> np.ndarray:
        strength = alpha * moments.scale
        shrunk = (projected + strength * projected_anchor) / (eigenvalues + strength)[:, None]
        return vectors @ shrunk

    return solve


def _fit_mlp(
    xt: np.ndarray,
    yt: np.ndarray,
    xv: np.ndarray,
    yv: np.ndarray,
    inner: dict[str, np.ndarray],
    full: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The ridge map plus relu(x·W1 + b1)·W2 + b2, the residual trained with Adam on the mean
    cosine loss over minibatches of the inner-train pairs, around the inner ridge fit (held
    fixed: training the 768 × 384 linear part too only overfits), stopped early on the inner
    validation split and kept at its best there. The kept residual is then put on the full ridge
    fit. W2 starts at zero, so step 0 is the ridge map; the residual is scaled by the ridge
    residual's size, so Adam's steps are in the targets' units (unit vectors have components of
    about 1/√d: unscaled, the first steps would swamp the map)."""
    mean = xt.mean(axis=0)
    std = np.maximum(xt.std(axis=0), 1e-6)
    xs = ((xt - mean) / std).astype(np.float32)
    xvs = ((xv - mean) / std).astype(np.float32)
    base = (_apply("ridge", inner, xt), _apply("ridge", inner, xv))
    yt32, yv32 = _normalised(yt), _normalised(yv)
    out_scale = max(float(np.std(yt32 - _normalised(base[0]))), 1e-6)
    d, m = xs.shape[1], yt.shape[1]
    params = {
        "w1": (rng.standard_normal((d, MLP_HIDDEN)) * np.sqrt(2.0 / d)).astype(np.float32),
        "b1": np.zeros(MLP_HIDDEN, dtype=np.float32),
        "w2": np.zeros((MLP_HIDDEN, m), dtype=np.float32),
        "b2": np.zeros(m, dtype=np.float32),
    }
    adam = _Adam(params, MLP_LEARNING_RATE)
    best_loss = _cosine_loss(params, xvs, base[1], yv32, out_scale)[0]
    best = {k: v.copy() for k, v in params.items()}
    stale = 0
    batch = min(MLP_BATCH, xs.shape[0])
    for step in range(1, MLP_STEPS + 1):
        rows = rng.choice(xs.shape[0], batch, replace=False)
        _, grads = _cosine_loss(
            params, xs[rows], base[0][rows], yt32[rows], out_scale, with_grads=True
        )
        adam.step(params, grads)
        if step % MLP_EVAL_EVERY:
            continue
        loss = _cosine_loss(params, xvs, base[1], yv32, out_scale)[0]
        if not np.isfinite(loss):
            break
        if loss < best_loss - 1e-6:
            best_loss, best, stale = loss, {k: v.copy() for k, v in params.items()}, 0
        else:
            stale += 1
            if stale >= MLP_PATIENCE:
                break
    # fold the standardisation and the scale in: xs = (x − mean) / std
    w1 = best["w1"] / std[:, None]
    return {
        "weight": full["weight"],
        "bias": (full["bias"] + out_scale * best["b2"]).astype(np.float32),
        "w1": w1.astype(np.float32),
        "b1": (best["b1"] - (mean / std) @ best["w1"]).astype(np.float32),
        "w2": (out_scale * best["w2"]).astype(np.float32),
    }


def _cosine_loss(
    params: dict[str, np.ndarray],
    xs: np.ndarray,
    base: np.ndarray,
    target: np.ndarray,
    out_scale: float,
    *,
    with_grads: bool = False,
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean (1 − cosine) of base + out_scale·(relu(xs·W1 + b1)·W2 + b2) with unit targets, and
    its gradients."""
    z1 = xs @ params["w1"] + params["b1"]
    a1 = np.maximum(z1, 0.0)
    out = base + out_scale * (a1 @ params["w2"] + params["b2"])
    norms = np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)
    unit = out / norms
    cos = np.sum(unit * target, axis=1, keepdims=True)
    loss = float(np.mean(1.0 - cos))
    if not with_grads:
        return loss, {}
    g = -out_scale * (target - cos * unit) / norms / xs.shape[0]
    ga1 = (g @ params["w2"].T) * (z1 > 0)
    grads = {"w2": a1.T @ g, "b2": g.sum(axis=0), "w1": xs.T @ ga1, "b1": ga1.sum(axis=0)}
    return loss, grads


class _Adam:
    def __init__(self, params: dict[str, np.ndarray], rate: float) -> None:
        self.rate = rate
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        correction = np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for name, grad in grads.items():
            self.m[name] = b1 * self.m[name] + (1 - b1) * grad
            self.v[name] = b2 * self.v[name] + (1 - b2) * grad * grad
            step = self.rate * correction * self.m[name] / (np.sqrt(self.v[name]) + 1e-8)
            params[name] -= step.astype(np.float32)
