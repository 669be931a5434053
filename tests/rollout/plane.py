"""The rollout's test control plane: store (SQLite and PostgreSQL), fake runtime with real ONNX
engines, the supervisor's reconcile loop, the router following the store, and a task runner;
with what the embedding migration's tests ask of it (a staged deploy, promote / finish / abort
tasks, the migration's row, an adapter stored as a fit would store it)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from helpers import wait_until
from sqlalchemy import select

from greenroom.config import Settings
from greenroom.deployments.models import Deployment, DeploymentConfig
from greenroom.errors import ModelNotFoundError
from greenroom.metrics import Metrics
from greenroom.migrations import service as migrations_service
from greenroom.migrations.adapters import LoadedAdapter
from greenroom.registry.models import EmbeddingModel
from greenroom.registry.weights import content_hash, inspect_model
from greenroom.rollout.runner import TaskRunner
from greenroom.rollout.steps import StepContext
from greenroom.runtime.fake import FakeRuntime, real_engines
from greenroom.runtime.reconcile import Reconciler
from greenroom.serving.router import Router
from greenroom.serving.sync import RouterSync
from greenroom.signals import Signals
from greenroom.store.db import Store
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import TaskMetadata
from greenroom.workloads.models import LiveRevision, Revision

MODEL = "model-a"


@dataclass
class ControlPlane:
    store: Store
    runtime: FakeRuntime
    router: Router
    runner: TaskRunner

    def run_task(self, kind: str, **metadata: Any) -> str:
        task_id = f"{kind}-{uuid.uuid4().hex}"
        with self.store.session_scope() as session:
            session.add(
                Task(
                    id=task_id,
                    kind=kind,
                    embedding_model_id=MODEL,
                    status="processing",
                    task_metadata={"initiated_by": "test", "workspace": "default", **metadata},
                )
            )
        return task_id

    async def deploy(self, **metadata: Any) -> Task:
        task_id = self.run_task("deploy", **metadata)
        await self.runner(task_id)
        return self.task(task_id)

    async def delete(self) -> Task:
        task_id = self.run_task("delete")
        await self.runner(task_id)
        return self.task(task_id)

    async def stage(self, **metadata: Any) -> Task:
        """A staged deploy of the model's latest config (`"strategy": "staged"`)."""
        return await self.deploy(strategy="staged", **metadata)

    async def run(self, kind: str, **metadata: Any) -> Task:
        """A task of any kind (promote, finish, abort …), run to its end."""
        task_id = self.run_task(kind, **metadata)
        await self.runner(task_id)
        return self.task(task_id)

    def migration(self) -> tuple[str, str | None, str | None]:
        """The model's migration: (stage, staged revision, old revision)."""
        with self.store.session_scope() as session:
            row = migrations_service.get_migration(session, served_name=MODEL)
            stage = migrations_service.stage_of(session, served_name=MODEL)
            if row is None:
                return stage, None, None
            return stage, row.staged_revision_id, row.old_revision_id

    def store_adapter(
        self, *, staged_id: str, mean_cosine: float = 0.95, overlap: float = 0.9, seed: int = 0
    ) -> str:
        """A ridge adapter from the staged revision's space into the live one's, stored as a
        fit stores it, with the evaluation given (the map itself is random: the tests check
        where vectors go, not how well). Its id."""
        live_route = self.router.live(MODEL)
        assert live_route is not None
        live = live_route.revision
        source_dim = self.revision_dimension(staged_id)
        rng = np.random.default_rng(seed)
        weight = rng.standard_normal((source_dim, live.info.dimension)).astype(np.float32)
        parameters = {"weight": weight, "bias": np.zeros(live.info.dimension, np.float32)}
        with self.store.session_scope() as session:
            adapter = migrations_service.store_adapter(
                session,
                served_name=MODEL,
                revision_id=staged_id,
                target_revision_id=live.revision_id,
                kind="ridge",
                parameters=LoadedAdapter("ridge", parameters).to_bytes(),
                evaluation={
                    "kind": "ridge",
                    "pairs": 400,
                    "held_out": 80,
                    "mean_cosine": mean_cosine,
                    "neighbour_overlap_at_10": overlap,
                },
                target_embedding_space=live.embedding_space(),
                target_normalize=live.info.normalize,
            )
            return adapter.id

    def revision_dimension(self, revision_id: str) -> int:
        return inspect_model(Path(self.revision(revision_id).model_path)).dimension

    def context(self, task_id: str) -> StepContext:
        """What a step of this task gets, as the runner builds it (for a step run alone)."""
        task = self.task(task_id)
        return StepContext(
            store=self.store,
            signals=self.runner.signals,
            settings=self.runner.settings,
            task_id=task_id,
            served_name=task.embedding_model_id,
            metadata=TaskMetadata.of(task.task_metadata),
        )

    def task(self, task_id: str) -> Task:
        with self.store.session_scope() as session:
            task = session.get(Task, task_id)
            assert task is not None
            return task

    def live_revision(self) -> str | None:
        with self.store.session_scope() as session:
            live = session.get(LiveRevision, MODEL)
            return live.revision_id if live else None

    def revision(self, revision_id: str) -> Revision:
        with self.store.session_scope() as session:
            revision = session.get(Revision, revision_id)
            assert revision is not None
            return revision

    def deployments(self) -> list[Deployment]:
        with self.store.session_scope() as session:
            return list(
                session.scalars(select(Deployment).order_by(Deployment.entity_version)).all()
            )

    def point_model_at(self, path: Path, **config: Any) -> None:
        """Register or re-point the model (new weights), and add a config version."""
        info = inspect_model(path)
        with self.store.session_scope() as session:
            model = session.get(EmbeddingModel, MODEL) or EmbeddingModel(id=MODEL)
            model.source = model.path = str(path)
            model.content_hash = content_hash(path)
            model.dimension, model.max_seq_length = info.dimension, info.max_seq_length
            model.pooling, model.normalize = info.pooling, info.normalize
            session.add(model)
            versions = session.scalars(
                select(DeploymentConfig.entity_version).where(DeploymentConfig.name == MODEL)
            ).all()
            if config or not versions:
                session.add(
                    DeploymentConfig(
                        workspace="default",
                        name=MODEL,
                        entity_version=max(versions, default=0) + 1,
                        model_name=MODEL,
                        executor_config={"threads": 1, **config},
                    )
                )


@contextlib.asynccontextmanager
async def control_plane(
    store: Store, onnx_cache_dir: Path, tmp_path: Path, *, auto_restart: bool = True
) -> AsyncIterator[ControlPlane]:
    settings = Settings(data_dir=tmp_path, drain_grace_s=5, rollout_ready_timeout_s=60)
    signals = Signals()
    runtime = FakeRuntime(real_engines(onnx_cache_dir), auto_restart=auto_restart)
    metrics = Metrics()
    router = Router(runtime, metrics, settings)
    loops = [
        asyncio.create_task(
            Reconciler(store, runtime, signals, target="local", lost_after_s=0.3).run()
        ),
        asyncio.create_task(RouterSync(store, router, signals).run()),
    ]
    try:
        yield ControlPlane(store, runtime, router, TaskRunner(store, signals, settings, metrics))
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await router.close()
        await runtime.close()


def steps_by_name(task: Task) -> dict[str, str]:
    return {step["name"]: step["status"] for step in task.task_metadata.get("steps", [])}


async def embed(plane: ControlPlane, text: str = "hello world") -> np.ndarray:
    """The vector of `text`, once the router serves the model (it follows the store)."""
    vectors: list[np.ndarray] = []

    async def served() -> bool:
        with contextlib.suppress(ModelNotFoundError):
            vectors.append((await plane.router.embed(MODEL, [text])).vectors[0])
            return True
        return False

    await wait_until(served, what="the model to be served")
    return vectors[-1]
