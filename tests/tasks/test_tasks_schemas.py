"""Task metadata is typed, and stored and shown as the JSON object the API has always shown."""

from __future__ import annotations

import pytest

from greenroom.tasks.schemas import Compatibility, StepRecord, StepStatus, TaskMetadata

# What the API showed for a finished deploy and a finished delete before metadata was typed.
DEPLOYED = {
    "deployment_target": "local",
    "initiated_by": "admin",
    "workspace": "default",
    "config": "m1",
    "config_version": 2,
    "allow_embedding_space_change": False,
    "revision_id": "r2",
    "previous_revision_id": "r1",
    "deployment_id": "d1",
    "steps": [
        {
            "name": "snapshot",
            "status": "done",
            "started_at": "2024-05-21T15:00:00.000001+00:00",
            "finished_at": "2024-05-21T15:00:00.250000+00:00",
            "duration_ms": 249,
            "message": "revision r2 (deployment version 2, config version 2)",
        },
        {
            "name": "start_green",
            "status": "pending",
            "started_at": None,
            "finished_at": None,
            "duration_ms": None,
            "message": None,
        },
    ],
    "compatibility": {"mean_cosine": 0.999912, "threshold": 0.99, "reindex_required": False},
    "result": "rolled_out",
}
DELETED = {
    "deletion_type": "manual",
    "reason": None,
    "initiated_by": "admin",
    "revision_id": None,
    "steps": [],
    "result": "failed",
}


@pytest.mark.parametrize("stored", [DEPLOYED, DELETED, {}, {"rollback_of": "r0"}])
def test_metadata_round_trips_to_the_same_json(stored: dict) -> None:
    metadata = TaskMetadata.of(stored)
    assert metadata.stored() == stored
    assert metadata.shown() == stored


def test_attributes_are_typed() -> None:
    metadata = TaskMetadata.of(DEPLOYED)
    assert metadata.steps is not None and metadata.steps[0].status is StepStatus.DONE
    assert metadata.compatibility == Compatibility(
        mean_cosine=0.999912, threshold=0.99, reindex_required=False
    )
    with pytest.raises(ValueError):
        metadata.config_version = "two"  # type: ignore[assignment]


def test_attributes_set_later_are_stored_and_null_ones_kept() -> None:
    metadata = TaskMetadata(initiated_by="ci")
    metadata.previous_revision_id = None
    metadata.steps = [StepRecord.pending("unroute")]
    assert metadata.stored() == {
        "initiated_by": "ci",
        "previous_revision_id": None,
        "steps": [
            {
                "name": "unroute",
                "status": "pending",
                "started_at": None,
                "finished_at": None,
                "duration_ms": None,
                "message": None,
            }
        ],
    }


def test_the_worker_only_keys_are_stored_but_not_shown() -> None:
    metadata = TaskMetadata(
        initiated_by="ci-bot",
        principal_id="tok-1",
        principal_groups=["deploy", "read"],
        config_overrides={"replicas": 2},
    )
    assert set(metadata.stored()) == {
        "initiated_by",
        "principal_id",
        "principal_groups",
        "config_overrides",
    }
    assert metadata.shown() == {"initiated_by": "ci-bot"}


def test_unknown_keys_of_older_rows_survive() -> None:
    assert TaskMetadata.of({"legacy": 1}).stored() == {"legacy": 1}


def test_step_status_finished() -> None:
    assert [s for s in StepStatus if s.is_finished()] == [StepStatus.DONE, StepStatus.SKIPPED]
