"""First start: register the default model and deploy it through an ordinary deploy task."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import text

from greenroom.config import Settings
from greenroom.db import Store
from greenroom.errors import GreenroomError
from greenroom.registry import service as registry_service
from greenroom.registry.schemas import EmbeddingModelCreate
from greenroom.signals import Signals, Topic
from greenroom.tasks import service as tasks_service
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import ModelDeploymentRequest, TaskKind
from greenroom.tasks.states import TaskStatus

log = logging.getLogger("greenroom.bootstrap")


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
                task = session.get(Task, self.task_id) if self.task_id else None
                status = TaskStatus(task.status) if task else None
        except Exception as exc:
            return f"The store is unreachable: {exc}"
        if status is not None and not status.is_final():
            return f"Deploying the default model '{self.model}' (task {self.task_id} is {status})."
        return None


def register_and_deploy_default(settings: Settings, store: Store) -> str | None:
    """Register the default model if it is not, and queue its deploy on the very first start.

    Returns the deploy task id, or None when the model has been deployed before (a restart:
    what was live comes back from the store without a new task).
    """
    model_id = settings.default_model_id
    with store.session_scope() as session:
        if registry_service.get(session, embedding_model_id=model_id) is None:
            log.info("registering the default model '%s'", model_id)
            registry_service.register(
                session,
                model_in=EmbeddingModelCreate(id=model_id, source=settings.default_model_source),
                cache_dir=settings.resolved_data_dir() / "onnx",
                timeout_s=settings.registration_timeout_s,
            )
        if tasks_service.get_latest(session, embedding_model_id=model_id, kind=TaskKind.DEPLOY):
            return None
        task = tasks_service.create_deploy_task(
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
