"""The registry's work that involves other domains, through their services.

Registering a model also writes its default deployment config `default/<model id>`; new weights
give the model's configs a new version; a model is deleted only when no live revision runs it and
no task of it is unfinished, and its configs go with it. Stored weights stay while a model or any
revision names them (`collect_unreferenced`).

Plain functions, keyword-only arguments led by `db_session`; they never commit. Registration and
re-pointing block for the load check (`registry_service.check_source`): call them from a thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.orm import Session

from greenroom.deployments import configs as deployments_configs
from greenroom.errors import ConflictError
from greenroom.registry import service as registry_service
from greenroom.registry import store as model_store
from greenroom.registry.models import EmbeddingModel
from greenroom.registry.schemas import EmbeddingModelCreate, EmbeddingModelUpdate
from greenroom.store.db import Store
from greenroom.tasks import service as tasks_service
from greenroom.workloads import service as workloads_service

log = logging.getLogger("greenroom.registry")


# ----- what other domains say about a model ------------------------------------------------------


def is_deployed(db_session: Session, *, embedding_model_id: str) -> bool:
    """Whether a live revision of any served name runs this model."""
    return any(
        revision.embedding_model_id == embedding_model_id
        for _live, revision in workloads_service.live_pointers(db_session)
    )


def has_unfinished_task(db_session: Session, *, embedding_model_id: str) -> bool:
    """Whether a task of this model (served name in workspace `default`) is pending or running."""
    return bool(tasks_service.unfinished(db_session, served_name=embedding_model_id))


# ----- registering, re-pointing, deleting --------------------------------------------------------


def register(
    db_session: Session, *, model_in: EmbeddingModelCreate, options: registry_service.CheckOptions
) -> EmbeddingModel:
    """Check the source (blocks up to `options.timeout_s`), then record the model and its
    config."""
    registry_service.refuse_registering_twice(db_session, embedding_model_id=model_in.id)
    checked = registry_service.check_source(source=model_in.source, options=options)
    model_store.unpin_when_done(db_session, checked.pin)
    return create(db_session, model_in=model_in, checked=checked)


def create(
    db_session: Session, *, model_in: EmbeddingModelCreate, checked: registry_service.CheckedModel
) -> EmbeddingModel:
    """Record a checked model and its default config `default/<model id>` (version 1, the
    ExecutorConfig defaults, `threads` left to the machine that runs it)."""
    model = registry_service.create(db_session, model_in=model_in, checked=checked)
    deployments_configs.create_config(
        db_session,
        workspace=deployments_configs.DEFAULT_WORKSPACE,
        name=model.id,
        model_name=model.id,
        model=model,
    )
    return model


def update_source(
    db_session: Session,
    *,
    embedding_model_id: str,
    model_in: EmbeddingModelUpdate,
    options: registry_service.CheckOptions,
) -> EmbeddingModel:
    """Check the new source (blocks up to `options.timeout_s`), then point the model at it.
    The stored copy of the old source stays while a revision names it (collect_unreferenced)."""
    registry_service.get_or_raise(db_session, embedding_model_id=embedding_model_id)
    checked = registry_service.check_source(source=model_in.source, options=options)
    model_store.unpin_when_done(db_session, checked.pin)
    return update(
        db_session, embedding_model_id=embedding_model_id, model_in=model_in, checked=checked
    )


def update(
    db_session: Session,
    *,
    embedding_model_id: str,
    model_in: EmbeddingModelUpdate,
    checked: registry_service.CheckedModel,
) -> EmbeddingModel:
    """New weights for the same id. Configs of the model get a new version naming the new
    content hash, so the next deploy rolls the weights out; what runs now is untouched."""
    model = registry_service.update(
        db_session, embedding_model_id=embedding_model_id, model_in=model_in, checked=checked
    )
    deployments_configs.refresh_model_revision(
        db_session, model_name=model.id, content_hash=checked.content_hash
    )
    return model


def delete(db_session: Session, *, embedding_model_id: str) -> None:
    """Delete a model and its configs; refused (409) while it is deployed or a task of it runs."""
    registry_service.get_or_raise(db_session, embedding_model_id=embedding_model_id)
    if is_deployed(db_session, embedding_model_id=embedding_model_id):
        raise ConflictError(
            f"Embedding model '{embedding_model_id}' is deployed; delete its deployment first"
        )
    if has_unfinished_task(db_session, embedding_model_id=embedding_model_id):
        raise ConflictError(
            f"Embedding model '{embedding_model_id}' has a task in progress; "
            "wait for it to end or cancel it"
        )
    deployments_configs.delete_configs_of_model(db_session, model_name=embedding_model_id)
    registry_service.delete(db_session, embedding_model_id=embedding_model_id)


# ----- collecting the stored weights that nothing references ------------------------------------


def referenced_hashes(db_session: Session) -> set[str]:
    """Every content hash a model or revision names (by its hash, and by its path's last part)."""
    return model_store.hash_names(
        registry_service.stored_references(db_session)
        | workloads_service.referenced_content_hashes(db_session)
        | workloads_service.referenced_model_paths(db_session)
    )


def collect_unreferenced(store: Store, data_dir: Path) -> list[str]:
    """Remove the stored models that no model row or revision row names, and leftovers of
    registrations and collections that died; the hashes removed."""

    def referenced() -> set[str]:
        with store.session_scope() as session:
            return referenced_hashes(session)

    return model_store.remove_unreferenced(data_dir, referenced=referenced)


def collect_after_commit(db_session: Session, store: Store, data_dir: Path) -> None:
    """Collect once the session commits (a delete or re-point is then visible to the query)."""
    event.listen(db_session, "after_commit", lambda _: collect_quietly(store, data_dir), once=True)


def collect_quietly(store: Store, data_dir: Path) -> None:
    """`collect_unreferenced`, logging instead of raising: a failed collection is retried by the
    next one and must not fail what triggered it."""
    try:
        collect_unreferenced(store, data_dir)
    except Exception:
        log.exception("collecting the model store in %s failed", model_store.store_dir(data_dir))
