"""Rollback: a deploy task that brings back an earlier revision's snapshot as a new revision.

The target is the named revision, else the one the live revision replaced. A target whose weights
are not on disk as they were (their content hash no longer matches) cannot succeed: the task is
stored `refused` with the reason, and no worker ever runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from greenroom.deployments.schemas import TEXT_PATTERN
from greenroom.deployments.service import ConfigPolicy
from greenroom.errors import ModelSourceError, NotFoundError
from greenroom.registry.weights import content_hash
from greenroom.tasks import service as tasks_service
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import ServedName, TaskKind
from greenroom.tasks.states import TaskStatus, transition
from greenroom.workloads.models import LiveRevision, Revision


class RollbackRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    embedding_model_id: ServedName
    revision_id: str | None = Field(default=None, min_length=1, max_length=36, pattern=TEXT_PATTERN)
    allow_embedding_space_change: bool = Field(
        default=False, description="the earlier revision's vectors may differ from the live ones"
    )


def create_rollback_task(
    db_session: Session,
    *,
    request: RollbackRequest,
    policy: ConfigPolicy,
    initiated_by: str = "admin",
    deployment_target: str = "local",
) -> Task:
    """The rollback's deploy task, stored `refused` when its target cannot come back: weights
    changed, or settings this server no longer allows (`policy`: its runtime, its variables)."""
    name = tasks_service.canonical(request.embedding_model_id)
    target = _target(db_session, name=name, revision_id=request.revision_id)
    metadata: dict[str, Any] = {
        "deployment_target": deployment_target,
        "initiated_by": initiated_by,
        "workspace": name.rpartition("/")[0] or "default",
        "rollback_of": target.id,
        "allow_embedding_space_change": request.allow_embedding_space_change,
    }
    body = {"embedding_model_id": name, "rollback_of": target.id}
    task = tasks_service.new_task(
        db_session, kind=TaskKind.DEPLOY, name=name, body=body, metadata=metadata
    )
    if reason := weights_changed(target) or policy.problem(
        {**target.config, "runtime": target.runtime}
    ):
        transition(task, TaskStatus.REFUSED, reason=reason)
    return task


def _target(db_session: Session, *, name: str, revision_id: str | None) -> Revision:
    if revision_id is not None:
        revision = db_session.get(Revision, revision_id)
        if revision is None or revision.served_name != name:
            raise NotFoundError(f"Revision `{revision_id}` of `{name}` is not found")
        return revision
    live = db_session.get(LiveRevision, name)
    if live is None:
        raise NotFoundError(f"Embedding model `{name}` has no live revision to roll back from")
    previous_id = live.previous_revision_id or db_session.scalar(
        select(Revision.id)
        .where(Revision.served_name == name, Revision.id != live.revision_id)
        .where(Revision.phase == "Stopped")
        .order_by(Revision.created_at.desc())
        .limit(1)
    )
    previous = db_session.get(Revision, previous_id) if previous_id else None
    if previous is None:
        raise NotFoundError(f"Embedding model `{name}` has no earlier revision to roll back to")
    return previous


def weights_changed(revision: Revision) -> str | None:
    """Why the revision's weights cannot be brought back, or None when they are intact."""
    path = Path(revision.model_path)
    try:
        if path.is_dir() and content_hash(path) == revision.content_hash:
            return None
    except (OSError, ModelSourceError):
        pass
    return (
        f"The weights of revision {revision.id} are no longer on disk as they were (content "
        f"hash of {path} does not match {revision.content_hash[:12]}); register and deploy "
        "them again instead."
    )
