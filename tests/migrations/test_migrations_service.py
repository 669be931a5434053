"""The migrations service on SQLite and PostgreSQL: the record_* sequence of a migration, the
sample bound, shadow summaries and their merge, adapters, and what the routers follow; and the
0005 Alembic revision against the models."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, update
from sqlalchemy.orm import Session

from greenroom.errors import InvalidTransitionError, NotFoundError
from greenroom.migrations import service
from greenroom.migrations.models import Adapter, ShadowSummary
from greenroom.migrations.schemas import ShadowSummaryData
from greenroom.migrations.states import MigrationStage
from greenroom.store.db import Base, Store, utcnow
from greenroom.store.migrations import upgrade

S = MigrationStage
NEW, NEWER, OLD = "rev-new", "rev-newer", "rev-old"


def adapter_of(db_session: Session, *, revision_id: str = NEW, target: str = OLD) -> Adapter:
    return service.store_adapter(
        db_session,
        served_name="docs",
        revision_id=revision_id,
        target_revision_id=target,
        kind="procrustes",
        parameters=b"npz bytes",
        evaluation={"kind": "procrustes", "pairs": 300, "held_out": 60},
        target_embedding_space="docs@abababababab/8/l2",
        target_normalize=True,
    )


def summary(staged: str = NEW, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "staged_revision_id": staged,
        "requests": 10,
        "inputs": 12,
        "dropped": 1,
        "errors": 0,
        "live_latency_ms": [1.0, 2.0, 3.0],
        "staged_latency_ms": [10.0, 20.0],
        "pairs": 100,
        "window": 2000,
        "mean_cosine": None,
        "neighbour_overlap_at_10": 0.5,
    }
    return values | fields


# ----- the stage sequence -----------------------------------------------------------------------


def test_a_name_without_a_row_is_at_none(db_session: Session) -> None:
    assert service.get_migration(db_session, served_name="docs") is None
    assert service.stage_of(db_session, served_name="docs") == S.NONE
    assert service.followed(db_session) == []


def test_stage_then_promote_adapted_then_finish(db_session: Session) -> None:
    assert service.record_staged(db_session, served_name="docs", revision_id=NEW) is None
    assert service.stage_of(db_session, served_name="docs") == S.STAGED
    [follow] = service.followed(db_session)
    assert (follow.stage, follow.staged_revision_id, follow.adapter) == (S.STAGED, NEW, None)
    assert follow.shadow_fraction == service.DEFAULT_SHADOW_FRACTION

    adapter = adapter_of(db_session)
    service.record_promoted(db_session, served_name="docs", mode="adapted", old_revision_id=OLD)
    migration = service.get_migration(db_session, served_name="docs")
    assert migration is not None
    assert (migration.stage, migration.staged_revision_id, migration.old_revision_id) == (
        S.ADAPTED,
        None,
        OLD,
    )
    [follow] = service.followed(db_session)
    assert follow.adapter is not None and follow.adapter.id == adapter.id
    assert (follow.adapter.revision_id, follow.adapter.parameters) == (NEW, b"npz bytes")
    assert follow.adapter.target_normalize is True
    # a resumed step changes nothing
    at = migration.stage_updated_at
    service.record_promoted(db_session, served_name="docs", mode="adapted", old_revision_id=OLD)
    assert migration.stage_updated_at == at

    service.record_finished(db_session, served_name="docs")
    assert (migration.stage, migration.old_revision_id) == (S.NONE, None)
    assert service.active_adapter(db_session, served_name="docs") is None
    assert service.followed(db_session) == []
    service.record_finished(db_session, served_name="docs")  # resumed: nothing to do


def test_a_raw_promotion_ends_the_migration_and_retires_adapters(db_session: Session) -> None:
    service.record_staged(db_session, served_name="docs", revision_id=NEW)
    adapter_of(db_session)
    service.write_shadow_summary(db_session, served_name="docs", router_id="r1", summary=summary())
    service.record_promoted(db_session, served_name="docs", mode="raw", old_revision_id=OLD)
    assert service.stage_of(db_session, served_name="docs") == S.NONE
    assert service.active_adapter(db_session, served_name="docs") is None
    assert db_session.get(ShadowSummary, ("docs", "r1")) is None
    service.record_promoted(db_session, served_name="docs", mode="raw", old_revision_id=OLD)


def test_a_second_staged_deploy_replaces_and_retires_the_adapter(db_session: Session) -> None:
    service.record_staged(db_session, served_name="docs", revision_id=NEW)
    adapter_of(db_session)
    assert service.record_staged(db_session, served_name="docs", revision_id=NEW) is None
    assert service.active_adapter(db_session, served_name="docs") is not None  # a resumed step
    assert service.record_staged(db_session, served_name="docs", revision_id=NEWER) == NEW
    assert service.active_adapter(db_session, served_name="docs") is None
    [follow] = service.followed(db_session)
    assert follow.staged_revision_id == NEWER


def test_moves_the_stage_does_not_allow_are_409(db_session: Session) -> None:
    with pytest.raises(InvalidTransitionError, match="is not in a migration"):
        service.record_promoted(db_session, served_name="docs", mode="raw", old_revision_id=OLD)
    service.ensure_migration(db_session, served_name="docs")
    with pytest.raises(InvalidTransitionError, match="has no staged revision"):
        service.record_promoted(db_session, served_name="docs", mode="adapted", old_revision_id=OLD)
    service.record_staged(db_session, served_name="docs", revision_id=NEW)
    with pytest.raises(InvalidTransitionError, match="nothing to finish"):
        service.record_finished(db_session, served_name="docs")
    service.record_promoted(db_session, served_name="docs", mode="adapted", old_revision_id=OLD)
    with pytest.raises(InvalidTransitionError, match=r"in a migration \(adapted\)"):
        service.record_staged(db_session, served_name="docs", revision_id=NEWER)
    with pytest.raises(InvalidTransitionError, match="promoted already"):
        service.record_promoted(db_session, served_name="docs", mode="raw", old_revision_id=OLD)
    assert service.stage_of(db_session, served_name="docs") == S.ADAPTED


@pytest.mark.parametrize("promoted", [False, True])
def test_abort_and_end_leave_nothing_behind(db_session: Session, promoted: bool) -> None:
    service.record_staged(db_session, served_name="docs", revision_id=NEW)
    adapter_of(db_session)
    if promoted:
        service.record_promoted(db_session, served_name="docs", mode="adapted", old_revision_id=OLD)
    service.record_aborted(db_session, served_name="docs")
    migration = service.get_migration(db_session, served_name="docs")
    assert migration is not None
    assert (migration.stage, migration.staged_revision_id, migration.old_revision_id) == (
        S.NONE,
        None,
        None,
    )
    assert service.active_adapter(db_session, served_name="docs") is None
    service.record_aborted(db_session, served_name="docs")  # resumed
    service.end(db_session, served_name="docs")
    service.end(db_session, served_name="unknown")  # no row: nothing


def test_shadow_fraction_needs_a_row_and_is_kept_after_the_migration(db_session: Session) -> None:
    with pytest.raises(NotFoundError):
        service.set_shadow_fraction(db_session, served_name="docs", fraction=0.2)
    service.ensure_migration(db_session, served_name="docs")
    service.set_shadow_fraction(db_session, served_name="docs", fraction=0.2)
    service.record_staged(db_session, served_name="docs", revision_id=NEW)
    service.record_aborted(db_session, served_name="docs")
    migration = service.get_migration(db_session, served_name="docs")
    assert migration is not None and migration.shadow_fraction == 0.2


# ----- sample texts -----------------------------------------------------------------------------


def test_samples_are_bounded_oldest_dropped(
    db_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_SAMPLES", 5)
    assert service.add_samples(db_session, served_name="docs", texts=["a", "b", "c"]) == 3
    assert service.add_samples(db_session, served_name="other", texts=["x"]) == 1
    assert service.add_samples(db_session, served_name="docs", texts=["d", "e", "f", "g"]) == 5
    assert service.sample_texts(db_session, served_name="docs") == ["c", "d", "e", "f", "g"]
    assert service.add_samples(db_session, served_name="docs", texts=list("hijklmn")) == 5
    assert service.sample_texts(db_session, served_name="docs") == list("jklmn")
    assert service.count_samples(db_session, served_name="docs") == 5
    assert service.sample_texts(db_session, served_name="other") == ["x"]
    assert service.add_samples(db_session, served_name="docs", texts=[]) == 5


# ----- shadow summaries -------------------------------------------------------------------------


def test_merge_sums_counters_pools_latencies_and_weights_by_pairs() -> None:
    a = ShadowSummaryData.model_validate(summary(pairs=100, neighbour_overlap_at_10=0.4))
    b = ShadowSummaryData.model_validate(
        summary(
            pairs=300,
            neighbour_overlap_at_10=0.8,
            mean_cosine=0.9,
            live_latency_ms=[4.0, 5.0],
            staged_latency_ms=[],
            errors=2,
        )
    )
    report = service.merge_summaries([a, b], fraction=0.05, window=2000)
    assert (report.requests, report.inputs, report.dropped, report.errors) == (20, 24, 2, 2)
    assert report.latency_ms.live_p50 == 3.0  # the median of 1..5
    assert report.latency_ms.live_p99 == pytest.approx(4.96)
    assert (report.latency_ms.staged_p50, report.latency_ms.staged_p99) == (15.0, 19.9)
    assert report.neighbour_overlap_at_10 == pytest.approx(0.7)  # (0.4·100 + 0.8·300) / 400
    assert report.mean_cosine == pytest.approx(0.9)  # only b measured it
    assert (report.fraction, report.window, report.processes) == (0.05, 2000, 2)
    empty = service.merge_summaries([], fraction=0.1, window=2000)
    assert (empty.requests, empty.processes, empty.latency_ms.live_p50) == (0, 0, None)
    assert empty.neighbour_overlap_at_10 is None and empty.mean_cosine is None


def test_a_summary_carries_at_most_512_latencies() -> None:
    data = ShadowSummaryData.model_validate(summary(live_latency_ms=[float(i) for i in range(600)]))
    assert data.live_latency_ms == [float(i) for i in range(88, 600)]


def test_the_report_merges_fresh_summaries_of_the_staged_revision(db_session: Session) -> None:
    assert service.shadow_report(db_session, served_name="docs") is None
    service.record_staged(db_session, served_name="docs", revision_id=NEW)
    empty = service.shadow_report(db_session, served_name="docs", window=2000)
    assert empty is not None and (empty.processes, empty.requests) == (0, 0)
    write = service.write_shadow_summary
    write(db_session, served_name="docs", router_id="r1", summary=summary())
    write(db_session, served_name="docs", router_id="r1", summary=summary(requests=7))  # upsert
    write(db_session, served_name="docs", router_id="r2", summary=summary())
    write(db_session, served_name="docs", router_id="r3", summary=summary(NEWER))  # another one
    write(db_session, served_name="docs", router_id="stale", summary=summary())
    write(db_session, served_name="other", router_id="r1", summary=summary())
    db_session.execute(
        update(ShadowSummary)
        .where(ShadowSummary.router_id == "stale")
        .values(updated_at=utcnow() - timedelta(minutes=5))
    )
    report = service.shadow_report(db_session, served_name="docs")
    assert report is not None
    assert (report.processes, report.requests, report.window) == (2, 17, 2000)
    assert report.fraction == service.DEFAULT_SHADOW_FRACTION


def test_a_malformed_summary_is_refused_on_write(db_session: Session) -> None:
    with pytest.raises(ValueError):
        service.write_shadow_summary(
            db_session, served_name="docs", router_id="r1", summary={"requests": -1}
        )


# ----- adapters ---------------------------------------------------------------------------------


def test_storing_an_adapter_retires_the_older_ones(db_session: Session) -> None:
    first = adapter_of(db_session)
    second = adapter_of(db_session)
    assert service.active_adapter(db_session, served_name="docs") == second
    db_session.refresh(first)
    assert first.retired_at is not None and second.retired_at is None
    assert service.active_adapter(db_session, served_name="other") is None


def test_under_adapted_only_an_adapter_into_the_old_space_is_followed(
    db_session: Session,
) -> None:
    service.record_staged(db_session, served_name="docs", revision_id=NEW)
    adapter_of(db_session, target="some-other-revision")
    service.record_promoted(db_session, served_name="docs", mode="adapted", old_revision_id=OLD)
    [follow] = service.followed(db_session)
    assert follow.adapter is None


# ----- the Alembic revision ---------------------------------------------------------------------


def test_migration_0005_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'schema.db'}"
    upgrade(url)
    store = Store(url)
    try:
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
            columns = {
                table: {c["name"] for c in inspect(connection).get_columns(table)}
                for table in ("revisions", "router_reports")
            }
    finally:
        store.dispose()
    ours = ("'migrations'", "migration_samples", "shadow_summaries", "'adapters'")
    assert not [d for d in differences if any(name in str(d) for name in ours)]
    assert "priority" in columns["revisions"] and "pinned" in columns["router_reports"]
