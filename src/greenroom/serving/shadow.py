"""Shadow traffic's evidence in one API process: paired vectors, latencies and counts.

While a served name has a staged revision, the router embeds a sampled share of the name's live
requests with the staged revision too, off the request path (`Router._shadow`). Each served name
has one `ShadowRecorder` per staged revision (a new staged revision starts a new one): it keeps
the last `window` pairs of vectors (staged, live) that the adapter fit and the shadow report
use, the last `LATENCY_SAMPLES` embedding times of each side, and the counts of the contract's
shadow report. The router sync writes `summary()` to the store every few seconds
(`migrations.service.write_shadow_summary`); the migration API merges the summaries of every
API process.

Counting: `requests` are the sampled requests, `inputs` their inputs meant for the staged
revision (at most `MAX_SHADOW_INPUTS` a request), `dropped` those of them never sent because the
staged queue was busy, `errors` the shadow calls that failed. The pairs are the inputs that were
embedded by both sides.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from greenroom.migrations.adapters import neighbour_overlap_at_k, paired_mean_cosine

MAX_SHADOW_INPUTS = 32  # a sampled request shadows at most this many of its inputs
LATENCY_SAMPLES = 512  # latencies kept per side
OVERLAP_K = 10


@dataclass(frozen=True)
class ShadowSnapshot:
    """A copy of a recorder's state, taken on the event loop; its summary may then be computed
    in a thread (the neighbour overlap is quadratic in the window)."""

    staged_revision_id: str
    requests: int
    inputs: int
    dropped: int
    errors: int
    live_latency_ms: list[float]
    staged_latency_ms: list[float]
    staged: np.ndarray | None
    live: np.ndarray | None
    window: int
    pairs: int = 0
    # (mean cosine, overlap) computed before from the same pairs: not computed again
    figures: tuple[float | None, float | None] | None = None

    def summary(self) -> dict[str, Any]:
        """The summary dict each API process writes to the store (the brief's shape)."""
        pairs = self.pairs
        mean_cosine, overlap = self.figures or (None, None)
        if self.figures is None and self.staged is not None and self.live is not None:
            mean_cosine = paired_mean_cosine(self.staged, self.live)
            overlap = neighbour_overlap_at_k(self.staged, self.live, k=OVERLAP_K)
        return {
            "staged_revision_id": self.staged_revision_id,
            "requests": self.requests,
            "inputs": self.inputs,
            "dropped": self.dropped,
            "errors": self.errors,
            "live_latency_ms": list(self.live_latency_ms),
            "staged_latency_ms": list(self.staged_latency_ms),
            "pairs": pairs,
            "window": self.window,
            "mean_cosine": None if mean_cosine is None else float(mean_cosine),
            "neighbour_overlap_at_10": None if overlap is None else float(overlap),
        }


class ShadowRecorder:
    """One served name's shadow evidence for one staged revision, bounded in memory.

    Used from the event loop only; `summary` copies the state there and computes in a thread.
    """

    def __init__(self, staged_revision_id: str, *, window: int) -> None:
        self.staged_revision_id = staged_revision_id
        self.window = window
        self.requests = 0
        self.inputs = 0
        self.dropped = 0
        self.errors = 0
        self._staged: deque[np.ndarray] = deque(maxlen=window)
        self._live: deque[np.ndarray] = deque(maxlen=window)
        self._live_latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self._staged_latency_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        # The quadratic figures of the window, kept until a pair is recorded: a summary is
        # written every few seconds, and recomputing an unchanged window took CPU from live
        # traffic (a 2,000-pair window of 768-d vectors is a few GFLOP).
        self._pairs_version = 0
        self._figures: tuple[int, tuple[float | None, float | None]] | None = None

    # ----- what the router records ------------------------------------------------------------
    def sampled(self, inputs: int) -> None:
        """A live request was sampled; `inputs` of its inputs are meant for the staged side."""
        self.requests += 1
        self.inputs += inputs

    def drop(self, inputs: int) -> None:
        """The staged queue was busy: these inputs are not sent."""
        self.dropped += inputs

    def error(self) -> None:
        self.errors += 1

    def record(
        self,
        staged: np.ndarray,
        live: np.ndarray,
        *,
        live_latency_s: float,
        staged_latency_s: float,
    ) -> None:
        """Pairs embedded by both sides (rows paired), with the time each side took."""
        if len(self._staged) and (
            self._staged[0].shape != staged.shape[1:] or self._live[0].shape != live.shape[1:]
        ):
            self._staged.clear()  # another shape than the window's: keep the window consistent
            self._live.clear()
        self._staged.extend(np.asarray(staged, dtype=np.float32))
        self._live.extend(np.asarray(live, dtype=np.float32))
        self._pairs_version += 1
        self._live_latency_ms.append(live_latency_s * 1000.0)
        self._staged_latency_ms.append(staged_latency_s * 1000.0)

    # ----- what the sync and the adapter fit read ---------------------------------------------
    @property
    def pairs(self) -> int:
        return len(self._staged)

    def pairs_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(staged vectors, live vectors) of the window, rows paired; None when empty."""
        if not self._staged:
            return None
        return np.stack(self._staged), np.stack(self._live)

    def snapshot(self) -> ShadowSnapshot:
        figures = None
        if self._figures is not None and self._figures[0] == self._pairs_version:
            figures = self._figures[1]
        arrays = self.pairs_arrays() if figures is None else None
        return ShadowSnapshot(
            staged_revision_id=self.staged_revision_id,
            requests=self.requests,
            inputs=self.inputs,
            dropped=self.dropped,
            errors=self.errors,
            live_latency_ms=list(self._live_latency_ms),
            staged_latency_ms=list(self._staged_latency_ms),
            staged=None if arrays is None else arrays[0],
            live=None if arrays is None else arrays[1],
            window=self.window,
            pairs=self.pairs,
            figures=figures,
        )

    async def summary(self) -> dict[str, Any]:
        """The summary dict; the copy is taken here, the quadratic part runs in a thread, and
        only when a pair was recorded since it last ran."""
        version = self._pairs_version
        summary = await asyncio.to_thread(self.snapshot().summary)
        self._figures = (version, (summary["mean_cosine"], summary["neighbour_overlap_at_10"]))
        return summary
