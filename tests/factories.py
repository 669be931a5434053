"""Test doubles and builders shared by the test suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from greenroom.registry.weights import ModelInfo
from greenroom.runtime.engines import Engine, EngineOptions

HASH_ENGINE_DIMENSION = 8


class HashEngine(Engine):
    """A model-free engine: deterministic vectors computed from the token ids alone.

    Each token contributes `cos(id · (j + 1))` to component j, so vectors depend on the ids (and
    their count) but never on padding. A negative token id raises, to exercise error replies.
    """

    def __init__(self, dimension: int = HASH_ENGINE_DIMENSION, *, normalize: bool = True) -> None:
        self.options = EngineOptions(
            model_path=Path("/nonexistent/hash-engine"), content_hash="0", engine="hash"
        )
        self.info = ModelInfo(
            path=self.options.model_path,
            dimension=dimension,
            max_seq_length=128,
            pooling="mean",
            normalize=normalize,
            vocab_size=1000,
            pad_token_id=0,
        )

    def _pool(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if (input_ids < 0).any():
            raise ValueError("negative token id")
        frequencies = np.arange(1, self.info.dimension + 1, dtype=np.float64)
        per_token = np.cos(input_ids[..., None] * frequencies)  # batch × width × dim
        return (per_token * attention_mask[..., None]).sum(axis=1).astype(np.float32)

    def expected(self, ids: list[int]) -> np.ndarray:
        """The vector of one sequence, computed without the padding path."""
        flat = np.asarray(ids, dtype=np.int64)
        return self.embed(np.array([len(flat)], dtype=np.int64), flat)[0]


# ----- the control plane: rows built through the services, no model loading ---------------------

import uuid  # noqa: E402

from sqlalchemy.orm import Session  # noqa: E402

from greenroom.deployments.models import Deployment  # noqa: E402
from greenroom.registry import flows as registry_flows  # noqa: E402
from greenroom.registry import service as registry_service  # noqa: E402
from greenroom.registry.models import EmbeddingModel  # noqa: E402
from greenroom.registry.schemas import EmbeddingModelCreate  # noqa: E402
from greenroom.workloads.models import LiveRevision, Revision  # noqa: E402

FAKE_CONTENT_HASH = "ab" * 32


def checked_model(**overrides: object) -> registry_service.CheckedModel:
    """What a load check of a 32-dimensional model would report; no files behind it."""
    values: dict[str, object] = {
        "path": Path("/models/fake"),
        "content_hash": FAKE_CONTENT_HASH,
        "dimension": 32,
        "max_seq_length": 64,
        "pooling": "mean",
        "normalize": True,
    }
    values.update(overrides)
    return registry_service.CheckedModel(**values)  # type: ignore[arg-type]


def add_embedding_model(
    db_session: Session,
    model_id: str = "tiny",
    *,
    source: str = "/models/fake",
    description: str | None = None,
    **checked: object,
) -> EmbeddingModel:
    """A registered model and its default config, as if its load check had passed."""
    return registry_flows.create(
        db_session,
        model_in=EmbeddingModelCreate(id=model_id, source=source, description=description),
        checked=checked_model(**checked),
    )


def add_deployment(
    db_session: Session, *, workspace: str, name: str, config: str, status: str = "READY"
) -> Deployment:
    deployment = Deployment(
        workspace=workspace,
        name=name,
        entity_version=1,
        config=config,
        config_version=1,
        status=status,  # a row stored in this status, as a test's starting point
    )
    db_session.add(deployment)
    db_session.flush()
    return deployment


def add_live_revision(
    db_session: Session, *, embedding_model_id: str, served_name: str | None = None
) -> Revision:
    """A running revision of the model, live for its served name (the model id by default)."""
    name = served_name or embedding_model_id
    revision = Revision(
        id=str(uuid.uuid4()),
        deployment_id=str(uuid.uuid4()),
        served_name=name,
        embedding_model_id=embedding_model_id,
        source="/models/fake",
        model_path="/models/fake",
        content_hash=FAKE_CONTENT_HASH,
        engine="onnx",
        phase="Running",
    )
    db_session.add(revision)
    db_session.add(
        LiveRevision(
            served_name=name, revision_id=revision.id, deployment_id=revision.deployment_id
        )
    )
    db_session.flush()
    return revision


# ----- API apps for view tests: chosen routers, the app's error shapes, no lifespan --------------

from fastapi import APIRouter, Depends, FastAPI  # noqa: E402

from greenroom.app import install_error_handlers  # noqa: E402
from greenroom.auth.deps import authorize  # noqa: E402
from greenroom.auth.scopes import Scope, effective_scopes  # noqa: E402
from greenroom.auth.service import Authenticator, Principal  # noqa: E402
from greenroom.config import Settings  # noqa: E402
from greenroom.signals import Topic  # noqa: E402
from greenroom.store.db import Store  # noqa: E402


class RecordingSignals:
    """Stands in for `greenroom.signals.Signals`: records what was notified."""

    def __init__(self) -> None:
        self.notified: list[Topic] = []

    def notify(self, *topics: Topic) -> None:
        self.notified.extend(topics)


# Who view tests act for: the bootstrap admin token's principal.
ADMIN_PRINCIPAL = Principal(
    id="00000000-0000-4000-8000-000000000001",
    name="admin",
    scopes=effective_scopes([Scope.ADMIN]),
)


def api_app(
    store: Store,
    settings: Settings,
    *routers: APIRouter,
    signals: object = None,
    principal: Principal | None = ADMIN_PRINCIPAL,
) -> FastAPI:
    """Requests act for `principal` without a token; with `principal=None` they authenticate
    as in `create_app` (a bearer token from the store with the scope its route needs)."""
    app = FastAPI(dependencies=[Depends(authorize)])
    if principal is not None:
        app.dependency_overrides[authorize] = lambda: principal
    app.state.authenticator = Authenticator(store)
    for router in routers:
        app.include_router(router)
    install_error_handlers(app)
    app.state.store = store
    app.state.settings = settings
    if signals is not None:
        app.state.signals = signals
    return app
