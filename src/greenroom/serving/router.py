"""The router: per served name the live revision; tokenising, batching and dispatch to replicas.

Each revision the router knows has its own queue and one worker task per ready replica; a worker
pulls the next batch whenever its replica is free, so a request goes at once to an idle replica
and requests that arrive while every replica is busy are packed into the next batches.
`set_live` swaps the served name's pointer in one assignment: requests that arrive after it go to
the new revision, while the old revision's queued and in-flight batches finish where they are.

**A missed switch loses no request.** A router may still send a name's requests to a revision
that was withdrawn (its sync missed the switch, or had not run yet, when the revision's replicas
stopped). A request that gets a 503 there (no ready replica left, its replica gone mid-batch, the
revision dropped) asks the router's live source (`on_missed_switch`: one pass of its sync, which
re-reads the live pointers from the store) and, when the name has moved to another revision, is
sent again, whole, to that one: embeddings are idempotent, and all of a request's vectors come
from one revision. Strings are tokenised again by the new revision's tokenizer; token ids are
never replayed into a revision with another tokenizer: such a request gets the 503. Items queued
on a revision that loses its last replica trigger that pass at once, instead of waiting out
`replica_wait_s`.

**Migrations** (docs/migrations.md). Besides the live revision, a served name may have a staged
revision (`set_migration`, fed by the router sync from the store). `name@live`, `name@staged`
and `name@<revision id>` (the live or the staged revision) address one revision directly, in its
own raw space, with its own tokenizer and queue; they are never retried elsewhere. While a name
is staged, a sampled share of its plain requests is also embedded by the staged revision after
the live answer is ready (shadow traffic, `_shadow`), only when the staged queue is idle. Under
`adapted` the plain name answers with the live revision's vectors mapped by the adapter into the
old space: the space is decided by the revision that computed the vectors, so a request that
finished on the old revision keeps its raw (old-space) vectors, and raw new-space vectors are
never returned under the old space's name (503 until this router has the adapter).

**The embedding cache** (serving.cache). A revision whose config has `cache_mib` > 0 has an
exact LRU of its raw vectors by token ids on its route (`_compute`): the inputs it holds are
answered from it, only the others are queued, and their vectors are stored when they come back.
Adapters and `dimensions` apply after it. Shadow calls bypass the staged revision's cache (they
call `_dispatch`, neither reading nor filling it), so their latency is always the replica's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from greenroom.config import Settings
from greenroom.errors import (
    BackendError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
)
from greenroom.metrics import Metrics
from greenroom.migrations.adapters import FittedAdapter
from greenroom.migrations.schemas import MigrationFollow
from greenroom.migrations.states import MigrationStage
from greenroom.registry.weights import ModelInfo
from greenroom.runtime.base import ReplicaSource, ReplicaStatus
from greenroom.runtime.protocol import ReplicaClient, ReplicaConnectionError
from greenroom.schemas import embedding_space
from greenroom.serving.batching import BatchQueue
from greenroom.serving.cache import EmbeddingCache, cache_key
from greenroom.serving.items import EmbeddingItem, EmbeddingResult, RequestTicket
from greenroom.serving.shadow import MAX_SHADOW_INPUTS, ShadowRecorder
from greenroom.serving.tokenizing import CutRule, cut_rule, encode_texts, load_tokenizer
from greenroom.serving.traffic import TrafficRecorder

log = logging.getLogger("greenroom.router")
# Requests whose strings hold more characters are tokenised in a thread (the tokenizer's batch
# call releases the GIL); smaller ones cost less than the hop (a few milliseconds at most).
INLINE_TOKENIZE_MAX_CHARS = 2048
INLINE_ADAPTER_MAX_INPUTS = 64  # larger answers are mapped by the adapter in a thread
MAX_ATTEMPTS = 2  # a batch whose replica died is retried once on another replica
LiveSource = Callable[[], Awaitable[None]]
"""Brings the router's live pointers up to date with the store (`RouterSync.refresh`)."""
PIN_LIVE, PIN_STAGED = "live", "staged"
SHADOW_PRINCIPAL = "greenroom:shadow"  # shadow items share the staged queue under this name
TOKEN_IDS_AMBIGUOUS = "token ids are ambiguous during a migration; send text, or use name@live"


@dataclass
class ServedBy:
    """Filled in by `Router.embed` for its caller: the revision that computed the vectors (or,
    when the request failed, the one it was sent to; None when no revision took it)."""

    revision_id: str | None = None

    def note(self, route: RevisionRoute) -> None:
        self.revision_id = route.revision_id


@dataclass(frozen=True)
class ServedRevision:
    """What the router needs to serve one revision."""

    revision_id: str
    served_name: str
    embedding_model_id: str
    content_hash: str
    info: ModelInfo
    max_batch_size: int = 32
    max_batch_tokens: int = 8192
    max_queue: int = 1024
    allow_dimensions: bool = False
    cache_mib: int = 0  # the exact embedding cache's bound (serving.cache); 0 = no cache
    # the revision's replica secret: every connection to its replicas proves it knows it
    replica_secret: str = field(default="", repr=False)

    def embedding_space(self, dimension: int | None = None) -> str:
        return embedding_space(
            self.embedding_model_id,
            self.content_hash,
            dimension or self.info.dimension,
            normalized=self.info.normalize or bool(dimension),  # a cut vector is normalised again
        )


@dataclass(eq=False)
class RevisionRoute:
    """A revision's queue, tokenizer and replica workers inside the router."""

    revision: ServedRevision
    tokenizer: Tokenizer
    queue: BatchQueue
    tokenizer_key: str = ""  # the tokenizer file's digest: equal keys, the same token ids
    cut: CutRule | None = None  # where long strings may be cut (serving.tokenizing)
    workers: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    broken: set[tuple[str, int]] = field(default_factory=set)  # endpoints that failed us
    batches_in_flight: int = 0
    live_since: float = 0.0
    added_at: float = field(default_factory=time.time)
    starvation_guard: asyncio.Task[None] | None = None
    cache: EmbeddingCache | None = None  # this revision's raw vectors by token ids; None = off

    @property
    def revision_id(self) -> str:
        return self.revision.revision_id

    def in_flight(self) -> int:
        """Items queued plus batches sent: what a drain waits for."""
        return len(self.queue) + self.batches_in_flight


@dataclass(eq=False)
class NameMigration:
    """What this router follows of one served name's migration: the store's row
    (`MigrationFollow`), the adapter loaded from it, and the shadow evidence of its staged
    revision (a new staged revision starts a new recorder)."""

    follow: MigrationFollow
    adapter: Any = None  # `FittedAdapter.from_bytes(...)`: has `.kind` and `.apply(x)`
    adapter_id: str | None = None  # the id of `adapter` (None when none is loaded)
    recorder: ShadowRecorder | None = None

    @property
    def stage(self) -> MigrationStage:
        return MigrationStage(self.follow.stage)

    def adapts(self, route: RevisionRoute) -> bool:
        """Whether vectors computed by `route` are mapped before they answer the served name:
        under `adapted`, those of every revision but the old one, whose space they answer in."""
        return (
            self.stage == MigrationStage.ADAPTED
            and route.revision_id != self.follow.old_revision_id
        )


class Router:
    """Routes requests to the replicas that `replicas` reports: the runtime itself where this
    process runs the supervisor, the supervisor's reports in the store where it does not."""

    def __init__(self, replicas: ReplicaSource, metrics: Metrics, settings: Settings) -> None:
        self.replica_source = replicas
        self.metrics = metrics
        self.settings = settings
        self._routes: dict[str, RevisionRoute] = {}  # by revision id
        self._live: dict[str, RevisionRoute] = {}  # by served name
        self._drained_listeners: list[Callable[[str], None]] = []
        self._live_source: LiveSource | None = None
        self._migrations: dict[str, NameMigration] = {}  # by served name
        self._failed_adapters: set[str] = set()  # adapter ids whose parameters did not load
        self._shadow_tasks: set[asyncio.Task[None]] = set()  # strong references until done
        # the last hour of traffic per served name and revision (GET /v1/traffic): requests are
        # recorded by the view beside their metrics, batches and queue depths here
        self.traffic = TrafficRecorder()
        replicas.subscribe(self._on_replicas_change)

    # ----- the live-revision pointer -------------------------------------------------------
    def add_revision(self, revision: ServedRevision) -> None:
        """Prepare a revision (tokenizer, queue, workers for its ready replicas); idempotent."""
        if revision.revision_id in self._routes:
            return
        key = hashlib.sha256(revision.info.tokenizer_file.read_bytes()).hexdigest()
        # Revisions with the same tokenizer and length share one (blue and green of a config
        # change, copies of a model): about 6 MB each for all-MiniLM-L6-v2. It is only read.
        shared = next(
            (
                route
                for route in self._routes.values()
                if route.tokenizer_key == key
                and route.revision.info.max_seq_length == revision.info.max_seq_length
            ),
            None,
        )
        if shared is not None:
            tokenizer, cut = shared.tokenizer, shared.cut
        else:
            tokenizer = load_tokenizer(revision.info.tokenizer_file, revision.info.max_seq_length)
            cut = cut_rule(tokenizer)
        self._routes[revision.revision_id] = RevisionRoute(
            revision=revision,
            tokenizer=tokenizer,
            tokenizer_key=key,
            queue=BatchQueue(
                max_batch_size=revision.max_batch_size,
                max_batch_tokens=revision.max_batch_tokens,
                max_queue=revision.max_queue,
                principal_share=self.settings.principal_queue_share,
            ),
            cut=cut,
            cache=EmbeddingCache.of_mib(revision.cache_mib),
        )
        self._sync_workers(revision.revision_id)

    def set_live(self, served_name: str, revision_id: str) -> None:
        """Make the revision live for the served name: one assignment, atomic for requests."""
        route = self._routes[revision_id]
        route.live_since = time.time()
        previous = self._live.get(served_name)
        self._live[served_name] = route
        if previous is not None and previous is not route and not previous.workers:
            self._fail_withdrawn(previous)  # nothing will serve its queue: retried on this one

    def remove(self, served_name: str) -> None:
        """Stop serving the name: later requests for it get 404."""
        self._live.pop(served_name, None)

    def live(self, served_name: str) -> RevisionRoute | None:
        return self._live.get(served_name)

    def live_routes(self) -> dict[str, RevisionRoute]:
        return dict(self._live)

    def on_missed_switch(self, live_source: LiveSource) -> None:
        """Call `live_source()` when a request reaches a revision that cannot serve it: the
        name may have moved to another revision without this router hearing of it yet."""
        self._live_source = live_source

    def on_drained(self, listener: Callable[[str], None]) -> None:
        """Call `listener(revision_id)` when a revision that is not live has nothing in flight."""
        self._drained_listeners.append(listener)

    def _batch_done(self, route: RevisionRoute) -> None:
        route.batches_in_flight -= 1
        if route.in_flight() == 0 and not self._serves(route):
            for listener in self._drained_listeners:
                listener(route.revision_id)

    def revision_ids(self) -> set[str]:
        return set(self._routes)

    def ready_replicas(self, revision_id: str) -> list[ReplicaStatus]:
        return [r for r in self.replica_source.replicas(revision_id) if r.state.is_ready()]

    def in_flight(self, revision_id: str) -> int:
        route = self._routes.get(revision_id)
        return route.in_flight() if route else 0

    async def drop_revision(self, revision_id: str) -> None:
        """Forget a revision that is no longer live (after its drain)."""
        route = self._routes.pop(revision_id, None)
        if route is None:
            return
        for name, live in list(self._live.items()):
            if live is route:
                del self._live[name]
        await self._stop_workers(route, list(route.workers))
        route.queue.fail_all(ServiceUnavailableError("The revision was withdrawn; retry."))

    async def close(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        for task in list(self._shadow_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for revision_id in list(self._routes):
            await self.drop_revision(revision_id)

    # ----- migrations: the staged revision, the adapter, shadow traffic ---------------------
    def set_migration(self, served_name: str, follow: MigrationFollow) -> None:
        """Follow the served name's migration as the store has it. The staged revision is
        looked up by id on each request (`add_revision` it first for it to answer); the adapter
        is loaded once per adapter id; a new staged revision starts a new shadow recorder."""
        current = self._migrations.get(served_name)
        adapter, adapter_id = self._load_adapter(follow, current)
        recorder = current.recorder if current is not None else None
        staged_id = follow.staged_revision_id
        if MigrationStage(follow.stage) != MigrationStage.STAGED or staged_id is None:
            recorder = None
        elif recorder is None or recorder.staged_revision_id != staged_id:
            recorder = ShadowRecorder(staged_id, window=self.settings.shadow_window)
        if current is not None and current.recorder is not None and recorder is None:
            self.metrics.forget_shadow_gauges(served_name)
        self._migrations[served_name] = NameMigration(follow, adapter, adapter_id, recorder)

    def clear_migration(self, served_name: str) -> None:
        """The name is in no migration any more: no staged revision, no adapter, no shadow."""
        if self._migrations.pop(served_name, None) is not None:
            self.metrics.forget_shadow_gauges(served_name)

    def _load_adapter(
        self, follow: MigrationFollow, current: NameMigration | None
    ) -> tuple[Any, str | None]:
        row = follow.adapter
        if row is None:
            return None, None
        if current is not None and current.adapter_id == row.id:
            return current.adapter, current.adapter_id
        if row.id in self._failed_adapters:
            return None, None
        try:
            return FittedAdapter.from_bytes(row.kind, row.parameters), row.id
        except Exception:  # a broken row: the adapted name answers 503, never wrong vectors
            log.exception("the adapter %s of '%s' does not load", row.id, follow.served_name)
            self._failed_adapters.add(row.id)
            return None, None

    def migrations(self) -> dict[str, MigrationFollow]:
        """The migrations this router follows, by served name."""
        return {name: migration.follow for name, migration in self._migrations.items()}

    def staged(self, served_name: str) -> RevisionRoute | None:
        """The name's staged revision, once prepared here (`add_revision`)."""
        migration = self._migrations.get(served_name)
        staged_id = migration.follow.staged_revision_id if migration is not None else None
        return self._routes.get(staged_id) if staged_id is not None else None

    def staged_revision_ids(self) -> set[str]:
        """Every staged revision the followed migrations name, prepared here or not."""
        return {
            m.follow.staged_revision_id
            for m in self._migrations.values()
            if m.follow.staged_revision_id is not None
        }

    def pinned_report(self) -> dict[str, dict[str, str | None]]:
        """What the router report's `pinned` column holds: per followed name, the staged
        revision this router has prepared and the adapter it has loaded (None for none)."""
        report: dict[str, dict[str, str | None]] = {}
        for name, migration in self._migrations.items():
            staged = self.staged(name)
            report[name] = {
                "staged": staged.revision_id if staged is not None else None,
                "adapter": migration.adapter_id,
            }
        return report

    def pinned_routes(self) -> dict[str, RevisionRoute]:
        """The pinned names that answer now: `name@live` and `name@<live id>` of every live
        name, `name@staged` and `name@<staged id>` while the staged revision has a ready
        replica."""
        pinned: dict[str, RevisionRoute] = {}
        for name in sorted(self._live.keys() | self._migrations.keys()):
            if (live := self._live.get(name)) is not None:
                pinned[f"{name}@{PIN_LIVE}"] = pinned[f"{name}@{live.revision_id}"] = live
            if (staged := self.staged(name)) is not None and staged.workers:
                pinned[f"{name}@{PIN_STAGED}"] = pinned[f"{name}@{staged.revision_id}"] = staged
        return pinned

    def shadow_recorders(self) -> dict[str, ShadowRecorder]:
        """The shadow recorder of every name with a staged revision, by served name."""
        return {
            name: migration.recorder
            for name, migration in self._migrations.items()
            if migration.recorder is not None
        }

    def shadow_pairs(self, served_name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(staged vectors, live vectors) of the name's shadow window, rows paired; None when
        there are none."""
        migration = self._migrations.get(served_name)
        if migration is None or migration.recorder is None:
            return None
        return migration.recorder.pairs_arrays()

    # ----- requests ------------------------------------------------------------------------
    async def embed(
        self,
        served_name: str,
        inputs: list[str] | list[list[int]],
        *,
        dimensions: int | None = None,
        principal: str = "",
        served_by: ServedBy | None = None,
    ) -> EmbeddingResult:
        """Embed the inputs for `principal` (the token's id), who shares batches and the queue
        with the other principals (`BatchQueue`). `served_name` may be a pinned name
        (`name@live`, `name@staged`, `name@<revision id>`): that revision answers, raw, or
        nothing does. A plain name's request that reaches a withdrawn revision is sent again
        to the live one, answers through the adapter under `adapted`, and may be shadowed
        (module docstring). `served_by`, when given, learns which revision served it."""
        served_by = served_by if served_by is not None else ServedBy()
        name, at, pin = served_name.partition("@")
        if at:
            route = self._pinned_route(name, pin, served_name)
            served_by.note(route)
            return await self._embed_on(route, served_name, inputs, dimensions, principal)
        return await self._embed_served(served_name, inputs, dimensions, principal, served_by)

    def _pinned_route(self, name: str, pin: str, model: str) -> RevisionRoute:
        live, staged = self._live.get(name), self.staged(name)
        if pin == PIN_LIVE:
            route = live
        elif pin == PIN_STAGED:
            route = staged
        else:
            route = next(
                (r for r in (live, staged) if r is not None and r.revision_id == pin), None
            )
        if route is None:
            raise ModelNotFoundError(
                f"The model '{model}' does not exist: '{name}' has no live or staged revision "
                f"'{pin}' (pin @live, @staged or the id of its live or staged revision)."
            )
        return route

    async def _embed_served(
        self,
        served_name: str,
        inputs: list[str] | list[list[int]],
        dimensions: int | None,
        principal: str,
        served_by: ServedBy,
    ) -> EmbeddingResult:
        route = self._live.get(served_name)
        if route is None:
            raise ModelNotFoundError(f"The model '{served_name}' does not exist.")
        served_by.note(route)
        migration = self._migrations.get(served_name)
        adapted = migration is not None and migration.stage == MigrationStage.ADAPTED
        if adapted and not isinstance(inputs[0], str):
            raise InvalidRequestError(TOKEN_IDS_AMBIGUOUS)  # the contract's sentence, verbatim
        if migration is not None and migration.adapts(route):
            self._check_adapted_dimensions(route.revision, migration, dimensions)
        else:
            self._check_dimensions(route.revision, dimensions)
        started = time.perf_counter()
        route, computed = await self._embed_following(route, served_name, inputs, principal)
        vectors = computed.vectors
        served_by.note(route)  # the revision that computed the vectors
        live_latency_s = time.perf_counter() - started
        result = await self._answer(served_name, route, computed, dimensions)
        self._maybe_shadow(served_name, route, inputs, vectors, live_latency_s)
        return result

    async def _embed_following(
        self,
        route: RevisionRoute,
        served_name: str,
        inputs: list[str] | list[list[int]],
        principal: str,
    ) -> tuple[RevisionRoute, Computed]:
        """The raw vectors of the revision that computed them (the live one, or the one the
        name moved to when the first could not serve them) and the prompt tokens."""
        tried = {route.revision_id}
        while True:
            try:
                return route, await self._compute(route, served_name, inputs, principal)
            except ServiceUnavailableError:
                live = await self._moved_from(route, served_name)
                if live is None or live.revision_id in tried:
                    raise
            self._require_same_tokenizer(route, live, served_name, inputs)
            log.info(
                "'%s': %s could not serve a request; sending it to the live %s",
                served_name,
                route.revision_id,
                live.revision_id,
            )
            tried.add(live.revision_id)
            route = live

    async def _answer(
        self,
        served_name: str,
        route: RevisionRoute,
        computed: Computed,
        dimensions: int | None,
    ) -> EmbeddingResult:
        """The served name's answer from `route`'s raw vectors: mapped into the old space when
        the name is adapted now (NameMigration.adapts), else raw."""
        migration = self._migrations.get(served_name)
        if migration is None or not migration.adapts(route):
            return _result(computed, dimensions, route.revision.embedding_space)
        vectors = computed.vectors
        row = migration.follow.adapter
        if migration.adapter is None or row is None or row.revision_id != route.revision_id:
            raise ServiceUnavailableError(
                f"'{served_name}' answers through an adapter that this router has not loaded "
                f"yet; retry shortly (or use {served_name}@live for raw vectors)."
            )
        try:
            if len(vectors) <= INLINE_ADAPTER_MAX_INPUTS:
                mapped = migration.adapter.apply(vectors)
            else:
                mapped = await asyncio.to_thread(migration.adapter.apply, vectors)
        except ValueError as exc:  # its shapes do not fit this revision: never a 500
            log.error("the adapter %s does not fit %s: %s", row.id, route.revision_id, exc)
            raise ServiceUnavailableError(
                f"The adapter of '{served_name}' does not fit its live revision; use "
                f"{served_name}@live for raw vectors, or fit the adapter again."
            ) from exc
        mapped = np.asarray(mapped, dtype=np.float32)
        if row.target_normalize:
            mapped = _l2_normalised(mapped)
        self.metrics.adapter_inputs.labels(served_name).inc(len(mapped))
        space = row.target_embedding_space
        return _result(
            Computed(mapped, computed.prompt_tokens, computed.cached),
            dimensions,
            lambda d: _space_of(space, d),
        )

    async def _embed_on(
        self,
        route: RevisionRoute,
        served_name: str,
        inputs: list[str] | list[list[int]],
        dimensions: int | None,
        principal: str,
    ) -> EmbeddingResult:
        """Embed the inputs with one revision, in its raw space; 503 when it cannot."""
        revision = route.revision
        self._check_dimensions(revision, dimensions)
        computed = await self._compute(route, served_name, inputs, principal)
        return _result(computed, dimensions, revision.embedding_space)

    async def _compute(
        self,
        route: RevisionRoute,
        served_name: str,
        inputs: list[str] | list[list[int]],
        principal: str,
    ) -> Computed:
        """One revision's raw vectors of the inputs and their prompt tokens; 503 when it has
        no ready replica. With a cache, only its misses are queued (an input repeated within
        the request once), then stored; the answer keeps the input order."""
        token_ids = await self._tokenize(route, inputs)
        prompt_tokens = sum(len(ids) for ids in token_ids)
        # also when the cache holds every input: a revision without replicas may have been
        # withdrawn, and its 503 is what sends the request to the name's live revision
        self._require_workers(route, served_name)
        cache = route.cache
        if cache is None:
            return Computed(await self._dispatch(route, token_ids, principal), prompt_tokens)
        keys = [cache_key(ids) for ids in token_ids]
        found = [cache.get(key) for key in keys]
        missing: dict[bytes, int] = {}  # key -> its row among the vectors to compute
        for key, vector in zip(keys, found, strict=True):
            if vector is None:
                missing.setdefault(key, len(missing))
        hits = len(keys) - sum(vector is None for vector in found)
        name = route.revision.served_name
        self.metrics.cache_hits.labels(name).inc(hits)
        self.metrics.cache_misses.labels(name).inc(len(keys) - hits)
        if missing:
            first = {key: ids for key, ids in zip(keys, token_ids, strict=True)}
            computed = await self._dispatch(route, [first[key] for key in missing], principal)
            for key, row in missing.items():
                cache.put(key, computed[row])
            found = [
                computed[missing[key]] if vector is None else vector
                for key, vector in zip(keys, found, strict=True)
            ]
        return Computed(np.stack(found), prompt_tokens, cached=hits)

    @staticmethod
    def _require_workers(route: RevisionRoute, served_name: str) -> None:
        if not route.workers:
            raise ServiceUnavailableError(
                f"No ready replica for '{served_name}' right now; retry shortly."
            )

    def cache_bytes(self) -> dict[tuple[str, str], int]:
        """The bytes each revision's cache holds, by (served name, revision id); revisions
        without a cache are left out."""
        return {
            (route.revision.served_name, route.revision_id): route.cache.bytes
            for route in self._routes.values()
            if route.cache is not None
        }

    async def _dispatch(
        self, route: RevisionRoute, token_ids: list[np.ndarray], principal: str
    ) -> np.ndarray:
        loop = asyncio.get_running_loop()
        ticket = RequestTicket(principal)
        items = [EmbeddingItem(ids, loop.create_future(), ticket) for ids in token_ids]
        route.queue.put(items)
        self.traffic.queue_depth(route.revision.served_name, route.revision_id, len(route.queue))
        try:
            if len(items) == 1:  # the future itself: a gather adds a callback's turn before it
                return np.stack([await items[0].future])
            return np.stack(await asyncio.gather(*(item.future for item in items)))
        finally:
            for item in items:
                item.future.cancel()  # a client that left frees its queued items

    # ----- shadow traffic ------------------------------------------------------------------
    def _maybe_shadow(
        self,
        served_name: str,
        route: RevisionRoute,
        inputs: list[str] | list[list[int]],
        live_vectors: np.ndarray,
        live_latency_s: float,
    ) -> None:
        """Sample the answered request for shadow traffic (per request, at the stored
        fraction) and start its shadow in the background; never raises, never waits."""
        try:
            migration = self._migrations.get(served_name)
            recorder = migration.recorder if migration is not None else None
            staged = self.staged(served_name)
            if migration is None or recorder is None or staged is None or staged is route:
                return
            if staged.revision_id != recorder.staged_revision_id or not staged.workers:
                return
            if not isinstance(inputs[0], str) and staged.tokenizer_key != route.tokenizer_key:
                return  # token ids of another vocabulary: nothing to compare
            fraction = migration.follow.shadow_fraction
            if fraction <= 0.0 or random.random() >= fraction:
                return
            count = min(len(inputs), MAX_SHADOW_INPUTS)
            recorder.sampled(count)
            self.metrics.shadow_requests.labels(served_name).inc()
            self.metrics.shadow_inputs.labels(served_name).inc(count)
            if staged.in_flight() > 0:
                self._drop_shadow(served_name, recorder, count)
                return
            task = asyncio.get_running_loop().create_task(
                self._shadow(
                    served_name,
                    recorder,
                    staged,
                    inputs[:count],
                    live_vectors[:count].copy(),
                    live_latency_s,
                ),
                name=f"shadow {served_name}",
            )
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        except Exception:  # the live answer is ready: nothing here may touch it
            log.exception("sampling a request of '%s' for shadow traffic failed", served_name)

    async def _shadow(
        self,
        served_name: str,
        recorder: ShadowRecorder,
        staged: RevisionRoute,
        inputs: list[str] | list[list[int]],
        live_vectors: np.ndarray,
        live_latency_s: float,
    ) -> None:
        """Embed the sampled inputs with the staged revision, unless its queue is busy (then
        they are dropped and counted), and record the pairs."""
        try:
            token_ids = await self._tokenize(staged, inputs)
            withdrawn = self._routes.get(staged.revision_id) is not staged
            if withdrawn or staged.in_flight() > 0 or not staged.workers:
                self._drop_shadow(served_name, recorder, len(inputs))
                return
            started = time.perf_counter()
            staged_vectors = await self._dispatch(staged, token_ids, SHADOW_PRINCIPAL)
            staged_latency_s = time.perf_counter() - started
        except Exception as exc:  # counted: a shadow failure never reaches a client
            log.debug("a shadow call to %s failed: %s", staged.revision_id, exc)
            recorder.error()
            self.metrics.shadow_errors.labels(served_name).inc()
            return
        recorder.record(
            staged_vectors,
            live_vectors,
            live_latency_s=live_latency_s,
            staged_latency_s=staged_latency_s,
        )
        self.metrics.shadow_latency.labels(served_name, "live").observe(live_latency_s)
        self.metrics.shadow_latency.labels(served_name, "staged").observe(staged_latency_s)

    def _drop_shadow(self, served_name: str, recorder: ShadowRecorder, count: int) -> None:
        recorder.drop(count)
        self.metrics.shadow_dropped_inputs.labels(served_name).inc(count)

    async def _moved_from(self, route: RevisionRoute, served_name: str) -> RevisionRoute | None:
        """The revision now live for the name when it is not `route` (asking the live source
        first, unless the router already moved the name); None otherwise."""
        if self._live.get(served_name) is route:
            await self._ask_live_source()
        live = self._live.get(served_name)
        return live if live is not None and live is not route else None

    async def _ask_live_source(self) -> None:
        if self._live_source is None:
            return
        try:
            await self._live_source()
        except Exception:  # the store is out of reach: the request keeps its 503
            log.exception("re-reading the live revisions failed")

    @staticmethod
    def _require_same_tokenizer(
        failed: RevisionRoute,
        live: RevisionRoute,
        served_name: str,
        inputs: list[str] | list[list[int]],
    ) -> None:
        """Token ids belong to the tokenizer they were made with: never replay them into a
        revision with another one."""
        if isinstance(inputs[0], str) or failed.tokenizer_key == live.tokenizer_key:
            return
        raise ServiceUnavailableError(
            f"'{served_name}' moved to a revision with another tokenizer while "
            "this request was served; its token ids were made for the previous tokenizer and "
            "are not sent to the new one. Tokenise the input again (or send the text) and retry."
        )

    def _fail_withdrawn(self, route: RevisionRoute) -> None:
        """Fail what waits on a revision that is no longer live and has no replica: each
        request is sent again to the live revision (`embed`)."""
        route.queue.fail_all(
            ServiceUnavailableError(
                f"The revision {route.revision_id} of '{route.revision.served_name}' was "
                "withdrawn; retry."
            )
        )

    def _serves(self, route: RevisionRoute) -> bool:
        """Whether the route is live or staged for a name: requests are meant to reach it."""
        return any(live is route for live in self._live.values()) or (
            route.revision_id in self.staged_revision_ids()
        )

    @staticmethod
    def _check_adapted_dimensions(
        revision: ServedRevision, migration: NameMigration, dimensions: int | None
    ) -> None:
        """`dimensions` under `adapted` cut the adapter's output (the old space's dimension)."""
        row = migration.follow.adapter
        if dimensions is None or row is None:
            return
        if not revision.allow_dimensions:
            raise InvalidRequestError(
                f"The model '{revision.served_name}' does not support 'dimensions'; leave it out."
            )
        target = _dimension_of(row.target_embedding_space)
        if target is not None and not 1 <= dimensions <= target:
            raise InvalidRequestError(f"'dimensions' must be between 1 and {target}.")

    @staticmethod
    def _check_dimensions(revision: ServedRevision, dimensions: int | None) -> None:
        if dimensions is None:
            return
        if not revision.allow_dimensions:
            raise InvalidRequestError(
                f"The model '{revision.served_name}' does not support 'dimensions'; leave it out."
            )
        if not 1 <= dimensions <= revision.info.dimension:
            raise InvalidRequestError(
                f"'dimensions' must be between 1 and {revision.info.dimension}."
            )

    async def _tokenize(
        self, route: RevisionRoute, inputs: list[str] | list[list[int]]
    ) -> list[np.ndarray]:
        if isinstance(inputs[0], str):
            texts: list[str] = inputs  # type: ignore[assignment]
            if sum(map(len, texts)) <= INLINE_TOKENIZE_MAX_CHARS:
                ids = encode_texts(route.tokenizer, texts, rule=route.cut)
            else:
                ids = await asyncio.to_thread(encode_texts, route.tokenizer, texts, rule=route.cut)
            return [np.asarray(one, dtype=np.int64) for one in ids]
        info = route.revision.info
        token_ids = []
        for ids in inputs:
            try:
                array = np.asarray(ids[: info.max_seq_length], dtype=np.int64)
            except (OverflowError, TypeError, ValueError):
                array = np.array([-1])  # not int64 integers: refused below
            if array.min() < 0 or array.max() >= info.vocab_size:
                raise InvalidRequestError(
                    f"Token ids must lie in [0, {info.vocab_size}) for this model."
                )
            token_ids.append(array)
        return token_ids

    # ----- replica workers -----------------------------------------------------------------
    def _on_replicas_change(self, revision_id: str) -> None:
        if revision_id in self._routes:
            self._sync_workers(revision_id)

    def _sync_workers(self, revision_id: str) -> None:
        """One worker per ready replica the replica source reports; none for the others."""
        route = self._routes[revision_id]
        replicas = {r.replica_id: r for r in self.replica_source.replicas(revision_id)}
        ready = {rid: r for rid, r in replicas.items() if r.endpoint is not None}
        reported = {r.endpoint for r in replicas.values() if r.endpoint is not None}
        route.broken &= reported  # a broken endpoint no longer reported ready (restart) is cleared
        stale = [key for key in route.workers if key not in self._worker_keys(ready)]
        if stale:
            asyncio.get_running_loop().create_task(self._stop_workers(route, stale))
        for replica in ready.values():
            if replica.endpoint in route.broken:
                continue
            for key in self._worker_keys_of(replica):
                if key not in route.workers:
                    route.workers[key] = asyncio.get_running_loop().create_task(
                        self._work(route, key, replica), name=f"router worker {key}"
                    )
        self._guard_starvation(route)

    def _worker_keys_of(self, replica: ReplicaStatus) -> list[str]:
        """One worker (one connection, one batch out at a time) per pipeline slot."""
        depth = self.settings.replica_pipeline_depth
        return [f"{replica.replica_id}@{replica.port}/{slot}" for slot in range(depth)]

    def _worker_keys(self, ready: dict[str, ReplicaStatus]) -> set[str]:
        return {key for r in ready.values() for key in self._worker_keys_of(r)}

    async def _stop_workers(self, route: RevisionRoute, keys: list[str]) -> None:
        tasks = [route.workers.pop(key) for key in keys if key in route.workers]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if route.revision_id in self._routes:
            self._guard_starvation(route)

    async def _work(self, route: RevisionRoute, key: str, replica: ReplicaStatus) -> None:
        assert replica.host is not None and replica.port is not None
        client = ReplicaClient(
            replica.host,
            replica.port,
            route.revision.replica_secret,
            max_dimension=route.revision.info.dimension,
        )
        served_name = route.revision.served_name
        try:
            while True:
                batch = await route.queue.get_batch()
                route.batches_in_flight += 1
                try:
                    await self._run_batch(route, client, batch, served_name)
                except ReplicaConnectionError as exc:
                    log.warning("replica %s failed mid-batch: %s", key, exc)
                    route.broken.add((replica.host, replica.port))
                    self._retry_or_fail(route, batch, exc)
                    return
                except asyncio.CancelledError:
                    route.queue.put_front([i for i in batch if not i.future.done()])
                    raise
                finally:
                    self._batch_done(route)
        finally:
            if route.workers.get(key) is asyncio.current_task():
                del route.workers[key]
                self._guard_starvation(route)
            await client.close()

    async def _run_batch(
        self, route: RevisionRoute, client: ReplicaClient, batch: list[EmbeddingItem], name: str
    ) -> None:
        lengths = np.fromiter((item.length for item in batch), dtype=np.int64, count=len(batch))
        flat_ids = np.concatenate([item.token_ids for item in batch])
        started = time.perf_counter()
        try:
            vectors = await client.embed(lengths, flat_ids)
        except ReplicaConnectionError:
            raise
        except BackendError as exc:  # the replica answered with an error: not worth a retry
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        duration_s = time.perf_counter() - started
        for item, vector in zip(batch, vectors, strict=True):
            if not item.future.done():
                item.future.set_result(vector)
        # counted on the loop's next turn, after the requests just answered have resumed
        # (callbacks run in the order they were scheduled): off their latency
        asyncio.get_running_loop().call_soon(
            self._count_batch, name, route.revision_id, len(batch), duration_s
        )

    def _count_batch(self, name: str, revision_id: str, size: int, duration_s: float) -> None:
        self.metrics.batch_size.labels(name).observe(size)
        self.traffic.batch(name, revision_id, size=size)
        self.metrics.batch_duration.labels(name).observe(duration_s)

    def _retry_or_fail(
        self, route: RevisionRoute, batch: list[EmbeddingItem], exc: Exception
    ) -> None:
        retry = []
        for item in batch:
            if item.future.done():
                continue
            item.attempts += 1
            if item.attempts < MAX_ATTEMPTS:
                retry.append(item)
            else:
                item.future.set_exception(
                    ServiceUnavailableError(f"Replicas failed twice for this input: {exc}")
                )
        route.queue.put_front(retry)

    def _guard_starvation(self, route: RevisionRoute) -> None:
        """With no worker left, queued items wait a bounded time for a replica, then get 503."""
        if route.workers or route.starvation_guard is not None:
            return

        async def guard() -> None:
            try:
                if len(route.queue) and self._live_source is not None:
                    await self._ask_live_source()  # the name may have moved without us
                    if not route.workers and not self._serves(route):
                        self._fail_withdrawn(route)
                        return
                await asyncio.sleep(self.settings.replica_wait_s)
                if not route.workers:
                    route.queue.fail_all(
                        ServiceUnavailableError(
                            f"No ready replica for '{route.revision.served_name}'; retry shortly."
                        )
                    )
            finally:
                route.starvation_guard = None

        route.starvation_guard = asyncio.get_running_loop().create_task(guard())


@dataclass(frozen=True)
class Computed:
    """One revision's raw vectors of a request, its prompt tokens and how many of its inputs
    the revision's cache answered."""

    vectors: np.ndarray
    prompt_tokens: int
    cached: int = 0


def _result(
    computed: Computed,
    dimensions: int | None,
    space_of: Callable[[int | None], str],
) -> EmbeddingResult:
    """The answer: vectors cut to `dimensions` (then L2-normalised again) and their space."""
    vectors = computed.vectors
    if dimensions:
        vectors = _l2_normalised(vectors[:, :dimensions])
    return EmbeddingResult(
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        prompt_tokens=computed.prompt_tokens,
        embedding_space=space_of(dimensions),
        cached=computed.cached,
    )


def _l2_normalised(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _space_of(space: str, dimensions: int | None) -> str:
    """An embedding space (`model@hash/dim/norm`) cut to `dimensions` (then L2-normalised)."""
    if not dimensions:
        return space
    head, _, _ = space.rsplit("/", 2) if space.count("/") >= 2 else (space, "", "")
    return f"{head}/{dimensions}/l2"


def _dimension_of(space: str) -> int | None:
    parts = space.rsplit("/", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
