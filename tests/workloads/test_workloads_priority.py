"""A staged revision in the workloads service: its CPU priority (`want_replicas(priority=…)`,
`set_priority`) and its phase (`record_staged`), which the live revision's health reports never
rewrite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from factories import FAKE_CONTENT_HASH
from sqlalchemy.orm import Session

from greenroom.store.db import Store, utcnow
from greenroom.workloads import service
from greenroom.workloads.models import Revision
from greenroom.workloads.schemas import RevisionSnapshot
from greenroom.workloads.states import RevisionPhase

SNAPSHOT = RevisionSnapshot(
    embedding_model_id="docs",
    source="/models/fake",
    model_path="/models/fake",
    content_hash=FAKE_CONTENT_HASH,
    engine="onnx",
    config={"replicas": 2, "threads": 1, "runtime": "local"},
    runtime="local",
)


@pytest.fixture
def session(store: Store) -> Iterator[Session]:
    with store.session_scope() as db_session:
        yield db_session


def new_revision(session: Session) -> Revision:
    return service.create_revision(
        session,
        revision_id=str(uuid.uuid4()),
        deployment_id=str(uuid.uuid4()),
        served_name="docs",
        snapshot=SNAPSHOT,
    )


def ready_report(count: int) -> list[dict]:
    return [
        {"replica_id": f"r{i}", "state": "ready", "host": "127.0.0.1", "port": 9000 + i,
         "restarts": 0, "message": None}
        for i in range(count)
    ]  # fmt: skip


def test_a_new_revision_runs_at_normal_priority(session: Session) -> None:
    revision = new_revision(session)
    assert revision.priority == "normal"
    session.expire(revision)
    assert session.get(Revision, revision.id).priority == "normal"  # type: ignore[union-attr]


def test_want_replicas_sets_the_priority_only_when_given(session: Session) -> None:
    revision = new_revision(session)
    assert service.want_replicas(session, revision_id=revision.id, priority="low") == 2
    assert (revision.priority, revision.phase) == ("low", RevisionPhase.INITIALIZING)
    service.want_replicas(session, revision_id=revision.id)
    assert revision.priority == "low"
    service.want_replicas(session, revision_id=revision.id, priority="normal")
    assert revision.priority == "normal"


def test_want_replicas_of_a_failed_revision_keeps_its_priority(session: Session) -> None:
    revision = new_revision(session)
    service.mark_failed(session, revision_id=revision.id, reason="smoke test failed")
    assert service.want_replicas(session, revision_id=revision.id, priority="low") == 0
    assert (revision.priority, revision.desired_replicas) == ("normal", 0)


def test_set_priority_stores_it_and_refuses_anything_else(session: Session) -> None:
    revision = new_revision(session)
    service.set_priority(session, revision_id=revision.id, priority="low")
    session.flush()
    session.expire(revision)
    assert revision.priority == "low"
    with pytest.raises(ValueError, match="low or normal"):
        service.set_priority(session, revision_id=revision.id, priority="urgent")
    with pytest.raises(ValueError, match="low or normal"):
        service.want_replicas(session, revision_id=revision.id, priority="high")
    assert revision.priority == "low"


def test_record_staged_marks_an_initializing_revision_running_and_staged(
    session: Session,
) -> None:
    revision = new_revision(session)
    service.want_replicas(session, revision_id=revision.id, priority="low")
    service.record_staged(session, revision_id=revision.id)
    assert (revision.phase, revision.phase_message) == (
        RevisionPhase.RUNNING,
        service.STAGED_MESSAGE,
    )
    assert service.STAGED_MESSAGE == "staged: no live traffic"
    service.record_staged(session, revision_id=revision.id)  # a resumed step: no change
    assert revision.phase_message == service.STAGED_MESSAGE


def test_replica_reports_leave_a_staged_revisions_message_alone(session: Session) -> None:
    live, staged = new_revision(session), new_revision(session)
    for revision in (live, staged):
        service.want_replicas(session, revision_id=revision.id)
    service.point_live(
        session, served_name="docs", revision_id=live.id, deployment_id=live.deployment_id
    )
    service.set_priority(session, revision_id=staged.id, priority="low")
    service.record_staged(session, revision_id=staged.id)
    for ready in (1, 2, 0):  # fewer ready than wanted would make the live revision Degraded
        health = service.record_replicas(
            session, revision_id=staged.id, replicas=ready_report(ready), ready=ready, now=utcnow()
        )
        assert health is None
        assert (staged.phase, staged.phase_message) == (
            RevisionPhase.RUNNING,
            service.STAGED_MESSAGE,
        )
    assert staged.ready_replicas == 0  # the report itself is still written


def test_promoting_a_staged_revision_starts_it_again_at_normal_priority(
    session: Session,
) -> None:
    """What promotion's `start_live` does: want the replicas at normal priority (the spec
    changes, so they restart), then the switch records it live and Running."""
    staged = new_revision(session)
    service.want_replicas(session, revision_id=staged.id, priority="low")
    service.record_staged(session, revision_id=staged.id)
    service.want_replicas(session, revision_id=staged.id, priority="normal")
    assert (staged.priority, staged.phase) == ("normal", RevisionPhase.INITIALIZING)
    service.point_live(
        session, served_name="docs", revision_id=staged.id, deployment_id=staged.deployment_id
    )
    assert (staged.phase, staged.phase_message) == (RevisionPhase.RUNNING, None)
