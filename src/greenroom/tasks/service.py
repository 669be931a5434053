"""Deploy, delete, promote, finish and abort tasks: store (idempotent on a client id), read, find
the latest, cancel, and keep their metadata. The tasks domain's own rows only: what a task needs
from other domains (its config, its rollback target, a migration's stage) is resolved in
`greenroom.tasks.flows`.

Plain functions, keyword-only arguments led by `db_session`; they flush and never commit. A
client-chosen `id` is the task's id verbatim, and the primary key makes a retried request
harmless even when two copies race: the loser re-reads the winner's task and compares bodies.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import false, func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from greenroom.errors import ConflictError, GreenroomError, NotFoundError
from greenroom.schemas import Strategy, served_name, split_served_name
from greenroom.store.db import utcnow
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import ConfigVersion, TaskKind, TaskMetadata
from greenroom.tasks.states import TERMINAL_TASK_STATUSES, TaskStatus, transition

DEFAULT_WORKSPACE = "default"
# A racing insert of the same id is answered from the winner; another constraint (a config
# version written concurrently) is retried this many times in all.
STORE_ATTEMPTS = 3
NOT_FOUND = {
    TaskKind.DEPLOY: "Deployment task with ID `{}` is not found",
    TaskKind.DELETE: "Deletion task with ID `{}` is not found",
    TaskKind.PROMOTE: "Promotion task with ID `{}` is not found",
    TaskKind.FINISH: "Finish task with ID `{}` is not found",
    TaskKind.ABORT: "Abort task with ID `{}` is not found",
}
LATEST_NOT_FOUND = {
    TaskKind.DEPLOY: "Deployment task with embedding model ID `{}` is not found",
    TaskKind.DELETE: "Deletion task with embedding model ID `{}` is not found",
    TaskKind.PROMOTE: "Promotion task with embedding model ID `{}` is not found",
    TaskKind.FINISH: "Finish task with embedding model ID `{}` is not found",
    TaskKind.ABORT: "Abort task with embedding model ID `{}` is not found",
}
# The kinds whose tasks change what a served name serves (a delete withdraws it instead).
ROLLOUT_KINDS = frozenset({TaskKind.DEPLOY, TaskKind.PROMOTE, TaskKind.FINISH, TaskKind.ABORT})
# A plain deploy or a rollback of a served name in an embedding migration cannot run: it would
# replace the live revision under the staged one (or the adapter's target space).
IN_MIGRATION = "`{name}` is in a migration ({stage}): promote, finish or abort it first"
STORE_FAILED = {
    TaskKind.DEPLOY: "Failed to create and send model deployment task",
    TaskKind.DELETE: "Failed to create and send model deletion task",
    TaskKind.PROMOTE: "Failed to create and send model promotion task",
    TaskKind.FINISH: "Failed to create and send model finish task",
    TaskKind.ABORT: "Failed to create and send model abort task",
}


class TaskStorageError(GreenroomError):
    """The task could not be stored; the request may be retried."""

    status_code = 500


# ----- reading -----------------------------------------------------------------------------------


def get(db_session: Session, *, task_id: str) -> Task | None:
    """A task of any kind, read fresh from the store."""
    return db_session.get(Task, task_id, populate_existing=True)


def get_or_raise(db_session: Session, *, task_id: str, kind: TaskKind) -> Task:
    """A task of this kind; the kind's 404 otherwise (a deploy task is not a deletion task)."""
    task = get(db_session, task_id=task_id)
    if task is None or task.kind != kind:
        raise NotFoundError(NOT_FOUND[kind].format(task_id))
    return task


def get_latest(db_session: Session, *, embedding_model_id: str, kind: TaskKind) -> Task | None:
    """The latest task of this kind for a served name, by created_at (ties broken by id)."""
    return db_session.scalars(
        select(Task)
        .where(Task.embedding_model_id == canonical(embedding_model_id), Task.kind == kind)
        .order_by(Task.created_at.desc(), Task.id.desc())
        .limit(1)
    ).first()


def list_recent(
    db_session: Session, *, embedding_model_id: str | None = None, limit: int = 20
) -> list[Task]:
    """The newest tasks of every kind, of one served name or of all."""
    query = select(Task).order_by(Task.created_at.desc(), Task.id.desc()).limit(limit)
    if embedding_model_id is not None:
        query = query.where(Task.embedding_model_id == canonical(embedding_model_id))
    return list(db_session.scalars(query).all())


def get_latest_or_raise(db_session: Session, *, embedding_model_id: str, kind: TaskKind) -> Task:
    task = get_latest(db_session, embedding_model_id=embedding_model_id, kind=kind)
    if task is None:
        raise NotFoundError(LATEST_NOT_FOUND[kind].format(embedding_model_id))
    return task


def canonical(embedding_model_id: str) -> str:
    """The served name as stored: `default/x` is `x` (docs/architecture.md, served name)."""
    return served_name(*split_served_name(embedding_model_id))


def unfinished(db_session: Session, *, served_name: str) -> list[Task]:
    """The tasks of a served name that have not ended (pending or processing), oldest first."""
    return list(
        db_session.scalars(
            select(Task)
            .where(
                Task.embedding_model_id == canonical(served_name),
                Task.status.not_in([status.value for status in TERMINAL_TASK_STATUSES]),
            )
            .order_by(Task.created_at, Task.id)
        )
    )


def is_rolling_out(db_session: Session, *, served_name: str) -> bool:
    """Whether a task that changes what the served name serves (a deploy, or a migration's
    promote, finish or abort) is running now (`processing`)."""
    running = db_session.scalar(
        select(func.count())
        .select_from(Task)
        .where(
            Task.embedding_model_id == canonical(served_name),
            Task.kind.in_([kind.value for kind in ROLLOUT_KINDS]),
            Task.status == TaskStatus.PROCESSING,
        )
    )
    return bool(running)


def names_revision(task: Task, revision_id: str) -> bool:
    """Whether the task works on this revision: the deployment version it was queued for, or
    the revision its rollout created (or, for a delete, withdraws)."""
    metadata = TaskMetadata.of(task.task_metadata)
    return revision_id in (metadata.deployment_revision_id, metadata.revision_id)


def migration_refusal(*, served_name: str, stage: str, strategy: str) -> str | None:
    """Why a deploy of `strategy` cannot run while the served name is at `stage` of an
    embedding migration, or None: a plain deploy (or a rollback) needs stage `none`; a staged
    one `none` or `staged` (it replaces the staged revision). Asked when the task is stored and
    again when it runs."""
    if stage == "none" or (strategy == "staged" and stage == "staged"):
        return None
    if strategy == "staged":
        return (
            f"`{served_name}` is in a migration ({stage}): finish or abort it before staging "
            "another revision"
        )
    return IN_MIGRATION.format(name=served_name, stage=stage)


def no_staged_revision(name: str, stage: str) -> str:
    """Why a served name cannot be promoted now, and what to do (409, and the gate's failure)."""
    if stage == "adapted":
        return (
            f"`{name}` has no staged revision: it is promoted already (adapted); finish or "
            "abort the migration"
        )
    return f'`{name}` has no staged revision: deploy it with "strategy": "staged" first'


def not_adapted(name: str, stage: str) -> str:
    """Why a served name cannot be finished now, and what to do."""
    if stage == "staged":
        return (
            f'`{name}` is not adapted (it is staged): promote it with "mode": "adapted" first, '
            "or promote it raw (nothing to finish then)"
        )
    return (
        f"`{name}` is not adapted: there is no adapted promotion to finish (a migration ends "
        'with a raw promotion, or with finish after "mode": "adapted")'
    )


def migration_path(name: str) -> str:
    """The migration API's path of a served name (`default` names the default workspace)."""
    workspace, short_name = split_served_name(name)
    return f"/v1/migrations/{workspace}/{short_name}"


def metadata_of(task: Task) -> TaskMetadata:
    return TaskMetadata.of(task.task_metadata)


def save_metadata(db_session: Session, *, task_id: str, updates: TaskMetadata) -> TaskMetadata:
    """Merge the keys set in `updates` into the task's stored metadata; the merged whole back.
    The worker persists each rollout step through this before and after it runs."""
    task = db_session.get(Task, task_id, populate_existing=True)
    if task is None:
        raise NotFoundError(f"Task `{task_id}` is not found")
    merged = {**(task.task_metadata or {}), **updates.stored()}
    task.task_metadata = merged
    db_session.flush()
    return TaskMetadata.of(merged)


def existing_or_conflict(
    db_session: Session, *, task_id: str | None, kind: TaskKind, body: dict[str, Any]
) -> Task | None:
    """The task a client id already names, when its request was this one; 409 when it was
    another; None when the id is free (or none was given)."""
    if task_id is None or (existing := get(db_session, task_id=task_id)) is None:
        return None
    return _same_request_or_conflict(existing, kind=kind, body=body)


# ----- creating ----------------------------------------------------------------------------------


def queue_deploy(
    db_session: Session,
    *,
    served_name: str,
    config: ConfigVersion,
    deployment_revision_id: str,
    initiated_by: str = "admin",
    deployment_target: str = "local",
    strategy: Strategy = "green",
) -> Task:
    """The deploy task of a deployment version that the deployments API created: the same kind
    of task as a Tasks API deploy, whose rollout snapshots that version
    (`deployment_revision_id`) with its config version. `strategy="staged"` stages it beside
    the live revision (an embedding migration) instead of switching to it."""
    name = canonical(served_name)
    metadata = deploy_metadata(
        config,
        initiated_by=initiated_by,
        deployment_target=deployment_target,
        allow_embedding_space_change=False,
    )
    metadata.deployment_revision_id = deployment_revision_id
    body = {"embedding_model_id": name, "deployment_revision_id": deployment_revision_id}
    if strategy != "green":  # a green deploy's task looks as it always has
        metadata.strategy = strategy
        body["strategy"] = strategy
    return new_task(db_session, kind=TaskKind.DEPLOY, name=name, body=body, metadata=metadata)


def new_task(
    db_session: Session,
    *,
    kind: TaskKind,
    name: str,
    body: dict[str, Any],
    metadata: TaskMetadata,
    task_id: str | None = None,
) -> Task:
    """A pending task of a served name (id `task_id`, else a new one), stored like every task:
    a duplicate `task_id` answers with the task that won (same body) or a conflict."""

    def build() -> Task:
        return _new_task(
            db_session, kind=kind, task_id=task_id, name=name, body=body, metadata=metadata
        )

    return _store(db_session, build, kind=kind, task_id=task_id, body=body)


def queue_delete(
    db_session: Session,
    *,
    served_name: str,
    reason: str,
    initiated_by: str = "admin",
    deployment_revision_id: str | None = None,
) -> Task:
    """The delete task of a served name that the deployments API asked for (the version it
    targeted, when it targeted one, in `deployment_revision_id`)."""
    name = canonical(served_name)
    body = {"embedding_model_id": name, "reason": reason}
    metadata = delete_metadata(reason=reason, initiated_by=initiated_by)
    if deployment_revision_id is not None:
        metadata.deployment_revision_id = deployment_revision_id
    return new_task(db_session, kind=TaskKind.DELETE, name=name, body=body, metadata=metadata)


def delete_metadata(*, reason: str | None, initiated_by: str) -> TaskMetadata:
    return TaskMetadata(deletion_type="manual", reason=reason, initiated_by=initiated_by)


def deploy_metadata(
    config: ConfigVersion,
    *,
    initiated_by: str,
    deployment_target: str,
    allow_embedding_space_change: bool,
) -> TaskMetadata:
    """A deploy task's metadata: the config version it deploys, and where (the config's runtime,
    else the server's)."""
    return TaskMetadata(
        deployment_target=config.executor_config.get("runtime") or deployment_target,
        initiated_by=initiated_by,
        workspace=config.workspace,
        config=config.name,
        config_version=config.entity_version,
        allow_embedding_space_change=allow_embedding_space_change,
    )


def new_task_id(kind: TaskKind) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def _new_task(
    db_session: Session,
    *,
    kind: TaskKind,
    task_id: str | None,
    name: str,
    body: dict[str, Any],
    metadata: TaskMetadata,
) -> Task:
    created_at = _next_created_at(db_session, name=name)
    return Task(
        id=task_id or new_task_id(kind),
        kind=kind,
        embedding_model_id=name,
        status=TaskStatus.PENDING,
        request=body,
        task_metadata=metadata.stored(),
        created_at=created_at,
        updated_at=created_at,
    )


def _next_created_at(db_session: Session, *, name: str) -> datetime:
    """Now, or just after the served name's latest task (a clock that went back, or the same
    microsecond): `*-status` always finds the task created last."""
    now = utcnow()
    latest = db_session.scalar(
        select(func.max(Task.created_at)).where(Task.embedding_model_id == name)
    )
    if latest is not None and latest >= now:
        return latest + timedelta(microseconds=1)
    return now


def _store(
    db_session: Session,
    build: Callable[[], Task],
    *,
    kind: TaskKind,
    task_id: str | None,
    body: dict[str, Any],
) -> Task:
    """Insert the task `build` makes, in a savepoint. A duplicate id answers with the task that
    won (same body) or a conflict; any other store failure is the contract's 500."""
    last_error: SQLAlchemyError | None = None
    for _ in range(STORE_ATTEMPTS):
        try:
            _begin_writing(db_session)
            with db_session.begin_nested():
                task = build()
                db_session.add(task)
                db_session.flush()
            return task
        except IntegrityError as exc:
            existing = get(db_session, task_id=task_id) if task_id is not None else None
            if existing is not None:
                return _same_request_or_conflict(existing, kind=kind, body=body)
            last_error: SQLAlchemyError = exc
        except SQLAlchemyError as exc:
            raise TaskStorageError(STORE_FAILED[kind]) from exc
    raise TaskStorageError(STORE_FAILED[kind]) from last_error


def _begin_writing(db_session: Session) -> None:
    """Open the session's write transaction before a savepoint. SQLite's Python driver begins a
    transaction only at a data-changing statement, so a SAVEPOINT issued first would begin (and
    its release commit) a transaction of its own; an UPDATE of no row begins it as it should."""
    db_session.execute(
        update(Task)
        .where(false())
        .values(updated_at=Task.updated_at)
        .execution_options(synchronize_session=False)
    )


def _same_request_or_conflict(task: Task, *, kind: TaskKind, body: dict[str, Any]) -> Task:
    if task.kind == kind and task.request == body:
        return task
    raise ConflictError(f"Task `{task.id}` already exists with a different request")


# ----- canceling ---------------------------------------------------------------------------------


def cancel(db_session: Session, *, task_id: str, kind: TaskKind) -> Task:
    """Cancel a pending task; 409 once a worker has claimed it (or it has ended)."""
    _lock(db_session, task_id=task_id)
    task = get_or_raise(db_session, task_id=task_id, kind=kind)
    if not transition(task, TaskStatus.CANCELED).accepted:
        raise ConflictError(f"Task `{task.id}` is {task.status} and cannot be canceled")
    db_session.flush()
    return task


def _lock(db_session: Session, *, task_id: str) -> None:
    """Hold the task's row until the session ends, so that a worker cannot claim it between our
    read and our write: an UPDATE that changes nothing takes PostgreSQL's row lock and SQLite's
    write lock alike."""
    db_session.execute(
        update(Task)
        .where(Task.id == task_id)
        .values(updated_at=Task.updated_at)
        .execution_options(synchronize_session=False)
    )
