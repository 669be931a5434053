"""Migrations: each served name's stage, sample texts, shadow summaries and adapters. Only this
module writes them.

Every stage change goes through `states.transition()`; a move it refuses raises
`InvalidTransitionError` (409) with its sentence. A resumed step repeats its move and changes
nothing. Functions are keyword-only, led by `db_session`, and never commit: the caller's session
scope does.

When a name leaves its migration (stage `none`) its adapters are retired and its shadow
summaries deleted; its sample texts and shadow fraction are kept (texts belong to no model, so
the next migration of the name can use them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, Literal

import numpy as np
from pydantic import ValidationError
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from greenroom.errors import GreenroomError, InvalidTransitionError, NotFoundError
from greenroom.migrations.models import Adapter, Migration, MigrationSample, ShadowSummary
from greenroom.migrations.schemas import (
    AdapterRow,
    MigrationFollow,
    ShadowLatency,
    ShadowReport,
    ShadowSummaryData,
)
from greenroom.migrations.states import MigrationStage, transition
from greenroom.migrations.states import stage_of as stage_of_row
from greenroom.store.db import utcnow

log = logging.getLogger("greenroom.migrations")

MAX_SAMPLES = 20_000
DEFAULT_SHADOW_FRACTION = 0.05
SHADOW_FRESH_S = 30.0


# ----- the migration row ----------------------------------------------------------------------


def get_migration(db_session: Session, *, served_name: str) -> Migration | None:
    return db_session.get(Migration, served_name)


def stage_of(db_session: Session, *, served_name: str) -> MigrationStage:
    """The name's stage; `none` when it has no row."""
    return stage_of_row(get_migration(db_session, served_name=served_name))


def ensure_migration(db_session: Session, *, served_name: str) -> Migration:
    """The name's row, created at stage `none` with the default shadow fraction if missing."""
    migration = get_migration(db_session, served_name=served_name)
    if migration is None:
        migration = Migration(
            served_name=served_name,
            stage=MigrationStage.NONE,  # the initial stage, not a transition
            shadow_fraction=DEFAULT_SHADOW_FRACTION,
        )
        db_session.add(migration)
        db_session.flush()
    return migration


def record_staged(db_session: Session, *, served_name: str, revision_id: str) -> str | None:
    """The name's staged revision is `revision_id` (stage `staged`); the staged revision it
    replaces, if another one was staged. A replaced revision's adapters are retired: they map
    from a space nobody serves now."""
    migration = ensure_migration(db_session, served_name=served_name)
    if migration.stage == MigrationStage.STAGED and migration.staged_revision_id == revision_id:
        return None  # a resumed step
    _move(migration, MigrationStage.STAGED, f"staged {revision_id}")
    replaced = migration.staged_revision_id
    migration.staged_revision_id = revision_id
    if replaced is not None:
        retire_adapters(db_session, served_name=served_name)
    db_session.flush()
    return replaced


def record_promoted(
    db_session: Session,
    *,
    served_name: str,
    mode: Literal["raw", "adapted"],
    old_revision_id: str,
) -> None:
    """The staged revision went live. `raw`: the name leaves its migration. `adapted`: the
    name answers through the adapter in `old_revision_id`'s space until finish."""
    migration = _require(db_session, served_name=served_name)
    if mode == "raw":
        if stage_of_row(migration) == MigrationStage.ADAPTED:
            raise InvalidTransitionError(
                f"`{served_name}` is promoted already (adapted): finish or abort it"
            )
        _leave(db_session, migration, f"promoted raw, {old_revision_id} retired")
        return
    if migration.stage == MigrationStage.ADAPTED and migration.old_revision_id == old_revision_id:
        return  # a resumed step
    _move(migration, MigrationStage.ADAPTED, f"promoted adapted from {old_revision_id}")
    migration.old_revision_id = old_revision_id
    migration.staged_revision_id = None
    db_session.flush()


def record_finished(db_session: Session, *, served_name: str) -> None:
    """After an adapted promotion: the name answers in its live revision's raw space again."""
    migration = get_migration(db_session, served_name=served_name)
    if migration is None:
        return
    if stage_of_row(migration) == MigrationStage.STAGED:
        raise InvalidTransitionError(
            f"`{served_name}` is staged, not promoted: promote or abort it, there is nothing "
            "to finish"
        )
    _leave(db_session, migration, "finished")


def record_aborted(db_session: Session, *, served_name: str) -> None:
    """The migration is withdrawn, from `staged` or `adapted`."""
    migration = get_migration(db_session, served_name=served_name)
    if migration is not None:
        _leave(db_session, migration, "aborted")


def end(db_session: Session, *, served_name: str) -> None:
    """The served name is deleted: whatever its stage, its migration ends."""
    record_aborted(db_session, served_name=served_name)


def set_shadow_fraction(db_session: Session, *, served_name: str, fraction: float) -> Migration:
    """Store the share of live requests shadowed; the row must exist (`ensure_migration`)."""
    migration = _require(db_session, served_name=served_name, error=NotFoundError)
    migration.shadow_fraction = float(fraction)
    db_session.flush()
    return migration


def _require(
    db_session: Session,
    *,
    served_name: str,
    error: type[GreenroomError] = InvalidTransitionError,
) -> Migration:
    migration = get_migration(db_session, served_name=served_name)
    if migration is None:
        raise error(f"`{served_name}` is not in a migration and has no staged revision")
    return migration


def _move(migration: Migration, to: MigrationStage, reason: str) -> None:
    result = transition(migration, to, reason=reason)
    if not result.accepted:
        raise InvalidTransitionError(result.reason)


def _leave(db_session: Session, migration: Migration, reason: str) -> None:
    """To stage `none`: nothing staged or old, the adapters retired, the summaries gone."""
    if stage_of_row(migration) == MigrationStage.NONE:
        return  # a resumed step, or a name that was never in one
    _move(migration, MigrationStage.NONE, reason)
    migration.staged_revision_id = None
    migration.old_revision_id = None
    retire_adapters(db_session, served_name=migration.served_name)
    db_session.execute(
        delete(ShadowSummary).where(ShadowSummary.served_name == migration.served_name)
    )
    db_session.flush()


# ----- sample texts ---------------------------------------------------------------------------


def add_samples(db_session: Session, *, served_name: str, texts: Sequence[str]) -> int:
    """Store the texts; the oldest beyond `MAX_SAMPLES` go in the same transaction. How many
    the name keeps now."""
    if texts:
        now = utcnow()
        rows = [{"served_name": served_name, "text": text, "created_at": now} for text in texts]
        db_session.execute(insert(MigrationSample), rows)
    cutoff = db_session.scalar(
        select(MigrationSample.id)
        .where(MigrationSample.served_name == served_name)
        .order_by(MigrationSample.id.desc())
        .offset(MAX_SAMPLES)
        .limit(1)
    )
    if cutoff is not None:
        db_session.execute(
            delete(MigrationSample).where(
                MigrationSample.served_name == served_name, MigrationSample.id <= cutoff
            )
        )
    db_session.flush()
    return count_samples(db_session, served_name=served_name)


def sample_texts(db_session: Session, *, served_name: str) -> list[str]:
    """The name's sample texts, oldest first."""
    query = select(MigrationSample.text).where(MigrationSample.served_name == served_name)
    return list(db_session.scalars(query.order_by(MigrationSample.id)))


def count_samples(db_session: Session, *, served_name: str) -> int:
    query = select(func.count()).where(MigrationSample.served_name == served_name)
    return db_session.scalar(query) or 0


# ----- shadow summaries -----------------------------------------------------------------------


def write_shadow_summary(
    db_session: Session, *, served_name: str, router_id: str, summary: dict[str, Any]
) -> None:
    """Store (replace) one process's summary of the name, checked and bounded as
    `ShadowSummaryData` says."""
    data = ShadowSummaryData.model_validate(summary).model_dump(mode="json")
    row = db_session.get(ShadowSummary, (served_name, router_id))
    if row is None:
        db_session.add(ShadowSummary(served_name=served_name, router_id=router_id, summary=data))
    else:
        row.summary = data
        row.updated_at = utcnow()
    db_session.flush()


def shadow_report(
    db_session: Session,
    *,
    served_name: str,
    fresh_s: float = SHADOW_FRESH_S,
    window: int | None = None,
) -> ShadowReport | None:
    """The merged summaries written in the last `fresh_s` seconds about the name's staged
    revision; None when nothing is staged. `window`: the window to report (the server's
    setting); else the largest a summary reports."""
    migration = get_migration(db_session, served_name=served_name)
    if migration is None or migration.staged_revision_id is None:
        return None
    since = utcnow() - timedelta(seconds=fresh_s)
    rows = db_session.scalars(
        select(ShadowSummary).where(
            ShadowSummary.served_name == served_name, ShadowSummary.updated_at >= since
        )
    )
    summaries = [
        data
        for data in (_parse_summary(row) for row in rows)
        if data is not None and data.staged_revision_id == migration.staged_revision_id
    ]
    if window is None:
        window = max((s.window for s in summaries), default=0)
    return merge_summaries(summaries, fraction=migration.shadow_fraction, window=window)


def _parse_summary(row: ShadowSummary) -> ShadowSummaryData | None:
    try:
        return ShadowSummaryData.model_validate(row.summary)
    except ValidationError:
        log.warning(
            "ignoring a malformed shadow summary of '%s' (%s)", row.served_name, row.router_id
        )
        return None


def merge_summaries(
    summaries: Iterable[ShadowSummaryData], *, fraction: float, window: int
) -> ShadowReport:
    """One report from the processes' summaries: counters summed, latency quantiles over the
    union of the latencies, mean cosine and overlap weighted by each summary's pairs."""
    summaries = list(summaries)
    return ShadowReport(
        fraction=fraction,
        requests=sum(s.requests for s in summaries),
        inputs=sum(s.inputs for s in summaries),
        dropped=sum(s.dropped for s in summaries),
        errors=sum(s.errors for s in summaries),
        latency_ms=ShadowLatency(
            live_p50=_quantile([s.live_latency_ms for s in summaries], 50),
            live_p99=_quantile([s.live_latency_ms for s in summaries], 99),
            staged_p50=_quantile([s.staged_latency_ms for s in summaries], 50),
            staged_p99=_quantile([s.staged_latency_ms for s in summaries], 99),
        ),
        mean_cosine=_weighted(summaries, "mean_cosine"),
        neighbour_overlap_at_10=_weighted(summaries, "neighbour_overlap_at_10"),
        window=window,
        processes=len(summaries),
    )


def _quantile(lists: list[list[float]], q: float) -> float | None:
    values = [value for values in lists for value in values]
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 3)


def _weighted(summaries: list[ShadowSummaryData], field: str) -> float | None:
    """The pairs-weighted mean of `field` over the summaries that have it."""
    measured = [(getattr(s, field), s.pairs) for s in summaries if getattr(s, field) is not None]
    total = sum(pairs for _, pairs in measured if pairs > 0)
    if total == 0:
        return None
    return round(sum(value * pairs for value, pairs in measured if pairs > 0) / total, 6)


# ----- adapters -------------------------------------------------------------------------------


def store_adapter(
    db_session: Session,
    *,
    served_name: str,
    revision_id: str,
    target_revision_id: str,
    kind: str,
    parameters: bytes,
    evaluation: dict[str, Any],
    target_embedding_space: str,
    target_normalize: bool,
) -> Adapter:
    """Store a fitted adapter as the name's active one; older ones are retired."""
    retire_adapters(db_session, served_name=served_name)
    adapter = Adapter(
        served_name=served_name,
        revision_id=revision_id,
        target_revision_id=target_revision_id,
        kind=kind,
        parameters=parameters,
        evaluation=evaluation,
        target_embedding_space=target_embedding_space,
        target_normalize=target_normalize,
        fitted_at=utcnow(),
    )
    db_session.add(adapter)
    db_session.flush()
    return adapter


def retire_adapters(db_session: Session, *, served_name: str) -> None:
    """Retire every adapter of the name that is not retired yet."""
    db_session.execute(
        update(Adapter)
        .where(Adapter.served_name == served_name, Adapter.retired_at.is_(None))
        .values(retired_at=utcnow())
    )


def active_adapter(db_session: Session, *, served_name: str) -> Adapter | None:
    """The name's newest adapter that is not retired."""
    return db_session.scalar(
        select(Adapter)
        .where(Adapter.served_name == served_name, Adapter.retired_at.is_(None))
        .order_by(Adapter.fitted_at.desc(), Adapter.id)
        .limit(1)
    )


# ----- what the routers follow ----------------------------------------------------------------


def followed(db_session: Session) -> list[MigrationFollow]:
    """Every name in a migration (stage staged or adapted), by served name. Under `adapted`
    the adapter is the active one whose target is the old revision the name answers in."""
    migrations = list(
        db_session.scalars(
            select(Migration)
            .where(Migration.stage != MigrationStage.NONE)
            .order_by(Migration.served_name)
        )
    )
    adapted = [m.served_name for m in migrations if m.stage == MigrationStage.ADAPTED]
    adapters = _active_adapters(db_session, served_names=adapted)
    return [_follow(m, adapters.get(m.served_name)) for m in migrations]


def _active_adapters(db_session: Session, *, served_names: list[str]) -> dict[str, Adapter]:
    """The newest active adapter of each of these names (one query)."""
    if not served_names:
        return {}
    rows = db_session.scalars(
        select(Adapter)
        .where(Adapter.served_name.in_(served_names), Adapter.retired_at.is_(None))
        .order_by(Adapter.fitted_at, Adapter.id)
    )
    return {row.served_name: row for row in rows}  # the newest one last wins


def _follow(migration: Migration, adapter: Adapter | None) -> MigrationFollow:
    stage = stage_of_row(migration)
    applies = (
        stage == MigrationStage.ADAPTED
        and adapter is not None
        and adapter.target_revision_id == migration.old_revision_id
    )
    return MigrationFollow(
        served_name=migration.served_name,
        stage=stage,
        staged_revision_id=migration.staged_revision_id,
        old_revision_id=migration.old_revision_id,
        shadow_fraction=migration.shadow_fraction,
        adapter=adapter_row(adapter) if applies and adapter is not None else None,
    )


def adapter_row(adapter: Adapter) -> AdapterRow:
    return AdapterRow(
        id=adapter.id,
        revision_id=adapter.revision_id,
        kind=adapter.kind,
        parameters=adapter.parameters,
        target_embedding_space=adapter.target_embedding_space,
        target_normalize=adapter.target_normalize,
    )
