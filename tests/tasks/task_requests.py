"""Deploy and delete requests of the model `m1`, stored through the tasks flows."""

from __future__ import annotations

from sqlalchemy.orm import Session

from greenroom.tasks import flows as tasks_flows
from greenroom.tasks.models import Task
from greenroom.tasks.schemas import ModelDeletionRequest, ModelDeploymentRequest


def deploy(db_session: Session, **body: object) -> Task:
    body.setdefault("embedding_model_id", "m1")
    return tasks_flows.create_deploy_task(
        db_session, request=ModelDeploymentRequest.model_validate(body)
    )


def delete(db_session: Session, **body: object) -> Task:
    body.setdefault("embedding_model_id", "m1")
    return tasks_flows.create_delete_task(
        db_session, request=ModelDeletionRequest.model_validate(body)
    )
