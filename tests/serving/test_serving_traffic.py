"""serving/traffic.py: the recorder alone (record, roll over, bounds), merging, percentiles, and
the store's summaries on SQLite and PostgreSQL (two routers merged, old rows pruned)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select

from greenroom.config import Settings
from greenroom.serving import traffic
from greenroom.serving.models import TrafficSummary
from greenroom.serving.sync import RouterSync
from greenroom.serving.traffic import (
    BATCH_SIZE_BOUNDS,
    HISTORY_S,
    LATENCY_BOUNDS_MS,
    STORE_MARGIN_S,
    TrafficCounts,
    TrafficRecorder,
    bucket_start,
    merge_summaries,
    percentile,
    traffic_history,
    traffic_read,
    window_start,
    write_traffic_summaries,
)
from greenroom.signals import Signals
from greenroom.store.db import Base, Store

T0 = 1_764_600_000.0  # a bucket start
REV_A, REV_B = "rev-a", "rev-b"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(counts: TrafficCounts, name: str = "docs", revision_id: str = REV_A) -> dict:
    return {"served_name": name, "revision_id": revision_id, **counts.to_json()}


# ----- buckets and windows ----------------------------------------------------------------------


def test_a_bucket_starts_at_a_multiple_of_ten_seconds() -> None:
    assert bucket_start(T0) == bucket_start(T0 + 9.999) == int(T0)
    assert bucket_start(T0 + 10) == int(T0) + 10
    assert bucket_start(T0 - 0.001) == int(T0) - 10


def test_a_window_holds_its_length_in_buckets_ending_with_the_current_one() -> None:
    now = T0 + 4
    assert window_start(now, 3600) == int(T0) - 3590  # 360 buckets
    assert window_start(now, 60) == int(T0) - 50  # 6 buckets
    assert window_start(now, 65) == int(T0) - 60  # a partial one counts whole


# ----- recording --------------------------------------------------------------------------------


def test_requests_errors_inputs_and_latency_are_counted_per_bucket_and_revision() -> None:
    clock = Clock(T0 + 1)
    recorder = TrafficRecorder(clock=clock)
    recorder.request("docs", REV_A, status=200, inputs=3, latency_s=0.0042)  # (2, 5] ms
    recorder.request(
        "docs", REV_A, status=200, inputs=1, latency_s=0.001
    )  # (0, 1] ms: on the bound
    recorder.request("docs", REV_A, status=200, inputs=2, latency_s=9.0)  # above 5000 ms
    recorder.request("docs", REV_A, status=503)
    recorder.request("docs", REV_B, status=429)

    changed = recorder.take_changed()
    assert list(changed) == [int(T0)]
    a, b = changed[int(T0)]
    assert (a["served_name"], a["revision_id"], b["revision_id"]) == ("docs", REV_A, REV_B)
    assert (a["requests"], a["errors"], a["inputs"]) == (4, 1, 6)
    assert len(a["latency_counts"]) == len(LATENCY_BOUNDS_MS) + 1
    assert a["latency_counts"][0] == 1 and a["latency_counts"][2] == 1
    assert a["latency_counts"][-1] == 1 and sum(a["latency_counts"]) == 3
    assert a["latency_sum_ms"] == pytest.approx(4.2 + 1.0 + 9000.0)
    assert (b["requests"], b["errors"], b["inputs"], sum(b["latency_counts"])) == (1, 1, 0, 0)
    assert recorder.take_changed() == {}  # nothing changed since


def test_batches_and_the_largest_queue_depth_are_counted() -> None:
    recorder = TrafficRecorder(clock=Clock())
    for size in (1, 3, 4, 32, 300):
        recorder.batch("docs", REV_A, size=size)
    for depth in (5, 17, 2):
        recorder.queue_depth("docs", REV_A, depth)
    (counts,) = recorder.take_changed()[int(T0)]
    assert len(counts["batch_counts"]) == len(BATCH_SIZE_BOUNDS) + 1
    # 1 -> ≤1, 3 and 4 -> ≤4, 32 -> ≤32, 300 -> above 256
    assert counts["batch_counts"] == [1, 0, 2, 0, 0, 1, 0, 0, 0, 1]
    assert counts["batches"] == 5 and counts["requests"] == 0
    assert counts["queue_depth_max"] == 17


def test_only_the_changed_buckets_are_taken_each_whole() -> None:
    clock = Clock(T0)
    recorder = TrafficRecorder(clock=clock)
    recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)
    recorder.request("other", REV_B, status=200, inputs=1, latency_s=0.01)
    assert [len(v) for v in recorder.take_changed().values()] == [2]
    clock.now += 10
    recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)
    assert list(recorder.take_changed()) == [int(T0) + 10]
    clock.now -= 10  # a late event for the earlier bucket: it is taken again, with both pairs
    recorder.batch("docs", REV_A, size=1)
    (earlier,) = recorder.take_changed().values()
    assert [(e["served_name"], e["batches"]) for e in earlier] == [("docs", 1), ("other", 0)]


def test_a_failed_write_marks_its_buckets_changed_again() -> None:
    recorder = TrafficRecorder(clock=Clock())
    recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)
    changed = recorder.take_changed()
    recorder.mark_changed(changed)
    assert recorder.take_changed() == changed


def test_buckets_older_than_the_hour_are_dropped() -> None:
    clock = Clock(T0)
    recorder = TrafficRecorder(clock=clock)
    recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)
    recorder.request("old", REV_B, status=200, inputs=1, latency_s=0.01)
    clock.now = T0 + HISTORY_S - 10  # the first bucket is still the oldest of the hour
    recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)
    assert recorder.bucket_starts() == [int(T0), int(T0) + HISTORY_S - 10]
    clock.now = T0 + HISTORY_S  # one bucket later: the first one is out of the hour
    recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)
    assert recorder.bucket_starts() == [int(T0) + HISTORY_S - 10, int(T0) + HISTORY_S]
    assert int(T0) not in recorder.take_changed()
    assert recorder.keys() == [("docs", REV_A)]  # "old" was idle for the whole hour


def test_the_pair_idle_the_longest_is_dropped_beyond_the_bound() -> None:
    clock = Clock(T0)
    recorder = TrafficRecorder(clock=clock, max_keys=2)
    recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)
    recorder.request("docs", REV_B, status=200, inputs=1, latency_s=0.01)
    clock.now += 10
    recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)  # REV_B is idler
    recorder.take_changed()
    recorder.request("docs", "rev-c", status=200, inputs=1, latency_s=0.01)
    assert sorted(recorder.keys()) == [("docs", REV_A), ("docs", "rev-c")]
    changed = recorder.take_changed()  # the first bucket is rewritten without REV_B
    assert [e["revision_id"] for e in changed[int(T0)]] == [REV_A]
    assert [e["revision_id"] for e in changed[int(T0) + 10]] == [REV_A, "rev-c"]


# ----- percentiles ------------------------------------------------------------------------------


def test_percentiles_interpolate_inside_the_bucket() -> None:
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    counts[3] = 10  # ten answers in (5, 10] ms
    assert percentile(counts, LATENCY_BOUNDS_MS, 0.5) == pytest.approx(7.5)
    assert percentile(counts, LATENCY_BOUNDS_MS, 0.99) == pytest.approx(9.95)
    counts[0] = 10  # and ten in [0, 1] ms
    assert percentile(counts, LATENCY_BOUNDS_MS, 0.5) == pytest.approx(1.0)
    assert percentile(counts, LATENCY_BOUNDS_MS, 0.25) == pytest.approx(0.5)
    assert percentile(counts, LATENCY_BOUNDS_MS, 0.99) == pytest.approx(9.9)


def test_percentiles_are_the_last_bound_above_it_and_none_without_answers() -> None:
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    assert percentile(counts, LATENCY_BOUNDS_MS, 0.5) is None
    counts[-1] = 3
    assert percentile(counts, LATENCY_BOUNDS_MS, 0.5) == 5000.0


# ----- merging ----------------------------------------------------------------------------------


def counts_of(**values: object) -> TrafficCounts:
    counts = TrafficCounts()
    for name, value in values.items():
        setattr(counts, name, value)
    return counts


def test_rows_of_two_routers_are_summed_per_name_revision_and_bucket() -> None:
    start = int(T0)
    latency = [0] * 13
    latency[2] = 4
    one = counts_of(requests=4, errors=1, inputs=9, latency_counts=latency, latency_sum_ms=12.0)
    two = counts_of(requests=2, inputs=2, batches=3, queue_depth_max=7)
    other = counts_of(requests=1, inputs=1)
    rows = [
        ("router-1", start, [entry(one), entry(other, name="other")]),
        ("router-2", start, [entry(two), {"served_name": "docs", "revision_id": REV_A}]),
        ("router-2", start + 10, [entry(two, revision_id=REV_B)]),
        ("router-3", start, "not a list"),
    ]
    merged = merge_summaries(rows)
    assert merged.router_ids == {"router-1", "router-2"}
    summed = merged.series[("docs", REV_A)][start]
    assert (summed.requests, summed.errors, summed.inputs) == (6, 1, 11)
    assert (summed.batches, summed.queue_depth_max, summed.latency_counts[2]) == (3, 7, 4)

    only = merge_summaries(rows, served_name="other")
    assert list(only.series) == [("other", REV_A)] and only.router_ids == {"router-1"}


def test_the_answer_lists_series_sorted_and_points_ascending_with_percentiles() -> None:
    start = int(T0)
    latency = [0] * 13
    latency[3] = 2
    merged = merge_summaries(
        [
            ("r", start + 10, [entry(counts_of(requests=1, errors=1), revision_id=REV_B)]),
            ("r", start + 10, [entry(counts_of(requests=2, latency_counts=latency))]),
            ("r", start, [entry(counts_of(requests=2, latency_counts=latency))]),
            ("r", start + 20, [entry(TrafficCounts())]),  # nothing in it: not a point
        ]
    )
    answer = traffic_read(merged, now=T0 + 25, window_s=60)
    assert (answer.resolution_s, answer.window_s, answer.processes) == (10, 60, 1)
    assert answer.latency_bounds_ms == list(LATENCY_BOUNDS_MS)
    assert answer.batch_size_bounds == list(BATCH_SIZE_BOUNDS)
    assert [(s.served_name, s.revision_id) for s in answer.series] == [
        ("docs", REV_A),
        ("docs", REV_B),
    ]
    assert [p.t for p in answer.series[0].points] == [start, start + 10]
    assert answer.series[0].points[0].p50_ms == pytest.approx(7.5)
    errors_only = answer.series[1].points[0]
    assert (errors_only.errors, errors_only.p50_ms, errors_only.p99_ms) == (1, None, None)


# ----- the store --------------------------------------------------------------------------------


def test_summaries_of_two_routers_are_merged_and_old_rows_pruned(store: Store) -> None:
    now = T0 + 5
    start = int(T0)
    first, second = TrafficRecorder(clock=Clock(now)), TrafficRecorder(clock=Clock(now))
    first.request("docs", REV_A, status=200, inputs=3, latency_s=0.004)
    first.batch("docs", REV_A, size=3)
    second.request("docs", REV_A, status=200, inputs=1, latency_s=0.004)
    second.request("docs", REV_A, status=503)
    second.request("other", REV_B, status=200, inputs=2, latency_s=0.02)
    second.queue_depth("docs", REV_A, 4)
    old = start - HISTORY_S - STORE_MARGIN_S - 10
    with store.session_scope() as session:  # a row of a router that is long gone
        session.add(TrafficSummary(router_id="gone", bucket_start=old, series=[]))
    with store.session_scope() as session:
        write_traffic_summaries(session, router_id="r1", buckets=first.take_changed(), now=now)
        write_traffic_summaries(session, router_id="r2", buckets=second.take_changed(), now=now)

    with store.session_scope() as session:
        answer = traffic_history(session, window_s=60, now=now)
        assert session.scalars(select(TrafficSummary.router_id)).all() != []
        assert "gone" not in set(session.scalars(select(TrafficSummary.router_id)))
    assert answer.processes == 2
    docs, other = answer.series
    assert (docs.served_name, docs.revision_id, other.served_name) == ("docs", REV_A, "other")
    (point,) = docs.points
    assert (point.t, point.requests, point.errors, point.inputs) == (start, 3, 1, 4)
    assert (sum(point.latency_counts), point.latency_counts[2]) == (2, 2)
    assert point.latency_sum_ms == pytest.approx(8.0)
    assert (point.batches, point.batch_counts[2], point.queue_depth_max) == (1, 1, 4)
    assert point.p50_ms is not None and 2.0 < point.p50_ms <= 5.0

    with store.session_scope() as session:
        only = traffic_history(session, window_s=60, served_name="other", now=now)
        later = traffic_history(session, window_s=60, now=now + 60)  # out of the window
    assert [s.served_name for s in only.series] == ["other"] and only.processes == 1
    assert later.series == [] and later.processes == 0


def test_a_rewritten_bucket_replaces_the_row_and_old_rows_go_with_a_later_write(
    store: Store,
) -> None:
    clock = Clock(T0 + 1)
    recorder = TrafficRecorder(clock=clock)
    recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)
    with store.session_scope() as session:
        write_traffic_summaries(
            session, router_id="r1", buckets=recorder.take_changed(), now=clock()
        )
    recorder.request("docs", REV_A, status=200, inputs=2, latency_s=0.01)
    with store.session_scope() as session:
        write_traffic_summaries(
            session, router_id="r1", buckets=recorder.take_changed(), now=clock()
        )
        (point,) = traffic_history(session, window_s=60, now=clock()).series[0].points
    assert (point.requests, point.inputs) == (2, 3)

    clock.now = T0 + HISTORY_S + STORE_MARGIN_S + 20  # the first row is past the hour and margin
    recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)
    with store.session_scope() as session:
        write_traffic_summaries(
            session, router_id="r1", buckets=recorder.take_changed(), now=clock()
        )
        starts = session.scalars(select(TrafficSummary.bucket_start)).all()
    assert starts == [bucket_start(clock())]


def test_the_window_is_bounded() -> None:
    with pytest.raises(ValueError, match="window_s"):
        traffic_history(None, window_s=59)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window_s"):
        traffic_history(None, window_s=traffic.WINDOW_MAX_S + 1)  # type: ignore[arg-type]


def test_migration_0006_matches_the_models(store: Store) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert not [d for d in differences if "traffic_summaries" in str(d)]


# ----- the router sync's write ------------------------------------------------------------------


class RouterStandIn:
    """What `RouterSync` asks of a router when it writes traffic (and when it is built)."""

    def __init__(self, recorder: TrafficRecorder, interval_s: float) -> None:
        self.traffic = recorder
        self.settings = Settings(traffic_summary_interval_s=interval_s)

    def on_drained(self, listener: Callable[[str], None]) -> None: ...

    def on_missed_switch(self, live_source: Any) -> None: ...


class FailingStore:
    def session_scope(self) -> Any:
        raise RuntimeError("the store is out of reach")


def test_the_sync_writes_changed_buckets_once_per_interval_and_retries_a_failed_write(
    store: Store,
) -> None:
    recorder = TrafficRecorder()  # the real clock: the sync writes with it
    router = RouterStandIn(recorder, interval_s=60.0)

    async def scenario() -> None:
        sync = RouterSync(FailingStore(), router, Signals())  # type: ignore[arg-type]
        recorder.request("docs", REV_A, status=200, inputs=1, latency_s=0.01)
        with pytest.raises(RuntimeError):
            await sync.write_traffic()
        sync.store = store
        await sync.write_traffic()  # within the interval: nothing is written
        with store.session_scope() as session:
            assert session.scalars(select(TrafficSummary)).all() == []
        await sync.write_traffic(force=True)  # the failed bucket is written now
        with store.session_scope() as session:
            (row,) = session.scalars(select(TrafficSummary)).all()
        assert row.router_id == sync.router_id and row.bucket_start % 10 == 0
        assert [e["requests"] for e in row.series] == [1]

    asyncio.run(scenario())
