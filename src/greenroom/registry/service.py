"""The model registry: register, read, re-point and delete embedding models.

Plain functions, keyword-only arguments led by `db_session`; they never commit. Registration
resolves the source (a package is found, never imported) and lists its directory (refusing links
out of it and what exceeds the bounds, before reading anything); then a child process with a
bounded time (`greenroom.registry.check`) copies it into the content-addressed model store while
hashing it, proves that the copy loads and embeds (leaving its ONNX export in the cache for the
first deploy) and stores it as `<data dir>/models/<content hash>`: the path the model records, so
what is served is what was hashed. Whatever makes a source unusable, the client reads one neutral
sentence (`UNUSABLE_SOURCE`) and the server log the reason. `check_source` and the functions
calling it block for that long: call them from a thread (sync views do).

This module touches the registry's own rows only. What also involves other domains (a model's
default deployment config, refusing to delete a deployed model, the revisions that keep stored
weights) is in `greenroom.registry.flows`, which registration, re-pointing and deletion go
through.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from greenroom.config import Settings
from greenroom.errors import (
    ConflictError,
    ModelSourceError,
    NotFoundError,
    ServiceUnavailableError,
)
from greenroom.registry.models import EmbeddingModel
from greenroom.registry.schemas import EmbeddingModelCreate, EmbeddingModelUpdate
from greenroom.registry.store import (
    INCOMING_PREFIX,
    ensure_store,
    list_model_files,
    pin_path,
    store_dir,
    unpin,
)
from greenroom.registry.weights import (
    EXIT_NOT_STORED,
    EXIT_REFUSED,
    EXIT_UNUSABLE,
    UnusableSourceError,
    inspect_model,
    resolve_source,
)

log = logging.getLogger("greenroom.registry")
DOES_NOT_LOAD = (
    "The model does not load and embed with the ONNX engine (the server log has the reason); "
    "check that sentence-transformers loads it, then register it again."
)
NOT_STORED = (
    "The model could not be copied into the server's model store (the server log has the "
    "reason); try again later."
)


@dataclass(frozen=True)
class CheckOptions:
    """Where a registration stores and checks a model, and its bounds."""

    store_dir: Path  # the content-addressed model store, `<data dir>/models`
    cache_dir: Path  # ONNX exports, `<data dir>/onnx`
    timeout_s: float
    max_bytes: int
    max_files: int

    @classmethod
    def of(cls, settings: Settings) -> CheckOptions:
        return cls(
            store_dir=store_dir(settings.resolved_data_dir()),
            cache_dir=settings.resolved_onnx_cache_dir(),
            timeout_s=settings.registration_timeout_s,
            max_bytes=settings.max_model_bytes,
            max_files=settings.max_model_files,
        )


@dataclass(frozen=True)
class LoadReport:
    """What the child process stored and what the stored model produced."""

    path: Path
    content_hash: str
    dimension: int
    pin: Path | None


@dataclass(frozen=True)
class CheckedModel:
    """A model source that resolved, loaded and embedded: what registration records. `path` is
    its copy in the model store; `pin` keeps that copy from collection until it is recorded."""

    path: Path
    content_hash: str
    dimension: int
    max_seq_length: int
    pooling: str
    normalize: bool
    pin: Path | None = None


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


def stored_references(db_session: Session) -> set[str]:
    """The content hash and stored path of every registered model (its weights stay stored)."""
    rows = db_session.execute(select(EmbeddingModel.content_hash, EmbeddingModel.path)).all()
    return {value for row in rows for value in row if value}


# ----- the load check ----------------------------------------------------------------------------


def check_source(*, source: str, options: CheckOptions) -> CheckedModel:
    """Resolve, list, store and load-check a model source; ModelSourceError (400) says why not."""
    try:
        path = resolve_source(source)
        list_model_files(path, max_bytes=options.max_bytes, max_files=options.max_files)
    except UnusableSourceError as exc:
        raise _unusable(source, exc) from None
    report = run_load_check(source=source, path=path, options=options)
    try:
        info = inspect_model(report.path)
        if report.dimension != info.dimension:
            raise ModelSourceError(
                f"The model produces {report.dimension}-dimensional vectors but its "
                f"configuration says {info.dimension}."
            )
    except ModelSourceError:
        unpin(report.pin)
        raise
    return CheckedModel(
        path=report.path,
        content_hash=report.content_hash,
        dimension=info.dimension,
        max_seq_length=info.max_seq_length,
        pooling=info.pooling,
        normalize=info.normalize,
        pin=report.pin,
    )


def run_load_check(*, source: str, path: Path, options: CheckOptions) -> LoadReport:
    """Run `greenroom.registry.check` in a child process (its own process group, so the ONNX
    export it may start dies with it on timeout) on an `.incoming-` folder of the store."""
    ensure_store(options.store_dir)
    incoming = Path(tempfile.mkdtemp(prefix=INCOMING_PREFIX, dir=options.store_dir))
    try:
        returncode, stdout, stderr = _run_child(path, incoming, options)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)  # stored (renamed) or left by a failure
    reason = (stderr.strip().splitlines() or ["the load check exited without a reason"])[-1]
    if returncode == EXIT_UNUSABLE:
        raise _unusable(source, UnusableSourceError(reason))
    if returncode == EXIT_REFUSED:
        raise ModelSourceError(reason)
    if returncode != 0:
        log.warning("model source %.300r: the load check failed: %s", source, reason)
        if returncode == EXIT_NOT_STORED:
            raise ServiceUnavailableError(NOT_STORED)
        raise ModelSourceError(DOES_NOT_LOAD)
    return _parse_report(stdout, options.store_dir, incoming.name)


def _run_child(path: Path, incoming: Path, options: CheckOptions) -> tuple[int, str, str]:
    command = [
        sys.executable,
        "-m",
        "greenroom.registry.check",
        "--source",
        str(path),
        "--incoming",
        str(incoming),
        "--store",
        str(options.store_dir),
        "--cache-dir",
        str(options.cache_dir),
        "--max-bytes",
        str(options.max_bytes),
        "--max-files",
        str(options.max_files),
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=options.timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise ModelSourceError(
            f"The model did not load within {options.timeout_s:g} seconds; register a smaller "
            "model or ask the operator to raise GREENROOM_REGISTRATION_TIMEOUT_S."
        ) from None
    return process.returncode, stdout, stderr


def _parse_report(stdout: str, root: Path, incoming_name: str) -> LoadReport:
    try:
        report = json.loads(stdout.strip().splitlines()[-1])
        digest = str(report["content_hash"])
        path = Path(report["path"])
        dimension = int(report["dimension"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        log.error("the load check printed no report: %s (%.300r)", exc, stdout)
        raise ServiceUnavailableError(NOT_STORED) from None
    if path != root / digest:
        log.error("the load check stored %s, not %s", path, root / digest)
        raise ServiceUnavailableError(NOT_STORED)
    return LoadReport(
        path=path,
        content_hash=digest,
        dimension=dimension,
        pin=pin_path(root, digest, incoming_name),
    )


def _unusable(source: str, error: UnusableSourceError) -> UnusableSourceError:
    log.warning(
        "model source %.300r is not a usable model directory: %.1000s", source, error.reason
    )
    return error


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


# ----- writing (the registry's rows only: greenroom.registry.flows adds the rest) --------------


def refuse_registering_twice(db_session: Session, *, embedding_model_id: str) -> None:
    """409 when a model of this id is registered already."""
    if get(db_session, embedding_model_id=embedding_model_id) is not None:
        raise _exists(embedding_model_id)


def create(
    db_session: Session, *, model_in: EmbeddingModelCreate, checked: CheckedModel
) -> EmbeddingModel:
    """Record a checked model (409 when its id is taken, also concurrently)."""
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
    return model


def update(
    db_session: Session,
    *,
    embedding_model_id: str,
    model_in: EmbeddingModelUpdate,
    checked: CheckedModel,
) -> EmbeddingModel:
    """Record new weights (and the fields given) for the same id."""
    model = get_or_raise(db_session, embedding_model_id=embedding_model_id)
    model.source = model_in.source
    if "description" in model_in.model_fields_set:
        model.description = model_in.description
    if model_in.allow_dimensions is not None:
        model.allow_dimensions = model_in.allow_dimensions
    _record_check(model, checked)
    db_session.flush()
    return model


def delete(db_session: Session, *, embedding_model_id: str) -> None:
    """Delete the model's row (404 when there is none)."""
    model = get_or_raise(db_session, embedding_model_id=embedding_model_id)
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
