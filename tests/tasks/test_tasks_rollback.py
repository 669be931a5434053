"""The rollback flow (tasks/flows.py): a deploy task that brings back an earlier revision, or is
refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import add_embedding_model
from sqlalchemy.orm import Session

from greenroom.auth.scopes import Scope
from greenroom.auth.service import Principal
from greenroom.config import Settings
from greenroom.deployments.configs import ConfigPolicy
from greenroom.errors import NotFoundError
from greenroom.registry.weights import content_hash
from greenroom.store.db import Store
from greenroom.tasks.flows import create_rollback_task
from greenroom.tasks.schemas import RollbackRequest, TaskMetadata
from greenroom.workloads.models import LiveRevision, Revision


@pytest.fixture
def db_session(store: Store) -> Iterator[Session]:
    with store.session_scope() as session:
        add_embedding_model(session, "m1")
        yield session


def add_revision(
    db_session: Session, weights: Path, revision_id: str, *, runtime: str = "local", **extra: object
) -> Revision:
    weights.mkdir(exist_ok=True)
    (weights / "model.onnx").write_bytes(b"weights")
    revision = Revision(
        id=revision_id,
        deployment_id="d",
        served_name="m1",
        embedding_model_id="m1",
        source=str(weights),
        model_path=str(weights),
        content_hash=content_hash(weights),
        engine="onnx",
        config=extra.pop("config", {}),
        runtime=runtime,
        phase="Stopped",
        **extra,
    )
    db_session.add(revision)
    db_session.flush()
    return revision


ALLOW_LOCAL = ConfigPolicy.of(Settings(runtime="local"))


def test_a_rollback_to_a_named_revision_is_a_deploy_task(
    db_session: Session, tmp_path: Path
) -> None:
    add_revision(db_session, tmp_path / "w", "r-1")
    principal = Principal(id="tok-1", name="ci", scopes=frozenset({Scope.DEPLOY}))
    request = RollbackRequest(embedding_model_id="m1", revision_id="r-1")
    task = create_rollback_task(
        db_session, request=request, policy=ALLOW_LOCAL, principal=principal
    )
    assert (task.kind, task.status, task.id[:7]) == ("deploy", "pending", "deploy-")
    assert TaskMetadata.of(task.task_metadata).shown() == {
        "deployment_target": "local",
        "initiated_by": "ci",
        "workspace": "default",
        "rollback_of": "r-1",
        "allow_embedding_space_change": False,
    }
    assert task.task_metadata["principal_id"] == "tok-1"


def test_a_rollback_without_a_revision_goes_to_the_one_live_replaced(
    db_session: Session, tmp_path: Path
) -> None:
    add_revision(db_session, tmp_path / "old", "r-old")
    add_revision(db_session, tmp_path / "new", "r-new")
    db_session.add(
        LiveRevision(
            served_name="m1", revision_id="r-new", previous_revision_id="r-old", deployment_id="d"
        )
    )
    db_session.flush()
    request = RollbackRequest(embedding_model_id="default/m1")
    task = create_rollback_task(db_session, request=request, policy=ALLOW_LOCAL)
    assert task.task_metadata["rollback_of"] == "r-old"


def test_a_rollback_to_nothing_is_not_found(db_session: Session) -> None:
    with pytest.raises(NotFoundError, match="Revision `nope` of `m1` is not found"):
        create_rollback_task(
            db_session,
            request=RollbackRequest(embedding_model_id="m1", revision_id="nope"),
            policy=ALLOW_LOCAL,
        )
    with pytest.raises(NotFoundError, match="has no live revision to roll back from"):
        create_rollback_task(
            db_session, request=RollbackRequest(embedding_model_id="m1"), policy=ALLOW_LOCAL
        )


def test_a_rollback_whose_weights_changed_is_refused(db_session: Session, tmp_path: Path) -> None:
    add_revision(db_session, tmp_path / "w", "r-1")
    (tmp_path / "w" / "model.onnx").write_bytes(b"other weights")
    request = RollbackRequest(embedding_model_id="m1", revision_id="r-1")
    task = create_rollback_task(db_session, request=request, policy=ALLOW_LOCAL)
    assert task.status == "refused"
    assert task.detail is not None and "no longer on disk as they were" in task.detail


def test_a_rollback_to_settings_the_server_no_longer_allows_is_refused(
    db_session: Session, tmp_path: Path
) -> None:
    """A revision started when Ray (or a variable) was allowed does not come back once the
    operator narrowed the policy: its rollback task is stored `refused` with the reason."""
    add_revision(
        db_session,
        tmp_path / "weights",
        "r-ray",
        runtime="ray",
        config={"additional_envs": {"OMP_NUM_THREADS": "1"}},
    )
    request = RollbackRequest(embedding_model_id="m1", revision_id="r-ray")
    allowed = ConfigPolicy.of(Settings(runtime="local", extra_runtimes="ray"))
    task = create_rollback_task(db_session, request=request, policy=allowed)
    assert task.status == "pending"
    narrowed = ConfigPolicy.of(Settings(runtime="local"))
    task = create_rollback_task(db_session, request=request, policy=narrowed)
    assert task.status == "refused"
    assert task.detail is not None and "'ray' is not enabled" in task.detail
