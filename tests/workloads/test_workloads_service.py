"""The workloads service: revisions, their phases and the live pointer; one short test per
function (the API face is in test_workloads_flows.py)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from factories import FAKE_CONTENT_HASH, add_live_revision
from sqlalchemy.orm import Session

from greenroom.errors import InvalidRequestError, NotFoundError
from greenroom.store.db import Store, utcnow
from greenroom.workloads import service
from greenroom.workloads.models import Revision
from greenroom.workloads.schemas import LiveHealth, RevisionSnapshot
from greenroom.workloads.states import RevisionPhase

SNAPSHOT = RevisionSnapshot(
    embedding_model_id="tiny",
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


def new_revision(
    session: Session, *, served_name: str = "tiny", snapshot: RevisionSnapshot = SNAPSHOT
) -> Revision:
    return service.create_revision(
        session,
        revision_id=str(uuid.uuid4()),
        deployment_id=str(uuid.uuid4()),
        served_name=served_name,
        snapshot=snapshot,
    )


def stopped_revision(session: Session) -> Revision:
    """A revision that ran and was retired: Initializing, Terminating, Stopped."""
    revision = new_revision(session)
    service.want_replicas(session, revision_id=revision.id)
    service.withdraw(session, revision_id=revision.id)
    service.record_retired(
        session, revision_id=revision.id, phase=RevisionPhase.STOPPED, message="replaced"
    )
    assert revision.phase == RevisionPhase.STOPPED
    return revision


def report(ready: int, *, restarts: int = 0, message: str | None = None) -> list[dict]:
    return [
        {
            "replica_id": f"r{i}",
            "state": "ready" if i < ready else "starting",
            "host": "127.0.0.1",
            "port": 9000 + i,
            "restarts": 0 if i < ready else restarts,
            "message": None if i < ready else message,
        }
        for i in range(2)
    ]


# ----- the snapshot ---------------------------------------------------------------------------


def test_a_snapshot_matches_the_revision_made_of_it(session: Session) -> None:
    revision = new_revision(session)
    assert SNAPSHOT.matches(revision) and RevisionSnapshot.of(revision) == SNAPSHOT
    other = RevisionSnapshot.of(revision)
    assert not RevisionSnapshot(**{**other.__dict__, "engine": "torch"}).matches(revision)


# ----- read -----------------------------------------------------------------------------------


def test_parse_id_accepts_only_a_uuid() -> None:
    value = str(uuid.uuid4())
    assert service.parse_id(value.upper()) == value
    with pytest.raises(InvalidRequestError, match="Invalid id 'x': must be a UUID"):
        service.parse_id("x")


def test_create_revision_stores_the_snapshot_as_creating(session: Session) -> None:
    revision = new_revision(session)
    stored = service.get_revision(session, revision_id=revision.id)
    assert stored is revision and revision.phase == RevisionPhase.CREATING
    assert (revision.desired_replicas, revision.deleted_at) == (0, None)
    assert revision.config == SNAPSHOT.config and len(revision.replica_secret) == 64


def test_get_revision_is_none_and_get_revision_or_fail_raises_when_absent(
    session: Session,
) -> None:
    assert service.get_revision(session, revision_id="nope") is None
    with pytest.raises(NotFoundError, match=r"Revision nope does not exist\."):
        service.get_revision_or_fail(session, revision_id="nope")


def test_revisions_by_id_skips_unknown_ids(session: Session) -> None:
    first, second = new_revision(session), new_revision(session)
    found = service.revisions_by_id(session, revision_ids=[second.id, "nope", first.id])
    assert {r.id for r in found} == {first.id, second.id}
    assert service.revisions_by_id(session, revision_ids=[]) == []


def test_revisions_of_lists_a_served_names_revisions_oldest_first(session: Session) -> None:
    first, second = new_revision(session), new_revision(session)
    new_revision(session, served_name="other")
    assert [r.id for r in service.revisions_of(session, served_name="tiny")] == [
        r.id for r in sorted([first, second], key=lambda r: (r.created_at, r.id))
    ]


def test_list_and_count_revisions_of_a_workload(session: Session) -> None:
    revision = new_revision(session)
    retired = service.create_revision(
        session,
        revision_id=str(uuid.uuid4()),
        deployment_id=revision.deployment_id,
        served_name="tiny",
        snapshot=SNAPSHOT,
    )
    retired.deleted_at = utcnow()
    workload_id = revision.deployment_id
    every = service.list_revisions_of_workload(session, workload_id=workload_id, deleted=None)
    assert {r.id for r in every} == {revision.id, retired.id}
    only_deleted = service.list_revisions_of_workload(
        session, workload_id=workload_id, deleted=True
    )
    assert [r.id for r in only_deleted] == [retired.id]
    assert service.count_revisions_of_workload(session, workload_id=workload_id, deleted=False) == 1


def test_desired_revisions_are_those_asking_for_replicas_on_the_targets(session: Session) -> None:
    wanted, idle = new_revision(session), new_revision(session)
    on_ray = new_revision(
        session, snapshot=RevisionSnapshot(**{**SNAPSHOT.__dict__, "runtime": "ray"})
    )
    for revision in (wanted, on_ray):
        service.want_replicas(session, revision_id=revision.id)
    assert [r.id for r in service.desired_revisions(session, runtimes={"local"})] == [wanted.id]
    both = service.desired_revisions(session, runtimes={"local", "ray"})
    assert {r.id for r in both} == {wanted.id, on_ray.id} and idle not in both


def test_has_replicas_when_wanted_ready_or_reported(session: Session) -> None:
    revision = new_revision(session)
    assert not service.has_replicas(revision)
    revision.replicas = report(0)
    assert service.has_replicas(revision)


def test_is_stopped_once_nothing_is_ready_or_reported(session: Session) -> None:
    revision = new_revision(session)
    assert service.is_stopped(session, revision_id=revision.id)
    service.record_replicas(
        session, revision_id=revision.id, replicas=report(1), ready=1, now=utcnow()
    )
    assert not service.is_stopped(session, revision_id=revision.id)


def test_ready_or_broken(session: Session) -> None:
    revision = new_revision(session)
    service.want_replicas(session, revision_id=revision.id)
    check = {"db_session": session, "revision_id": revision.id, "failed_starts": 2}
    assert service.ready_or_broken(**check) == (False, None)
    revision.replicas = report(1, restarts=1, message="out of memory")
    assert service.ready_or_broken(**check) == (False, None)
    revision.replicas = report(1, restarts=2, message="out of memory")
    assert service.ready_or_broken(**check) == (False, "out of memory")
    revision.replicas, revision.ready_replicas = report(2), 2
    assert service.ready_or_broken(**check) == (True, None)


def test_referenced_model_paths_and_content_hashes(session: Session) -> None:
    assert service.referenced_model_paths(session) == set()
    new_revision(session)
    new_revision(session, snapshot=RevisionSnapshot(**{**SNAPSHOT.__dict__, "model_path": "/m/2"}))
    assert service.referenced_model_paths(session) == {"/models/fake", "/m/2"}
    assert service.referenced_content_hashes(session) == {FAKE_CONTENT_HASH}


def test_get_rollback_target(session: Session) -> None:
    with pytest.raises(NotFoundError, match="has no live revision to roll back from"):
        service.get_rollback_target(session, served_name="tiny", revision_id=None)
    old, new = new_revision(session), new_revision(session)
    for revision in (old, new):
        service.point_live(
            session,
            served_name="tiny",
            revision_id=revision.id,
            deployment_id=revision.deployment_id,
        )
    assert service.get_rollback_target(session, served_name="tiny", revision_id=None) is old
    assert service.get_rollback_target(session, served_name="tiny", revision_id=new.id) is new
    with pytest.raises(NotFoundError, match=f"Revision `{old.id}` of `other` is not found"):
        service.get_rollback_target(session, served_name="other", revision_id=old.id)


def test_get_rollback_target_falls_back_to_the_newest_stopped_revision(session: Session) -> None:
    stopped = stopped_revision(session)
    live = add_live_revision(session, embedding_model_id="tiny")
    assert live.id != stopped.id
    assert service.get_rollback_target(session, served_name="tiny", revision_id=None) is stopped


# ----- the live pointer -----------------------------------------------------------------------


def test_get_live_and_live_revisions(session: Session) -> None:
    live = add_live_revision(session, embedding_model_id="tiny")
    add_live_revision(session, embedding_model_id="other")
    pointer = service.get_live(session, served_name="tiny")
    assert pointer is not None and pointer.revision_id == live.id
    assert service.get_live(session, served_name="nope") is None
    assert set(service.live_revisions(session, served_names=["tiny", "nope"])) == {"tiny"}
    assert service.live_revisions(session, served_names=[]) == {}


def test_live_pointers_and_live_revision_ids(session: Session) -> None:
    tiny = add_live_revision(session, embedding_model_id="tiny")
    other = add_live_revision(session, embedding_model_id="other")
    new_revision(session)
    pairs = service.live_pointers(session)
    assert [(live.served_name, revision.id) for live, revision in pairs] == [
        ("other", other.id),
        ("tiny", tiny.id),
    ]
    assert service.live_revision_ids(session) == {tiny.id, other.id}


def test_point_live_moves_the_pointer_and_records_green_running(session: Session) -> None:
    blue, green = new_revision(session), new_revision(session)
    for revision in (blue, green):
        service.want_replicas(session, revision_id=revision.id)
    service.point_live(session, served_name="tiny", revision_id=blue.id, deployment_id="d1")
    service.point_live(session, served_name="tiny", revision_id=green.id, deployment_id="d2")
    service.point_live(session, served_name="tiny", revision_id=green.id, deployment_id="d2")
    live = service.get_live(session, served_name="tiny")
    assert live is not None
    assert (live.revision_id, live.previous_revision_id, live.deployment_id) == (
        green.id,
        blue.id,
        "d2",
    )
    assert (green.phase, green.phase_message) == (RevisionPhase.RUNNING, None)


def test_unroute_removes_the_pointer_and_returns_its_revision(session: Session) -> None:
    live = add_live_revision(session, embedding_model_id="tiny")
    assert service.unroute(session, served_name="tiny") == live.id
    session.flush()
    assert service.get_live(session, served_name="tiny") is None
    assert service.unroute(session, served_name="tiny") is None


# ----- phases ---------------------------------------------------------------------------------


def test_want_replicas_asks_for_the_configured_number_and_initializes(session: Session) -> None:
    revision = new_revision(session)
    assert service.want_replicas(session, revision_id=revision.id) == 2
    assert revision.desired_replicas == 2
    assert (revision.phase, revision.phase_message) == (
        RevisionPhase.INITIALIZING,
        "replicas loading and warming up",
    )


def test_want_replicas_asks_nothing_of_a_failed_revision(session: Session) -> None:
    revision = new_revision(session)
    service.mark_failed(session, revision_id=revision.id, reason="smoke test failed")
    assert service.want_replicas(session, revision_id=revision.id) == 0
    assert (revision.desired_replicas, revision.phase) == (0, RevisionPhase.FAILED)


def test_withdraw_asks_for_nothing_and_terminates_unless_final(session: Session) -> None:
    serving, failed = new_revision(session), new_revision(session)
    service.want_replicas(session, revision_id=serving.id)
    service.mark_failed(session, revision_id=failed.id, reason="broken")
    for revision in (serving, failed):
        service.withdraw(session, revision_id=revision.id)
    assert (serving.desired_replicas, serving.phase) == (0, RevisionPhase.TERMINATING)
    assert serving.phase_message == "draining and stopping"
    assert (failed.phase, failed.phase_message) == (RevisionPhase.FAILED, "broken")


def test_mark_failed_records_the_reason(session: Session) -> None:
    revision = new_revision(session)
    service.mark_failed(session, revision_id=revision.id, reason="smoke test failed")
    assert (revision.phase, revision.phase_message) == (RevisionPhase.FAILED, "smoke test failed")


def test_record_retired_sets_the_phase_and_deleted_at_once(session: Session) -> None:
    revision = new_revision(session)
    service.want_replicas(session, revision_id=revision.id)
    service.withdraw(session, revision_id=revision.id)
    service.record_retired(
        session, revision_id=revision.id, phase=RevisionPhase.STOPPED, message="replaced by g"
    )
    retired_at = revision.deleted_at
    service.record_retired(
        session, revision_id=revision.id, phase=RevisionPhase.STOPPED, message="replaced by g"
    )
    assert (revision.phase, revision.phase_message) == (RevisionPhase.STOPPED, "replaced by g")
    assert retired_at is not None and revision.deleted_at == retired_at


def test_a_refused_system_move_is_logged_and_ignored(
    session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    revision = stopped_revision(session)
    with caplog.at_level(logging.WARNING, logger="greenroom.workloads"):
        service.point_live(session, served_name="tiny", revision_id=revision.id, deployment_id="d1")
    assert revision.phase == RevisionPhase.STOPPED
    assert f"Revision {revision.id} is Stopped and cannot become Running" in caplog.text


def test_record_replicas_writes_the_report_of_any_revision(session: Session) -> None:
    revision = new_revision(session)
    now = utcnow()
    health = service.record_replicas(
        session, revision_id=revision.id, replicas=report(1), ready=1, now=now
    )
    assert health is None and revision.phase == RevisionPhase.CREATING
    assert (revision.ready_replicas, revision.replicas, revision.reported_at) == (1, report(1), now)
    assert (
        service.record_replicas(session, revision_id="nope", replicas=[], ready=0, now=now) is None
    )


def test_record_replicas_moves_the_live_revision_between_running_and_degraded(
    session: Session,
) -> None:
    revision = new_revision(session)
    service.want_replicas(session, revision_id=revision.id)
    service.point_live(
        session, served_name="tiny", revision_id=revision.id, deployment_id=revision.deployment_id
    )
    args = {"db_session": session, "revision_id": revision.id, "now": utcnow()}
    down = service.record_replicas(**args, replicas=report(1, message="exited 1"), ready=1)
    assert down == LiveHealth(revision_id=revision.id, ready=1, wanted=2, reasons="exited 1")
    assert (revision.phase, revision.phase_message) == (
        RevisionPhase.DEGRADED,
        "1 of 2 replicas ready: exited 1",
    )
    up = service.record_replicas(**args, replicas=report(2), ready=2)
    assert up == LiveHealth(revision_id=revision.id, ready=2, wanted=2, reasons="")
    assert (revision.phase, revision.phase_message) == (RevisionPhase.RUNNING, None)
    service.withdraw(session, revision_id=revision.id)
    assert service.record_replicas(**args, replicas=report(0), ready=0) is None
    assert revision.phase == RevisionPhase.TERMINATING


# ----- what the API shows -------------------------------------------------------------------------


def test_replica_arguments_and_ready_condition(session: Session) -> None:
    revision = new_revision(session)
    assert service.replica_arguments(revision) == (
        f"--model-path /models/fake --content-hash {FAKE_CONTENT_HASH} --engine onnx "
        "--quantization none --threads 1 --gpu 0"
    )
    assert service.ready_condition(revision).reason == "NotRequested"
    service.want_replicas(session, revision_id=revision.id)
    assert service.ready_condition(revision).status == "Unknown"
    service.record_replicas(
        session, revision_id=revision.id, replicas=report(2), ready=2, now=utcnow()
    )
    condition = service.ready_condition(revision)
    assert (condition.status, condition.message) == ("True", "2 of 2 replicas ready")
