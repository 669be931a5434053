"""The traffic history behind `GET /v1/traffic` (docs/api/traffic.md): the last hour at 10 s.

Each API process keeps a `TrafficRecorder` (the router's `traffic`): per (served name, revision
id) and per 10-s bucket (bucket start = floor(epoch / 10) * 10) the requests, the errors (requests
not answered 200), the inputs, a latency histogram with its sum, a batch-size histogram with the
batch count, and the largest queue depth seen. It is bounded: the last hour of buckets
(`HISTORY_BUCKETS`) and at most `MAX_KEYS` (served name, revision) pairs.

Recording happens where the Prometheus metrics are observed (`serving.views` for requests,
`serving.router` for batches and queue depth), under the same plain served name: `/metrics`
keeps its own figures; these are the same events, bucketed by time.

Every few seconds the router sync takes the buckets that changed (`take_changed`) and writes one
`TrafficSummary` row per (router id, bucket start) (`write_traffic_summaries`), which also drops
rows older than the hour plus `STORE_MARGIN_S`. `traffic_history` merges every router's rows in a
window by summing per (served name, revision, bucket): the answer is the same whichever API
process behind a load balancer serves it.

Everything above the store functions is pure (no I/O, no event loop) and runs on the event loop
thread only; the sync hands plain dicts to its writer thread.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from greenroom.serving.models import TrafficSummary
from greenroom.serving.schemas import TrafficPointRead, TrafficRead, TrafficSeriesRead
from greenroom.store.db import utcnow

log = logging.getLogger("greenroom.router.traffic")

RESOLUTION_S = 10
HISTORY_S = 3600
HISTORY_BUCKETS = HISTORY_S // RESOLUTION_S  # 360: the recorder keeps the last hour only
# Upper bounds (inclusive) of the histograms' buckets; one more count is above the last bound.
LATENCY_BOUNDS_MS: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
BATCH_SIZE_BOUNDS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# (served name, revision) pairs one recorder keeps: names and revisions come from the store, not
# from clients, but revisions accumulate over many deploys. Beyond this many, the pair idle the
# longest is dropped from every bucket (its history here is lost; rows already written keep it
# until they are rewritten).
MAX_KEYS = 256
STORE_MARGIN_S = 120  # rows are kept this much past the hour (clocks of processes differ)
WINDOW_MIN_S, WINDOW_MAX_S = 60, HISTORY_S
MAX_SERVED_NAME_CHARS = 200

Key = tuple[str, str]  # (served name, revision id)


def bucket_start(epoch_s: float) -> int:
    """The start of the 10-s bucket that holds `epoch_s` (epoch seconds, a multiple of 10)."""
    return int(epoch_s // RESOLUTION_S) * RESOLUTION_S


def window_start(now: float, window_s: int) -> int:
    """The first bucket of the last `window_s` seconds: the bucket of `now` and the ones before
    it, ceil(window_s / 10) buckets in all."""
    buckets = max(1, math.ceil(window_s / RESOLUTION_S))
    return bucket_start(now) - (buckets - 1) * RESOLUTION_S


def _zeros(bounds: tuple[int, ...]) -> list[int]:
    return [0] * (len(bounds) + 1)


@dataclass
class TrafficCounts:
    """What one (served name, revision) did in one bucket; `add` merges another's into it."""

    requests: int = 0
    errors: int = 0
    inputs: int = 0
    latency_counts: list[int] = field(default_factory=lambda: _zeros(LATENCY_BOUNDS_MS))
    latency_sum_ms: float = 0.0
    batch_counts: list[int] = field(default_factory=lambda: _zeros(BATCH_SIZE_BOUNDS))
    batches: int = 0
    queue_depth_max: int = 0

    def add(self, other: TrafficCounts) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.inputs += other.inputs
        self.latency_counts = _summed(self.latency_counts, other.latency_counts)
        self.latency_sum_ms += other.latency_sum_ms
        self.batch_counts = _summed(self.batch_counts, other.batch_counts)
        self.batches += other.batches
        self.queue_depth_max = max(self.queue_depth_max, other.queue_depth_max)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "inputs": self.inputs,
            "latency_counts": list(self.latency_counts),
            "latency_sum_ms": self.latency_sum_ms,
            "batch_counts": list(self.batch_counts),
            "batches": self.batches,
            "queue_depth_max": self.queue_depth_max,
        }

    @classmethod
    def from_json(cls, data: Any) -> TrafficCounts:
        """The counts of a stored entry; ValueError when it is not one (another version's
        bounds, a hand-edited row)."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        counts = cls(
            requests=_count(data.get("requests")),
            errors=_count(data.get("errors")),
            inputs=_count(data.get("inputs")),
            latency_counts=_counts(data.get("latency_counts"), LATENCY_BOUNDS_MS),
            latency_sum_ms=_number(data.get("latency_sum_ms")),
            batch_counts=_counts(data.get("batch_counts"), BATCH_SIZE_BOUNDS),
            batches=_count(data.get("batches")),
            queue_depth_max=_count(data.get("queue_depth_max")),
        )
        return counts


def _summed(ours: list[int], theirs: list[int]) -> list[int]:
    return [a + b for a, b in zip(ours, theirs, strict=True)]


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"not a non-negative number: {value!r}")
    return float(value)


def _counts(value: Any, bounds: tuple[int, ...]) -> list[int]:
    if not isinstance(value, list) or len(value) != len(bounds) + 1:
        raise ValueError(f"not {len(bounds) + 1} counts")
    return [_count(v) for v in value]


def histogram_index(value: float, bounds: tuple[int, ...]) -> int:
    """The histogram bucket of `value`: the first bound it does not exceed, else the overflow
    bucket (`len(bounds)`)."""
    return bisect.bisect_left(bounds, value)


def percentile(counts: list[int], bounds: tuple[int, ...], q: float) -> float | None:
    """The q-quantile (0 < q ≤ 1) estimated from a histogram by linear interpolation inside the
    bucket it falls in (the first bucket starts at 0); the last bound when it falls above it, as
    Prometheus' `histogram_quantile` does; None for an empty histogram."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            if index == len(bounds):
                return float(bounds[-1])
            lower = 0.0 if index == 0 else float(bounds[index - 1])
            upper = float(bounds[index])
            return lower + (upper - lower) * (rank - below) / count
        below += count
    return float(bounds[-1])


class TrafficRecorder:
    """One API process's traffic of the last hour, per (served name, revision) and 10-s bucket.

    `clock` gives epoch seconds (tests pass their own). Buckets older than the hour are dropped
    as time moves on; at most `max_keys` (served name, revision) pairs are kept (`MAX_KEYS`).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_keys: int = MAX_KEYS,
        history_buckets: int = HISTORY_BUCKETS,
    ) -> None:
        self._clock = clock
        self._max_keys = max_keys
        self._history_buckets = history_buckets
        self._buckets: dict[int, dict[Key, TrafficCounts]] = {}  # by bucket start, ascending
        self._last_seen: OrderedDict[Key, int] = OrderedDict()  # key -> its newest bucket
        self._changed: set[int] = set()  # bucket starts changed since `take_changed`
        self._newest = -1  # the newest bucket start seen

    # ----- recording -------------------------------------------------------------------------
    def request(
        self,
        served_name: str,
        revision_id: str,
        *,
        status: int,
        inputs: int = 0,
        latency_s: float | None = None,
    ) -> None:
        """One request answered with `status`: an error unless 200; its inputs and latency
        count as given (the view passes them for 200 answers, as the metrics count them)."""
        counts = self._counts(served_name, revision_id)
        counts.requests += 1
        if status != 200:
            counts.errors += 1
        counts.inputs += inputs
        if latency_s is not None:
            latency_ms = max(0.0, latency_s * 1000.0)
            counts.latency_counts[histogram_index(latency_ms, LATENCY_BOUNDS_MS)] += 1
            counts.latency_sum_ms += latency_ms

    def batch(self, served_name: str, revision_id: str, *, size: int) -> None:
        """One batch of `size` inputs computed by a replica of the revision."""
        counts = self._counts(served_name, revision_id)
        counts.batch_counts[histogram_index(size, BATCH_SIZE_BOUNDS)] += 1
        counts.batches += 1

    def queue_depth(self, served_name: str, revision_id: str, depth: int) -> None:
        """The revision's queue holds `depth` inputs now; the bucket keeps the largest."""
        counts = self._counts(served_name, revision_id)
        counts.queue_depth_max = max(counts.queue_depth_max, depth)

    def _counts(self, served_name: str, revision_id: str) -> TrafficCounts:
        start = bucket_start(self._clock())
        if start > self._newest:
            self._newest = start
            self._drop_old(start)
        key = (served_name, revision_id)
        if key not in self._last_seen and len(self._last_seen) >= self._max_keys:
            self._evict(next(iter(self._last_seen)))  # the pair idle the longest
        self._last_seen[key] = max(start, self._last_seen.get(key, start))
        self._last_seen.move_to_end(key)
        self._changed.add(start)
        bucket = self._buckets.get(start)
        if bucket is None:
            bucket = self._buckets[start] = {}
            if any(s > start for s in self._buckets):  # a late event (clock stepped back)
                self._buckets = dict(sorted(self._buckets.items()))
        counts = bucket.get(key)
        if counts is None:
            counts = bucket[key] = TrafficCounts()
        return counts

    def _drop_old(self, newest: int) -> None:
        oldest_kept = newest - (self._history_buckets - 1) * RESOLUTION_S
        for start in [s for s in self._buckets if s < oldest_kept]:
            del self._buckets[start]
            self._changed.discard(start)
        while self._last_seen:
            key, last = next(iter(self._last_seen.items()))
            if last >= oldest_kept:
                break
            del self._last_seen[key]

    def _evict(self, key: Key) -> None:
        del self._last_seen[key]
        for start, bucket in self._buckets.items():
            if bucket.pop(key, None) is not None:
                self._changed.add(start)  # its row is rewritten without the pair
        log.info("traffic of %s@%s dropped: more than %d pairs", *key, self._max_keys)

    # ----- reading ---------------------------------------------------------------------------
    def take_changed(self) -> dict[int, list[dict[str, Any]]]:
        """The buckets changed since the last call, each whole (every pair in it) as JSON
        entries (`served_name`, `revision_id` and the counts); they count as unchanged after."""
        changed = {
            start: self.entries(start) for start in sorted(self._changed) if start in self._buckets
        }
        self._changed.clear()
        return changed

    def mark_changed(self, starts: Iterable[int]) -> None:
        """Count these buckets as changed again (their write failed: the next one retries)."""
        self._changed.update(start for start in starts if start in self._buckets)

    def entries(self, start: int) -> list[dict[str, Any]]:
        """One bucket's pairs as JSON entries, sorted by served name and revision."""
        bucket = self._buckets.get(start, {})
        return [
            {"served_name": key[0], "revision_id": key[1], **bucket[key].to_json()}
            for key in sorted(bucket)
        ]

    def bucket_starts(self) -> list[int]:
        return list(self._buckets)

    def keys(self) -> list[Key]:
        """The (served name, revision) pairs kept, the one idle the longest first."""
        return list(self._last_seen)


# ----- merging the routers' summaries ---------------------------------------------------------


@dataclass
class MergedTraffic:
    """Every router's rows of a window summed per (served name, revision) and bucket."""

    series: dict[Key, dict[int, TrafficCounts]] = field(default_factory=dict)
    router_ids: set[str] = field(default_factory=set)  # the routers that contributed


def merge_summaries(
    rows: Iterable[tuple[str, int, Any]], *, served_name: str | None = None
) -> MergedTraffic:
    """Sum (router id, bucket start, entries) rows per (served name, revision, bucket). Entries
    of another name than `served_name` (when given) and malformed ones are left out; a router
    counts when one of its entries was kept."""
    merged = MergedTraffic()
    for router_id, start, entries in rows:
        for entry in entries if isinstance(entries, list) else []:
            try:
                key = _entry_key(entry)
                counts = TrafficCounts.from_json(entry)
            except ValueError as exc:
                log.debug("a traffic entry of %s is skipped: %s", router_id, exc)
                continue
            if served_name is not None and key[0] != served_name:
                continue
            merged.router_ids.add(router_id)
            points = merged.series.setdefault(key, {})
            if start in points:
                points[start].add(counts)
            else:
                points[start] = counts
    return merged


def _entry_key(entry: Any) -> Key:
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    name, revision_id = entry.get("served_name"), entry.get("revision_id")
    if not isinstance(name, str) or not isinstance(revision_id, str):
        raise ValueError("no served name or revision id")
    return name, revision_id


def traffic_read(merged: MergedTraffic, *, now: float, window_s: int) -> TrafficRead:
    """The `GET /v1/traffic` answer of merged rows: series sorted by served name and revision,
    points ascending, only buckets with something in them, p50/p99 per point."""
    series = []
    for (name, revision_id), points in sorted(merged.series.items()):
        shown = [
            _point(start, counts)
            for start, counts in sorted(points.items())
            if counts.requests or counts.batches or counts.queue_depth_max
        ]
        if shown:
            series.append(
                TrafficSeriesRead(served_name=name, revision_id=revision_id, points=shown)
            )
    return TrafficRead(
        resolution_s=RESOLUTION_S,
        window_s=window_s,
        now=now,
        processes=len(merged.router_ids),
        latency_bounds_ms=list(LATENCY_BOUNDS_MS),
        batch_size_bounds=list(BATCH_SIZE_BOUNDS),
        series=series,
    )


def _point(start: int, counts: TrafficCounts) -> TrafficPointRead:
    return TrafficPointRead(
        t=start,
        p50_ms=percentile(counts.latency_counts, LATENCY_BOUNDS_MS, 0.5),
        p99_ms=percentile(counts.latency_counts, LATENCY_BOUNDS_MS, 0.99),
        **counts.to_json(),
    )


# ----- the store: one row per (router id, bucket start) ---------------------------------------


def write_traffic_summaries(
    db_session: Session,
    *,
    router_id: str,
    buckets: dict[int, list[dict[str, Any]]],
    now: float | None = None,
) -> None:
    """Store (replace) this router's rows of the given buckets, then delete every router's rows
    older than the hour plus `STORE_MARGIN_S` (those of routers that are gone included). Each
    router writes only its own rows: no two writers race on a row."""
    now = time.time() if now is None else now
    for start, entries in buckets.items():
        row = db_session.get(TrafficSummary, (router_id, start))
        if row is None:
            db_session.add(TrafficSummary(router_id=router_id, bucket_start=start, series=entries))
        else:
            row.series = entries
            row.updated_at = utcnow()
    oldest_kept = bucket_start(now) - HISTORY_S - STORE_MARGIN_S
    db_session.execute(delete(TrafficSummary).where(TrafficSummary.bucket_start < oldest_kept))
    db_session.flush()


def traffic_history(
    db_session: Session,
    *,
    window_s: int = HISTORY_S,
    served_name: str | None = None,
    now: float | None = None,
) -> TrafficRead:
    """Every router's traffic of the last `window_s` seconds (60–3600), merged; only the
    served name's when given. `processes`: the routers whose rows gave something to it."""
    if not WINDOW_MIN_S <= window_s <= WINDOW_MAX_S:
        raise ValueError(f"window_s must be between {WINDOW_MIN_S} and {WINDOW_MAX_S}")
    now = time.time() if now is None else now
    rows = db_session.execute(
        select(TrafficSummary.router_id, TrafficSummary.bucket_start, TrafficSummary.series).where(
            TrafficSummary.bucket_start >= window_start(now, window_s)
        )
    )
    merged = merge_summaries(
        ((router_id, start, series) for router_id, start, series in rows), served_name=served_name
    )
    return traffic_read(merged, now=now, window_s=window_s)
