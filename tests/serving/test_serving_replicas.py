"""`StoreReplicas`: the router's replica source from the supervisor's reports in the store."""

from __future__ import annotations

from greenroom.runtime.base import ReplicaState, ReplicaStatus
from greenroom.runtime.reconcile import replica_report
from greenroom.serving.replicas import StoreReplicas, replicas_from_report


def replica(revision_id: str, state: ReplicaState, port: int | None = None) -> ReplicaStatus:
    return ReplicaStatus(
        replica_id=f"{revision_id}-0",
        revision_id=revision_id,
        state=state,
        host="127.0.0.1" if port else None,
        port=port,
    )


def test_a_stored_report_reads_back_as_the_replicas_reported() -> None:
    reported = [replica("r1", ReplicaState.READY, 4100), replica("r1", ReplicaState.BACKOFF)]
    stored = [replica_report(r) for r in reported]
    assert replicas_from_report("r1", stored) == reported


def test_update_announces_only_revisions_whose_replicas_changed() -> None:
    source, heard = StoreReplicas(), []
    source.subscribe(heard.append)
    source.update({"r1": [replica("r1", ReplicaState.STARTING)], "r2": []})
    assert heard == ["r1"]  # r2: nothing before, nothing now

    heard.clear()
    source.update({"r1": [replica("r1", ReplicaState.READY, 4100)], "r2": []})
    assert heard == ["r1"]
    assert [r.endpoint for r in source.replicas("r1")] == [("127.0.0.1", 4100)]

    heard.clear()
    source.update({"r1": [replica("r1", ReplicaState.READY, 4100)]})
    assert heard == []


def test_revisions_left_out_of_an_update_are_forgotten() -> None:
    source, heard = StoreReplicas(), []
    source.subscribe(heard.append)
    source.update({"r1": [replica("r1", ReplicaState.READY, 4100)]})
    heard.clear()
    source.update({})
    assert heard == ["r1"]
    assert source.replicas("r1") == []
    assert source.revisions() == []
