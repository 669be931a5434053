"""What autoscaling writes through the workloads service: the count a revision starts at (green
takes blue's current count) and the counts the supervisor sets."""

from __future__ import annotations

import uuid

from factories import FAKE_CONTENT_HASH, add_live_revision

from greenroom.store.db import Store
from greenroom.workloads import service as workloads_service
from greenroom.workloads.models import Revision

RANGE = {"min_replicas": 1, "max_replicas": 4}


def add_blue(store: Store, replicas: int) -> str:
    with store.session_scope() as session:
        blue = add_live_revision(session, embedding_model_id="tiny")
        blue.desired_replicas = replicas
        blue.config = dict(RANGE)
        return blue.id


def add_green(store: Store, config: dict[str, object]) -> str:
    with store.session_scope() as session:
        green = Revision(
            id=str(uuid.uuid4()),
            deployment_id=str(uuid.uuid4()),
            served_name="tiny",
            embedding_model_id="tiny",
            source="/models/fake",
            model_path="/models/fake",
            content_hash=FAKE_CONTENT_HASH,
            engine="onnx",
            phase="Creating",
            config=config,
        )
        session.add(green)
        return green.id


def want(store: Store, revision_id: str) -> int:
    with store.session_scope() as session:
        return workloads_service.want_replicas(session, revision_id=revision_id)


def test_an_autoscaled_green_starts_with_blues_current_count(sqlite_store: Store) -> None:
    add_blue(sqlite_store, replicas=3)
    green = add_green(sqlite_store, {**RANGE, "replicas": 1})
    assert want(sqlite_store, green) == 3
    assert want(sqlite_store, green) == 3  # a resumed step asks for the same


def test_blues_count_is_taken_within_greens_own_range(sqlite_store: Store) -> None:
    add_blue(sqlite_store, replicas=3)
    assert want(sqlite_store, add_green(sqlite_store, {"min_replicas": 1, "max_replicas": 2})) == 2


def test_with_no_live_revision_an_autoscaled_one_starts_at_its_minimum(
    sqlite_store: Store,
) -> None:
    green = add_green(sqlite_store, {"min_replicas": 2, "max_replicas": 4, "replicas": 1})
    assert want(sqlite_store, green) == 2


def test_a_fixed_count_stays_the_configured_one(sqlite_store: Store) -> None:
    add_blue(sqlite_store, replicas=3)
    assert want(sqlite_store, add_green(sqlite_store, {"replicas": 1})) == 1


def test_scaling_sets_the_count_of_a_serving_revision_only(sqlite_store: Store) -> None:
    blue = add_blue(sqlite_store, replicas=1)
    green = add_green(sqlite_store, dict(RANGE))  # Creating, asks for nothing
    with sqlite_store.session_scope() as session:
        assert workloads_service.scale_replicas(session, revision_id=blue, replicas=2)
        assert not workloads_service.scale_replicas(session, revision_id=green, replicas=2)
        assert not workloads_service.scale_replicas(session, revision_id="nope", replicas=2)
    with sqlite_store.session_scope() as session:
        assert session.get(Revision, blue).desired_replicas == 2  # type: ignore[union-attr]
        assert session.get(Revision, green).desired_replicas == 0  # type: ignore[union-attr]


def test_a_refused_scale_up_is_the_phase_message(sqlite_store: Store) -> None:
    blue = add_blue(sqlite_store, replicas=1)
    with sqlite_store.session_scope() as session:
        workloads_service.record_scaling_refused(session, revision_id=blue, reason="no memory")
    with sqlite_store.session_scope() as session:
        revision = session.get(Revision, blue)
        assert revision is not None
        assert (revision.phase, revision.phase_message) == ("Running", "no memory")
