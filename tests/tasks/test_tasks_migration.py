"""An embedding migration's tasks in the Tasks API (docs/api/migrations.md): a staged deploy,
promote, finish and abort; the refusals of a plain deploy or a rollback during a migration; the
409s of a stage that does not allow a task; the routes and their shapes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import add_embedding_model, add_live_revision, api_app
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from task_requests import deploy

from greenroom.config import Settings
from greenroom.errors import ConflictError, NotFoundError
from greenroom.migrations import service as migrations_service
from greenroom.registry.weights import content_hash
from greenroom.store.db import Store
from greenroom.tasks import flows as tasks_flows
from greenroom.tasks import views as tasks_views
from greenroom.tasks.schemas import (
    AbortRequest,
    FinishRequest,
    ModelDeploymentRequest,
    PromoteRequest,
    RollbackRequest,
)
from greenroom.workloads.models import Revision

BASE = "/internal/inference-deployment"
IN_MIGRATION = "`m1` is in a migration ({}): promote, finish or abort it first"
NO_STAGED = '`m1` has no staged revision: deploy it with "strategy": "staged" first'


def staged(db_session: Session, name: str = "m1") -> tuple[str, str]:
    """`name` live, and a revision staged beside it: (live id, staged id)."""
    live = add_live_revision(db_session, embedding_model_id="m1", served_name=name)
    staged_id = str(uuid.uuid4())
    migrations_service.record_staged(db_session, served_name=name, revision_id=staged_id)
    return live.id, staged_id


def adapted(db_session: Session, old: Revision) -> str:
    """`m1` promoted adapted from `old`: the promoted revision's id."""
    promoted = str(uuid.uuid4())
    migrations_service.record_staged(db_session, served_name="m1", revision_id=promoted)
    migrations_service.record_promoted(
        db_session, served_name="m1", mode="adapted", old_revision_id=old.id
    )
    return promoted


def add_adapter(db_session: Session, revision_id: str, target_revision_id: str) -> str:
    return migrations_service.store_adapter(
        db_session,
        served_name="m1",
        revision_id=revision_id,
        target_revision_id=target_revision_id,
        kind="ridge",
        parameters=b"",
        evaluation={"mean_cosine": 0.9, "neighbour_overlap_at_10": 0.8},
        target_embedding_space="m1@abc/32/l2",
        target_normalize=True,
    ).id


def old_revision(db_session: Session, weights: Path) -> Revision:
    """A stopped revision of `m1` whose weights are on disk as snapshotted."""
    weights.mkdir(exist_ok=True)
    (weights / "model.onnx").write_bytes(b"weights")
    revision = Revision(
        id=str(uuid.uuid4()),
        deployment_id="d",
        served_name="m1",
        embedding_model_id="m1",
        source=str(weights),
        model_path=str(weights),
        content_hash=content_hash(weights),
        engine="onnx",
        config={},
        runtime="local",
        phase="Stopped",
    )
    db_session.add(revision)
    db_session.flush()
    return revision


# ----- a staged deploy; plain deploys and rollbacks during a migration ----------------------------


def test_a_staged_deploy_keeps_its_strategy(db_session: Session) -> None:
    task = deploy(db_session, strategy="staged")
    assert task.status == "pending"
    assert task.task_metadata["strategy"] == "staged"
    assert task.request["strategy"] == "staged"
    assert deploy(db_session, id="s-1", strategy="staged").id == "s-1"
    with pytest.raises(ConflictError):  # another strategy is another request
        deploy(db_session, id="s-1")


def test_a_plain_deploy_is_refused_while_staged_or_adapted(
    db_session: Session, tmp_path: Path
) -> None:
    staged(db_session)
    refused = deploy(db_session)
    assert (refused.status, refused.detail) == ("refused", IN_MIGRATION.format("staged"))
    assert deploy(db_session, strategy="staged").status == "pending"  # replaces the staged one
    adapted(db_session, old_revision(db_session, tmp_path / "w"))
    assert deploy(db_session).detail == IN_MIGRATION.format("adapted")
    again = deploy(db_session, strategy="staged")
    assert again.status == "refused"
    assert again.detail == (
        "`m1` is in a migration (adapted): finish or abort it before staging another revision"
    )


def test_a_rollback_is_refused_while_staged(db_session: Session, tmp_path: Path) -> None:
    old = old_revision(db_session, tmp_path / "w")
    staged(db_session)
    task = tasks_flows.create_rollback_task(
        db_session,
        request=RollbackRequest(embedding_model_id="m1", revision_id=old.id),
        policy=tasks_flows.config_policy(Settings(runtime="local")),
    )
    assert (task.status, task.detail) == ("refused", IN_MIGRATION.format("staged"))


def test_a_deploy_of_another_name_is_not_refused(db_session: Session) -> None:
    add_embedding_model(db_session, "m2")
    staged(db_session)
    task = tasks_flows.create_deploy_task(
        db_session, request=ModelDeploymentRequest(embedding_model_id="m2")
    )
    assert task.status == "pending"


# ----- promote, finish, abort: creation -----------------------------------------------------------


def promote(db_session: Session, **body: object) -> object:
    body.setdefault("embedding_model_id", "m1")
    body.setdefault("mode", "raw")
    return tasks_flows.create_promote_task(db_session, request=PromoteRequest.model_validate(body))


def test_a_promote_task_needs_a_staged_revision(db_session: Session) -> None:
    with pytest.raises(NotFoundError, match="Embedding model `nope` is not found"):
        promote(db_session, embedding_model_id="nope")
    with pytest.raises(ConflictError) as refused:
        promote(db_session)
    assert refused.value.message == NO_STAGED
    staged(db_session)
    task = promote(db_session, allow_embedding_space_change=True)
    assert re.fullmatch(r"promote-[0-9a-f]{32}", task.id)
    assert (task.kind, task.status, task.embedding_model_id) == ("promote", "pending", "m1")
    assert task.task_metadata == {
        "initiated_by": "admin",
        "workspace": "default",
        "mode": "raw",
        "allow_embedding_space_change": True,
    }
    assert task.request == {
        "embedding_model_id": "m1",
        "id": None,
        "mode": "raw",
        "allow_embedding_space_change": True,
    }


def test_an_adapted_promotion_needs_an_adapter_for_the_staged_revision(
    db_session: Session,
) -> None:
    live, staged_id = staged(db_session)
    with pytest.raises(ConflictError) as refused:
        promote(db_session, mode="adapted")
    assert refused.value.message == (
        f"`m1` has no adapter for its staged revision {staged_id}: fit one with POST "
        "/v1/migrations/default/m1/adapter first, or promote it raw"
    )
    add_adapter(db_session, staged_id, live)
    assert promote(db_session, mode="adapted").task_metadata["mode"] == "adapted"


def test_promote_with_a_client_id_is_idempotent(db_session: Session) -> None:
    staged(db_session)
    first = promote(db_session, id="p-1")
    assert promote(db_session, id="p-1").id == first.id == "p-1"
    with pytest.raises(ConflictError, match="already exists with a different request"):
        promote(db_session, id="p-1", allow_embedding_space_change=True)


def test_a_finish_task_needs_an_adapted_name(db_session: Session, tmp_path: Path) -> None:
    request = FinishRequest(embedding_model_id="m1")
    with pytest.raises(ConflictError, match=r"^`m1` is not adapted: there is no adapted"):
        tasks_flows.create_finish_task(db_session, request=request)
    staged(db_session)
    with pytest.raises(ConflictError, match=r"is not adapted \(it is staged\): promote it with"):
        tasks_flows.create_finish_task(db_session, request=request)
    adapted(db_session, old_revision(db_session, tmp_path / "w"))
    task = tasks_flows.create_finish_task(db_session, request=request)
    assert re.fullmatch(r"finish-[0-9a-f]{32}", task.id) and task.status == "pending"


def test_an_abort_task_of_each_stage(db_session: Session, tmp_path: Path) -> None:
    request = AbortRequest(embedding_model_id="m1")
    policy = tasks_flows.config_policy(Settings(runtime="local"))
    with pytest.raises(ConflictError, match=r"^`m1` is not in a migration"):
        tasks_flows.create_abort_task(db_session, request=request, policy=policy)
    staged(db_session)
    task = tasks_flows.create_abort_task(db_session, request=request, policy=policy)
    assert re.fullmatch(r"abort-[0-9a-f]{32}", task.id)
    assert task.task_metadata["abort_of"] == "staged" and "rollback_of" not in task.task_metadata
    old = old_revision(db_session, tmp_path / "w")
    adapted(db_session, old)
    back = tasks_flows.create_abort_task(db_session, request=request, policy=policy)
    assert back.status == "pending"
    meta = back.task_metadata
    assert (meta["abort_of"], meta["rollback_of"]) == ("adapted", old.id)
    assert meta["allow_embedding_space_change"] is True


def test_an_abort_whose_old_weights_are_gone_is_refused(
    db_session: Session, tmp_path: Path
) -> None:
    old = old_revision(db_session, tmp_path / "w")
    adapted(db_session, old)
    (tmp_path / "w" / "model.onnx").write_bytes(b"other weights")
    task = tasks_flows.create_abort_task(
        db_session,
        request=AbortRequest(embedding_model_id="m1"),
        policy=tasks_flows.config_policy(Settings(runtime="local")),
    )
    assert task.status == "refused"
    assert task.detail.startswith(f"The weights of revision {old.id} are no longer on disk")


# ----- the routes --------------------------------------------------------------------------------


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    with store.session_scope() as db_session:
        add_embedding_model(db_session, "m1")
    app = api_app(store, Settings(data_dir=tmp_path), tasks_views.api_router)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def call(client: TestClient, method: str, path: str, body: object = None, status: int = 200):
    response = client.request(method, BASE + path, json=body)
    assert response.status_code == status, response.text
    return response.json()


def test_the_migration_routes(client: TestClient, store: Store) -> None:
    assert call(client, "POST", "/promote", {"embedding_model_id": "m1", "mode": "raw"}, 409) == {
        "detail": NO_STAGED
    }
    assert call(client, "POST", "/finish", {"embedding_model_id": "nope"}, 404) == {
        "detail": "Embedding model `nope` is not found"
    }
    with store.session_scope() as db_session:
        staged(db_session)
    task = call(client, "POST", "/promote", {"model_id": "m1", "mode": "raw", "id": "p-9"})
    assert (task["id"], task["task_id"], task["status"]) == ("p-9", "p-9", "pending")
    assert call(client, "GET", "/promote/p-9") == task
    assert call(client, "GET", "/promote-status/m1") == task
    assert call(client, "GET", "/promote-status/default/m1") == task
    assert call(client, "GET", "/deploy/p-9", status=404) == {
        "detail": "Deployment task with ID `p-9` is not found"
    }
    assert call(client, "GET", "/abort/p-9", status=404) == {
        "detail": "Abort task with ID `p-9` is not found"
    }
    assert call(client, "GET", "/finish-status/m1", status=404) == {
        "detail": "Finish task with embedding model ID `m1` is not found"
    }
    abort = call(client, "POST", "/abort", {"embedding_model_id": "m1"})
    assert abort["id"].startswith("abort-") and abort["metadata"]["abort_of"] == "staged"
    canceled = call(client, "POST", f"/abort/{abort['id']}/cancel")
    assert canceled["status"] == "canceled"
    assert call(client, "POST", f"/abort/{abort['id']}/cancel", status=409) == {
        "detail": f"Task `{abort['id']}` is canceled and cannot be canceled"
    }
    assert call(client, "POST", "/promote/p-9/cancel")["status"] == "canceled"
    assert call(client, "GET", "/promote/nope", status=404) == {
        "detail": "Promotion task with ID `nope` is not found"
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/promote", {"embedding_model_id": "m1"}),  # no mode
        ("/promote", {"embedding_model_id": "m1", "mode": "sideways"}),
        ("/promote", {"embedding_model_id": "m1", "mode": "raw", "id": "a/b"}),
        ("/finish", {}),
        ("/abort", {"embedding_model_id": "x" * 600}),
        ("/deploy", {"embedding_model_id": "m1", "strategy": "blue"}),
    ],
)
def test_bad_bodies(client: TestClient, path: str, body: dict) -> None:
    detail = call(client, "POST", path, body, 422)["detail"]
    assert isinstance(detail, list) and detail


def test_a_staged_deploy_over_http(client: TestClient) -> None:
    task = call(client, "POST", "/deploy", {"embedding_model_id": "m1", "strategy": "staged"})
    assert task["metadata"]["strategy"] == "staged" and task["status"] == "pending"
