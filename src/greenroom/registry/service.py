"""The model registry: register, read, re-point and delete embedding models.

Plain functions, keyword-only arguments led by `db_session`; they never commit. Registration
resolves the source, reads what the model produces, hashes its weights and proves that it loads
and embeds in a child process with a bounded time (`greenroom.registry.check`), which also leaves
its ONNX export in the cache for the first deploy. `check_source` and the functions calling it
block for that long: call them from a thread (sync views do).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from greenroom.deployments import service as deployments_service
from greenroom.deployments.service import DEFAULT_WORKSPACE
from greenroom.errors import ConflictError, ModelSourceError, NotFoundError
from greenroom.registry.models import EmbeddingModel
from greenroom.registry.schemas import EmbeddingModelCreate, EmbeddingModelUpdate
from greenroom.registry.weights import content_hash, inspect_model, resolve_source
from greenroom.serving.models import LiveRevision
from greenroom.tasks.models import Task
from greenroom.tasks.states import TERMINAL_TASK_STATUSES
from greenroom.workloads.models import Revision


@dataclass(frozen=True)
class CheckedModel:
    """A model source that resolved, loaded and embedded: what registration records."""

    path: Path
    content_hash: str
    dimension: int
    max_seq_length: int
    pooling: str
    normalize: bool


# ----- reading -----------------------------------------------------------------------------------


def get(db_session: Session, *, embedding_model_id: str) -> EmbeddingModel | None:
    return db_session.get(EmbeddingModel, embedding_model_id)


def get_or_raise(db_session: Session, *, embedding_model_id: str) -> EmbeddingModel:
    model = get(db_session, embedding_model_id=embedding_model_id)
    if model is None:
        raise NotFoundError(f"Embedding model '{embedding_model_id}' not found")
    return model


def get_all(db_session: Session) -> list[EmbeddingModel]:
    return list(db_session.scalars(select(EmbeddingModel).order_by(EmbeddingModel.id)))


def is_deployed(db_session: Session, *, embedding_model_id: str) -> bool:
    """Whether a live revision of any served name runs this model."""
    live = db_session.scalars(
        select(LiveRevision.served_name)
        .join(Revision, Revision.id == LiveRevision.revision_id)
        .where(Revision.embedding_model_id == embedding_model_id)
        .limit(1)
    ).first()
    return live is not None


def has_unfinished_task(db_session: Session, *, embedding_model_id: str) -> bool:
    """Whether a task of this model (served name in workspace `default`) is pending or running."""
    task = db_session.scalars(
        select(Task.id)
        .where(
            Task.embedding_model_id == embedding_model_id,
            Task.status.not_in([status.value for status in TERMINAL_TASK_STATUSES]),
        )
        .limit(1)
    ).first()
    return task is not None


# ----- the load check ----------------------------------------------------------------------------


def check_source(*, source: str, cache_dir: Path, timeout_s: float) -> CheckedModel:
    """Resolve, inspect, hash and load-check a model source; ModelSourceError (400) says why not."""
    path = resolve_source(source)
    info = inspect_model(path)
    digest = content_hash(path)
    report = run_load_check(
        source=source, path=path, digest=digest, cache_dir=cache_dir, timeout_s=timeout_s
    )
    if report["dimension"] != info.dimension:
        raise ModelSourceError(
            f"Model source '{source}' produces {report['dimension']}-dimensional vectors "
            f"but its configuration says {info.dimension}."
        )
    return CheckedModel(
        path=path,
        content_hash=digest,
        dimension=info.dimension,
        max_seq_length=info.max_seq_length,
        pooling=info.pooling,
        normalize=info.normalize,
    )


def run_load_check(
    *, source: str, path: Path, digest: str, cache_dir: Path, timeout_s: float
) -> dict:
    """Run `greenroom.registry.check` in a child process (its own process group, so the ONNX
    export it may start dies with it on timeout); its JSON report."""
    command = [
        sys.executable,
        "-m",
        "greenroom.registry.check",
        "--model-path",
        str(path),
        "--content-hash",
        digest,
        "--cache-dir",
        str(cache_dir),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise ModelSourceError(
            f"Model source '{source}' did not load within {timeout_s:g} seconds."
        ) from None
    if process.returncode != 0:
        reason = (stderr.strip().splitlines() or ["the load check exited without a reason"])[-1]
        raise ModelSourceError(f"Model source '{source}' does not load: {reason}")
    return json.loads(stdout.strip().splitlines()[-1])


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


# ----- writing -----------------------------------------------------------------------------------


def register(
    db_session: Session, *, model_in: EmbeddingModelCreate, cache_dir: Path, timeout_s: float
) -> EmbeddingModel:
    """Check the source (blocks up to `timeout_s`), then record the model and its config."""
    if get(db_session, embedding_model_id=model_in.id) is not None:
        raise _exists(model_in.id)
    checked = check_source(source=model_in.source, cache_dir=cache_dir, timeout_s=timeout_s)
    return create(db_session, model_in=model_in, checked=checked)


def create(
    db_session: Session, *, model_in: EmbeddingModelCreate, checked: CheckedModel
) -> EmbeddingModel:
    """Record a checked model and its default config `default/<model id>` (version 1, the
    ExecutorConfig defaults, `threads` left to the machine that runs it)."""
    model = EmbeddingModel(
        id=model_in.id,
        source=model_in.source,
        description=model_in.description,
        allow_dimensions=model_in.allow_dimensions,
    )
    _record_check(model, checked)
    db_session.add(model)
    try:
        db_session.flush()
    except IntegrityError as exc:  # registered concurrently
        raise _exists(model_in.id) from exc
    deployments_service.create_config(
        db_session, workspace=DEFAULT_WORKSPACE, name=model.id, model_name=model.id
    )
    return model


def update_source(
    db_session: Session,
    *,
    embedding_model_id: str,
    model_in: EmbeddingModelUpdate,
    cache_dir: Path,
    timeout_s: float,
) -> EmbeddingModel:
    """Check the new source (blocks up to `timeout_s`), then point the model at it."""
    get_or_raise(db_session, embedding_model_id=embedding_model_id)
    checked = check_source(source=model_in.source, cache_dir=cache_dir, timeout_s=timeout_s)
    return update(
        db_session, embedding_model_id=embedding_model_id, model_in=model_in, checked=checked
    )


def update(
    db_session: Session,
    *,
    embedding_model_id: str,
    model_in: EmbeddingModelUpdate,
    checked: CheckedModel,
) -> EmbeddingModel:
    """New weights for the same id. Configs of the model get a new version naming the new
    content hash, so the next deploy rolls the weights out; what runs now is untouched."""
    model = get_or_raise(db_session, embedding_model_id=embedding_model_id)
    model.source = model_in.source
    if "description" in model_in.model_fields_set:
        model.description = model_in.description
    if model_in.allow_dimensions is not None:
        model.allow_dimensions = model_in.allow_dimensions
    _record_check(model, checked)
    db_session.flush()
    deployments_service.refresh_model_revision(
        db_session, model_name=model.id, content_hash=checked.content_hash
    )
    return model


def delete(db_session: Session, *, embedding_model_id: str) -> None:
    """Delete a model and its configs; refused (409) while it is deployed or a task of it runs."""
    model = get_or_raise(db_session, embedding_model_id=embedding_model_id)
    if is_deployed(db_session, embedding_model_id=embedding_model_id):
        raise ConflictError(
            f"Embedding model '{embedding_model_id}' is deployed; delete its deployment first"
        )
    if has_unfinished_task(db_session, embedding_model_id=embedding_model_id):
        raise ConflictError(
            f"Embedding model '{embedding_model_id}' has a task in progress; "
            "wait for it to end or cancel it"
        )
    deployments_service.delete_configs_of_model(db_session, model_name=embedding_model_id)
    db_session.delete(model)
    db_session.flush()


def _record_check(model: EmbeddingModel, checked: CheckedModel) -> None:
    model.path = str(checked.path)
    model.content_hash = checked.content_hash
    model.dimension = checked.dimension
    model.max_seq_length = checked.max_seq_length
    model.pooling = checked.pooling
    model.normalize = checked.normalize


def _exists(embedding_model_id: str) -> ConflictError:
    return ConflictError(f"Embedding model '{embedding_model_id}' already exists")
