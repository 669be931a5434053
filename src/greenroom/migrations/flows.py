"""Migration requests that need other domains: the state of a migration (the live and staged
revisions from the workloads service, their spaces from their weights), the names a shadow
fraction or sample texts may be stored for, and fitting an adapter with the router's vectors.

Fitting runs in the answering API process: the sample texts (stored, so any process can) are
embedded by the live and the staged revision through the router, by their pinned names with
the ids read from the store (a revision replaced meanwhile answers 404 instead of mixing
spaces), together with that process's shadow pairs. The map is fitted in a thread and stored
with the staged revision, so every router and a restart apply the same map.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from sqlalchemy.orm import Session

from greenroom.config import Settings
from greenroom.errors import (
    ConflictError,
    ModelNotFoundError,
    ModelSourceError,
    NotFoundError,
    ServiceUnavailableError,
)
from greenroom.migrations import adapters
from greenroom.migrations import service as migrations_service
from greenroom.migrations.models import Adapter, Migration
from greenroom.migrations.schemas import (
    AdapterState,
    LiveState,
    MigrationState,
    StagedState,
    Thresholds,
)
from greenroom.migrations.states import MigrationStage, stage_of
from greenroom.registry.weights import inspect_model
from greenroom.schemas import embedding_space, split_served_name
from greenroom.store.db import Store
from greenroom.workloads import service as workloads_service

log = logging.getLogger("greenroom.migrations")

EMBED_CHUNK = 64  # texts per request to the router while fitting
MAX_CACHED_SPACES = 1024


# ----- what the router offers a fit (greenroom.serving.router.Router; no import of it here) ------


class Embedded(Protocol):
    @property
    def vectors(self) -> np.ndarray: ...
    @property
    def embedding_space(self) -> str: ...


class _Info(Protocol):
    @property
    def normalize(self) -> bool: ...


class _Revision(Protocol):
    @property
    def info(self) -> _Info: ...
    def embedding_space(self, dimension: int | None = None) -> str: ...


class LiveRoute(Protocol):
    @property
    def revision(self) -> _Revision: ...
    @property
    def revision_id(self) -> str: ...


class Embedder(Protocol):
    """What fitting needs of the app's router."""

    async def embed(self, served_name: str, inputs: list[str], *, principal: str = "") -> Embedded:
        """Vectors of `inputs` by a served or pinned name (`name@<revision id>`)."""
        ...

    def shadow_pairs(self, served_name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(staged, live) vectors of this process's shadow window, rows paired."""
        ...

    def live(self, served_name: str) -> LiveRoute | None: ...


# ----- the state of a migration ---------------------------------------------------------------


def migration_state(db_session: Session, *, served_name: str, settings: Settings) -> MigrationState:
    """GET /v1/migrations/{workspace}/{name}; 404 for a name not in a migration."""
    migration = migrations_service.get_migration(db_session, served_name=served_name)
    stage = stage_of(migration)
    if migration is None or stage == MigrationStage.NONE:
        raise NotFoundError(not_in_a_migration(served_name))
    live = workloads_service.get_live(db_session, served_name=served_name)
    shadow = migrations_service.shadow_report(
        db_session, served_name=served_name, window=settings.shadow_window
    )
    adapter = migrations_service.active_adapter(db_session, served_name=served_name)
    return MigrationState(
        served_name=served_name,
        stage=stage,
        live=_live_state(db_session, live.revision_id) if live is not None else None,
        staged=_staged_state(db_session, migration.staged_revision_id),
        shadow=shadow,
        adapter=adapter_state(adapter) if _applies(adapter, migration) else None,
        samples=migrations_service.count_samples(db_session, served_name=served_name),
        thresholds=Thresholds(
            adapter_mean_cosine=settings.adapter_min_mean_cosine,
            adapter_neighbour_overlap_at_10=settings.adapter_min_neighbour_overlap,
        ),
    )


def not_in_a_migration(served_name: str) -> str:
    return f"`{served_name}` is not in a migration and has no staged revision"


def _live_state(db_session: Session, revision_id: str) -> LiveState:
    revision = workloads_service.get_revision(db_session, revision_id=revision_id)
    return LiveState(
        revision_id=revision_id,
        embedding_space=revision_space(revision) if revision is not None else None,
    )


def _staged_state(db_session: Session, revision_id: str | None) -> StagedState | None:
    if revision_id is None:
        return None
    revision = workloads_service.get_revision(db_session, revision_id=revision_id)
    if revision is None:
        return None
    return StagedState(
        revision_id=revision_id, embedding_space=revision_space(revision), phase=revision.phase
    )


def _applies(adapter: Adapter | None, migration: Migration) -> bool:
    """Whether the active adapter belongs to this migration: from the staged revision while
    staged, into the old revision's space under `adapted`."""
    if adapter is None:
        return False
    if migration.stage == MigrationStage.ADAPTED:
        return adapter.target_revision_id == migration.old_revision_id
    return adapter.revision_id == migration.staged_revision_id


def adapter_state(adapter: Adapter) -> AdapterState:
    evaluation = adapter.evaluation or {}
    return AdapterState(
        kind=adapter.kind,
        pairs=int(evaluation.get("pairs", 0)),
        held_out=int(evaluation.get("held_out", 0)),
        mean_cosine=evaluation.get("mean_cosine"),
        neighbour_overlap_at_10=evaluation.get("neighbour_overlap_at_10"),
        fitted_at=adapter.fitted_at,
    )


class _RevisionLike(Protocol):
    id: str
    embedding_model_id: str
    content_hash: str
    model_path: str


_SPACES: dict[str, str] = {}


def revision_space(revision: _RevisionLike) -> str | None:
    """The revision's embedding space as the router names it (`ServedRevision.embedding_space`):
    `<model id>@<hash[:12]>/<dimension>/<l2|none>`, read from its weights once per revision (a
    revision never changes); None when its weights cannot be read."""
    if (cached := _SPACES.get(revision.id)) is not None:
        return cached
    try:
        info = inspect_model(Path(revision.model_path))
    except (ModelSourceError, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("the weights of revision %s cannot be read: %s", revision.id, exc)
        return None
    space = embedding_space(
        revision.embedding_model_id,
        revision.content_hash,
        info.dimension,
        normalized=info.normalize,
    )
    if len(_SPACES) >= MAX_CACHED_SPACES:
        _SPACES.clear()
    _SPACES[revision.id] = space
    return space


# ----- a shadow fraction and sample texts -----------------------------------------------------


def set_shadow_fraction(db_session: Session, *, served_name: str, fraction: float) -> Migration:
    """Store the name's shadow fraction; it may be chosen before a revision is staged."""
    _known(db_session, served_name=served_name)
    return migrations_service.set_shadow_fraction(
        db_session, served_name=served_name, fraction=fraction
    )


def add_samples(db_session: Session, *, served_name: str, texts: Sequence[str]) -> int:
    """Store sample texts for the name (before or while a revision is staged); how many the
    name keeps now."""
    _known(db_session, served_name=served_name)
    return migrations_service.add_samples(db_session, served_name=served_name, texts=texts)


def _known(db_session: Session, *, served_name: str) -> Migration:
    """The name's migration row, created at stage `none` for a name that is live; 404 for a
    name that is neither in a migration nor live."""
    migration = migrations_service.get_migration(db_session, served_name=served_name)
    if migration is not None:
        return migration
    if workloads_service.get_live(db_session, served_name=served_name) is None:
        raise NotFoundError(not_deployed(served_name))
    return migrations_service.ensure_migration(db_session, served_name=served_name)


def not_deployed(served_name: str) -> str:
    return f"`{served_name}` is not deployed: a migration starts from a live revision"


# ----- fitting an adapter ---------------------------------------------------------------------


@dataclass(frozen=True)
class FitPlan:
    """What a fit reads from the store before it embeds anything."""

    staged_revision_id: str
    live_revision_id: str
    texts: list[str]


async def fit_adapter(
    store: Store,
    *,
    served_name: str,
    embedder: Embedder,
    settings: Settings,
    principal: str = "",
) -> AdapterState:
    """POST …/adapter: fit, evaluate and store an adapter from the staged revision's space
    into the live one's; 409 when nothing is staged or there are too few pairs."""
    plan = await asyncio.to_thread(_plan, store, served_name)
    chunk = max(1, min(EMBED_CHUNK, settings.max_input_items))
    source, target, target_space = await _embed_samples(
        embedder, served_name, plan, chunk=chunk, principal=principal
    )
    source, target = _with_shadow_pairs(source, target, embedder.shadow_pairs(served_name))
    if len(source) < adapters.MIN_PAIRS:
        raise ConflictError(too_few_pairs(served_name, len(source)))
    route = _live_route(embedder, served_name, plan)
    try:
        fitted = await asyncio.to_thread(adapters.fit_adapter, source, target)
    except adapters.NotEnoughPairs as exc:  # fewer usable pairs than rows (the adapter says)
        raise ConflictError(too_few_pairs(served_name, exc.have)) from None
    except ValueError as exc:  # vectors a revision should never give (not finite, mismatched)
        raise ConflictError(
            f"The pairs of `{served_name}` could not be fitted ({exc}); fit again, and check "
            "the replica logs if it recurs."
        ) from None
    space = target_space or route.revision.embedding_space()
    stored = await asyncio.to_thread(
        _store_fitted, store, served_name, plan, fitted, space, route.revision.info.normalize
    )
    return stored


def _plan(store: Store, served_name: str) -> FitPlan:
    with store.session_scope() as db_session:
        migration = migrations_service.get_migration(db_session, served_name=served_name)
        live = workloads_service.get_live(db_session, served_name=served_name)
        if migration is None and live is None:
            raise NotFoundError(not_deployed(served_name))
        _require_staged(served_name, migration)
        assert migration is not None and migration.staged_revision_id is not None
        if live is None:
            raise ConflictError(f"`{served_name}` has no live revision to fit an adapter into")
        return FitPlan(
            staged_revision_id=migration.staged_revision_id,
            live_revision_id=live.revision_id,
            texts=migrations_service.sample_texts(db_session, served_name=served_name),
        )


def _require_staged(served_name: str, migration: Migration | None) -> None:
    stage = stage_of(migration)
    if stage == MigrationStage.ADAPTED:
        raise ConflictError(
            f"`{served_name}` is promoted already (adapted): its old revision no longer runs, "
            "so no adapter can be fitted; finish or abort the migration"
        )
    if stage != MigrationStage.STAGED or migration is None or not migration.staged_revision_id:
        raise ConflictError(
            f'`{served_name}` has no staged revision: deploy with "strategy": "staged" first'
        )


def too_few_pairs(served_name: str, have: int) -> str:
    workspace, name = split_served_name(served_name)
    return (
        f"`{served_name}` has {have} pairs; an adapter needs at least {adapters.MIN_PAIRS}: "
        f"upload sample texts (POST /v1/migrations/{workspace}/{name}/samples) or let shadow "
        "traffic run"
    )


async def _embed_samples(
    embedder: Embedder, served_name: str, plan: FitPlan, *, chunk: int, principal: str
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(staged vectors, live vectors, the live vectors' space) of the sample texts, in chunks,
    each chunk by both revisions at once; empty arrays when there are no texts."""
    staged_name = f"{served_name}@{plan.staged_revision_id}"
    live_name = f"{served_name}@{plan.live_revision_id}"
    sources: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    spaces: set[str] = set()
    source_spaces: set[str] = set()
    for start in range(0, len(plan.texts), chunk):
        texts = plan.texts[start : start + chunk]
        staged, live = await asyncio.gather(
            _embed(embedder, staged_name, texts, principal),
            _embed(embedder, live_name, texts, principal),
        )
        sources.append(np.asarray(staged.vectors, dtype=np.float32))
        targets.append(np.asarray(live.vectors, dtype=np.float32))
        source_spaces.add(staged.embedding_space)
        spaces.add(live.embedding_space)
    if len(spaces) > 1 or len(source_spaces) > 1:
        raise ConflictError(
            f"The revisions of `{served_name}` changed while the adapter was fitted; fit again"
        )
    if not sources:
        return np.empty((0, 0), np.float32), np.empty((0, 0), np.float32), None
    return np.concatenate(sources), np.concatenate(targets), spaces.pop()


async def _embed(embedder: Embedder, model: str, texts: list[str], principal: str) -> Embedded:
    try:
        return await embedder.embed(model, texts, principal=principal)
    except ModelNotFoundError:
        raise ServiceUnavailableError(
            f"`{model}` does not answer in this process (yet); try again in a few seconds"
        ) from None


def _with_shadow_pairs(
    source: np.ndarray, target: np.ndarray, shadow: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """The sample pairs followed by the shadow pairs (when their dimensions agree)."""
    if shadow is None:
        return source, target
    staged, live = (np.asarray(side, dtype=np.float32) for side in shadow)
    if staged.ndim != 2 or live.ndim != 2 or len(staged) != len(live) or len(staged) == 0:
        return source, target
    if len(source) == 0:
        return staged, live
    if staged.shape[1] != source.shape[1] or live.shape[1] != target.shape[1]:
        log.warning("ignoring shadow pairs whose dimensions differ from the sample pairs'")
        return source, target
    return np.concatenate([source, staged]), np.concatenate([target, live])


def _live_route(embedder: Embedder, served_name: str, plan: FitPlan) -> LiveRoute:
    route = embedder.live(served_name)
    if route is None:
        raise ServiceUnavailableError(
            f"`{served_name}` does not answer in this process (yet); try again in a few seconds"
        )
    if route.revision_id != plan.live_revision_id:
        raise ConflictError(
            f"The live revision of `{served_name}` changed while the adapter was fitted; fit again"
        )
    return route


def _store_fitted(
    store: Store,
    served_name: str,
    plan: FitPlan,
    fitted: adapters.FittedAdapter,
    target_space: str,
    target_normalize: bool,
) -> AdapterState:
    """Store the adapter, unless the staged revision changed while it was fitted."""
    with store.session_scope() as db_session:
        migration = migrations_service.get_migration(db_session, served_name=served_name)
        _require_staged(served_name, migration)
        assert migration is not None
        if migration.staged_revision_id != plan.staged_revision_id:
            raise ConflictError(
                f"The staged revision of `{served_name}` changed while the adapter was "
                "fitted; fit again"
            )
        evaluation = fitted.evaluation
        adapter = migrations_service.store_adapter(
            db_session,
            served_name=served_name,
            revision_id=plan.staged_revision_id,
            target_revision_id=plan.live_revision_id,
            kind=fitted.kind,
            parameters=fitted.to_bytes(),
            evaluation={
                "kind": evaluation.kind,
                "pairs": int(evaluation.pairs),
                "held_out": int(evaluation.held_out),
                "mean_cosine": _finite(evaluation.mean_cosine),
                "neighbour_overlap_at_10": _finite(evaluation.neighbour_overlap_at_10),
            },
            target_embedding_space=target_space,
            target_normalize=bool(target_normalize),
        )
        return adapter_state(adapter)


def _finite(value: float | None) -> float | None:
    """A JSON-safe number: NaN and infinities are no measurement."""
    if value is None or not np.isfinite(value):
        return None
    return float(value)
