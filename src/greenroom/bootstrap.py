"""First start: the admin token, and the default model deployed through an ordinary deploy task.

Both run under the bootstrap lock (`greenroom.leadership.exclusive`: an advisory lock on
PostgreSQL, a file lock in the data dir on SQLite) and are idempotent, so several `greenroom
serve` processes that start together on one store create one admin token and one deploy task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from greenroom.auth import service as auth_service
from greenroom.config import Settings
from greenroom.errors import GreenroomError
from greenroom.leadership import data_dir_lock, exclusive
from greenroom.registry import flows as registry_flows
from greenroom.registry import service as registry_service
from greenroom.registry.schemas import EmbeddingModelCreate
from greenroom.signals import Signals, Topic
from greenroom.store.db import Store, ensure_private_dir
from greenroom.tasks import flows as tasks_flows
from greenroom.tasks import service as tasks_service
from greenroom.tasks.schemas import ModelDeploymentRequest, TaskKind
from greenroom.tasks.states import TaskStatus

log = logging.getLogger("greenroom.bootstrap")
ADMIN_TOKEN_FILE = "admin.token"
BOOTSTRAP_LOCK = "bootstrap"


def admin_token_path(settings: Settings) -> Path:
    return settings.resolved_data_dir() / ADMIN_TOKEN_FILE


def ensure_admin_token(settings: Settings, store: Store) -> None:
    """The bootstrap admin token (docs/api/auth.md), before anything else is served.

    With `GREENROOM_ADMIN_TOKEN` set, its value is the admin token (idempotent across restarts; a
    new value replaces the previous one). Otherwise, when the store holds no unrevoked admin token
    (the first start, or every admin token revoked), one is created, written to
    `<data dir>/admin.token` (mode 0600) and printed once to standard error.
    """
    secret = settings.admin_token.get_secret_value() if settings.admin_token else ""
    with exclusive(data_dir_lock(settings, store, BOOTSTRAP_LOCK)):
        if secret:
            adopt_admin_token(store, secret, admin_token_path(settings))
        else:
            create_first_admin_token(store, admin_token_path(settings))


def adopt_admin_token(store: Store, secret: str, token_file: Path) -> None:
    """`secret` is at least `ADMIN_TOKEN_MIN_LENGTH` long: `Settings` refuses a shorter one."""
    try:
        revoked, replaced = _adopt(store, secret)
    except IntegrityError:  # another server adopted the same new value at the same moment
        revoked, replaced = _adopt(store, secret)
    if revoked:
        log.error("GREENROOM_ADMIN_TOKEN was revoked; it stays revoked: set a new value")
    if replaced:
        log.info("GREENROOM_ADMIN_TOKEN replaced the previous admin token (now revoked)")
    if token_file.exists() and token_file.read_text().strip() != secret:
        token_file.unlink()  # it held a bootstrap token that is not the admin token any more
        log.info("removed %s: GREENROOM_ADMIN_TOKEN is the admin token", token_file)


def _adopt(store: Store, secret: str) -> tuple[bool, bool]:
    """Whether the adopted token is revoked, and whether it replaced another one."""
    with store.session_scope() as session:
        token, replaced = auth_service.adopt_admin(session, secret=secret)
        return token.is_revoked, bool(replaced)


def create_first_admin_token(store: Store, token_file: Path) -> None:
    with store.session_scope() as session:
        if auth_service.has_active_admin(session):
            if not token_file.exists():
                log.info(
                    "an admin token exists but %s does not; set GREENROOM_ADMIN_TOKEN to replace "
                    "a lost one",
                    token_file,
                )
            return
        _, secret = auth_service.create_admin(session)
        write_token_file(token_file, secret)  # before the commit: a token is never lost
    print(
        f"greenroom: created the admin token (shown only now; also in {token_file}, mode 0600):\n"
        f"  {secret}",
        file=sys.stderr,
        flush=True,
    )


def write_token_file(path: Path, secret: str) -> None:
    """Write `secret` to `path`, readable by this user only (0600), atomically."""
    ensure_private_dir(path.parent)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{secret}\n".encode())
    finally:
        os.close(fd)
    os.replace(partial, path)


@dataclass
class StartupState:
    """What start-up still waits for; `/readyz` answers 503 with the reason until done."""

    pending: str | None = "Starting."
    error: str | None = None
    task_id: str | None = None  # the default model's first deploy task
    model: str = ""

    def not_ready_reason(self, store: Store) -> str | None:
        if self.error or self.pending:
            return self.error or self.pending
        try:
            with store.session_scope() as session:
                session.execute(text("SELECT 1"))
                task = tasks_service.get(session, task_id=self.task_id) if self.task_id else None
                status = TaskStatus(task.status) if task else None
        except Exception as exc:
            return f"The store is unreachable: {exc}"
        if status is not None and not status.is_final():
            return f"Deploying the default model '{self.model}' (task {self.task_id} is {status})."
        return None


def register_and_deploy_default(settings: Settings, store: Store) -> str | None:
    """Register the default model if it is not, and queue its deploy on the very first start.

    Returns the deploy task id, or None when the model has been deployed before (a restart:
    what was live comes back from the store without a new task). A deploy that another server
    queued and that has not ended yet is returned too: `/readyz` waits for it here as well.
    """
    with exclusive(data_dir_lock(settings, store, BOOTSTRAP_LOCK)):
        return _register_and_deploy_default(settings, store)


def _register_and_deploy_default(settings: Settings, store: Store) -> str | None:
    model_id = settings.default_model_id
    with store.session_scope() as session:
        if registry_service.get(session, embedding_model_id=model_id) is None:
            log.info("registering the default model '%s'", model_id)
            registry_flows.register(
                session,
                model_in=EmbeddingModelCreate(id=model_id, source=settings.default_model_source),
                options=registry_service.CheckOptions.of(settings),
            )
        latest = tasks_service.get_latest(
            session, embedding_model_id=model_id, kind=TaskKind.DEPLOY
        )
        if latest is not None:
            return None if TaskStatus(latest.status).is_final() else latest.id
        task = tasks_flows.create_deploy_task(
            session,
            request=ModelDeploymentRequest(embedding_model_id=model_id),
            initiated_by="greenroom",
            deployment_target=settings.runtime,
        )
        return task.id


async def bootstrap(
    settings: Settings, store: Store, signals: Signals, state: StartupState
) -> None:
    name = state.model = settings.default_model_id
    state.pending = f"Registering the default model '{name}'."
    try:
        state.task_id = await asyncio.to_thread(register_and_deploy_default, settings, store)
    except GreenroomError as exc:
        state.error = f"The default model '{name}' could not be registered: {exc.message}"
        log.error(state.error)
    else:
        if state.task_id:
            signals.notify(Topic.TASKS)
            log.info("deploying the default model '%s' (task %s)", name, state.task_id)
    finally:
        state.pending = None
