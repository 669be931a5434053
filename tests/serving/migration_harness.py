"""A router with a live and a staged revision on in-process replicas (fake runtime, model-free
engines), for the pinned-name, adapter and shadow-traffic tests.

Each revision gets its own engine: its own dimension, an offset that tells its vectors apart,
its own gate (a held gate keeps that revision's replica busy) and an optional failure.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from factories import HashEngine
from helpers import wait_until

from greenroom.config import Settings
from greenroom.metrics import Metrics
from greenroom.migrations.schemas import AdapterRow, MigrationFollow
from greenroom.migrations.states import MigrationStage
from greenroom.registry.weights import inspect_model
from greenroom.runtime.base import RevisionSpec
from greenroom.runtime.fake import FakeRuntime
from greenroom.serving.router import Router, ServedRevision

NAME = "m"


class RevisionEngine(HashEngine):
    """A HashEngine of its own dimension whose vectors carry `offset`, held on `gate`."""

    def __init__(self, dimension: int, offset: float) -> None:
        super().__init__(dimension)
        self.offset = offset
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.fail = False

    def embed(self, lengths: np.ndarray, flat_ids: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(30)
        if self.fail:
            raise RuntimeError("this replica fails on purpose")
        self.batches.append(len(lengths))
        return super().embed(lengths, flat_ids) + self.offset

    def vector(self, ids: list[int]) -> np.ndarray:
        return HashEngine(self.info.dimension).expected(ids) + self.offset


@dataclass
class MigrationHarness:
    runtime: FakeRuntime
    router: Router
    model_dir: Path
    engines: dict[str, RevisionEngine] = field(default_factory=dict)
    shapes: dict[str, tuple[int, float]] = field(default_factory=dict)

    async def start(
        self,
        revision_id: str,
        *,
        dimension: int = 8,
        offset: float = 0.0,
        model_dir: Path | None = None,
        name: str = NAME,
        content_hash: str | None = None,
        **kwargs: object,
    ) -> ServedRevision:
        """Start the revision's replica and add it to the router (neither live nor staged)."""
        model_dir = model_dir or self.model_dir
        self.shapes[revision_id] = (dimension, offset)
        content_hash = content_hash or (revision_id.encode().hex() * 64)[:64]
        revision = ServedRevision(
            revision_id=revision_id,
            served_name=name,
            embedding_model_id=name,
            content_hash=content_hash,
            info=inspect_model(model_dir),
            **kwargs,  # type: ignore[arg-type]
        )
        spec = RevisionSpec(
            revision_id=revision_id, model_path=model_dir, content_hash=content_hash, replicas=1
        )
        await self.runtime.start_revision(spec)
        await wait_until(
            lambda: len(self.runtime.ready_replicas(revision_id)) == 1, what="a ready replica"
        )
        self.router.add_revision(revision)
        await wait_until(lambda: bool(self.router._routes[revision_id].workers), what="a worker")
        return revision

    async def live(self, revision_id: str, **kwargs: object) -> ServedRevision:
        revision = await self.start(revision_id, **kwargs)  # type: ignore[arg-type]
        self.router.set_live(revision.served_name, revision_id)
        return revision

    def stage(self, staged_id: str, *, fraction: float = 0.0, name: str = NAME) -> None:
        self.router.set_migration(
            name,
            MigrationFollow(
                served_name=name,
                stage=MigrationStage.STAGED,
                staged_revision_id=staged_id,
                old_revision_id=None,
                shadow_fraction=fraction,
                adapter=None,
            ),
        )

    def adapt(self, old_id: str, adapter: AdapterRow | None, *, name: str = NAME) -> None:
        self.router.set_migration(
            name,
            MigrationFollow(
                served_name=name,
                stage=MigrationStage.ADAPTED,
                staged_revision_id=None,
                old_revision_id=old_id,
                shadow_fraction=0.05,
                adapter=adapter,
            ),
        )

    def ids(self, text: str, *, revision_id: str | None = None) -> list[int]:
        route = self.router._routes[revision_id] if revision_id else self.router.live(NAME)
        assert route is not None
        return route.tokenizer.encode(text).ids

    def expected(self, revision_id: str, text: str) -> np.ndarray:
        """The raw vector `revision_id` gives `text` (tokenised by its own tokenizer)."""
        return self.engines[revision_id].vector(self.ids(text, revision_id=revision_id))


@asynccontextmanager
async def migration_harness(model_dir: Path, **settings: object) -> AsyncIterator[MigrationHarness]:
    holder: list[MigrationHarness] = []

    def factory(spec: RevisionSpec) -> RevisionEngine:
        dimension, offset = holder[0].shapes[spec.revision_id]
        engine = RevisionEngine(dimension, offset)
        holder[0].engines[spec.revision_id] = engine
        return engine

    runtime = FakeRuntime(factory)
    router = Router(runtime, Metrics(), Settings(**settings))  # type: ignore[arg-type]
    h = MigrationHarness(runtime, router, model_dir)
    holder.append(h)
    try:
        yield h
    finally:
        for engine in h.engines.values():
            engine.gate.set()
        await router.close()
        await runtime.close()


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    """A metric's current value (0 when it has no sample yet)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value
