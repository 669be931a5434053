"""The workloads API's shapes (`docs/api/workloads.md`): camelCase, as cluster tooling reads
them; and the values the workloads service exchanges with the rollout and the reconciler."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from greenroom.workloads.models import Revision


class ReadyCondition(BaseModel):
    type: Literal["Ready"] = "Ready"
    status: Literal["True", "False", "Unknown"]
    message: str | None = None
    reason: str | None = None
    lastTransitionTime: datetime


class RequestedPods(BaseModel):
    number: int


class RevisionRead(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    type: Literal["greenroom-revision"] = "greenroom-revision"
    name: str
    id: str
    workloadId: str
    tenantId: int
    clusterId: str
    projectId: str
    departmentId: str
    createdAt: datetime
    deletedAt: datetime | None
    requestedNodePools: list[str]
    currentNodePools: list[str]
    requestedPods: RequestedPods
    runningPods: int
    images: list[str]
    command: str
    arguments: str
    environmentVariables: dict[str, str]
    phase: str
    phaseMessage: str | None
    phaseUpdatedAt: datetime
    conditions: list[ReadyCondition]


class RevisionList(BaseModel):
    revisions: list[RevisionRead]


class RevisionCount(BaseModel):
    count: int


class WorkloadRead(BaseModel):
    name: str
    workloadId: str
    projectId: str
    departmentId: str
    clusterId: str
    createdBy: str | None
    createdAt: datetime
    deletedAt: datetime | None
    desiredPhase: Literal["Running", "Stopped", "Deleted"]
    actualPhase: str


# ----- values the workloads service hands to the rollout and the reconciler -----------------


@dataclass(frozen=True)
class RevisionSnapshot:
    """What a new revision will run: weights and serving settings."""

    embedding_model_id: str
    source: str
    model_path: str
    content_hash: str
    engine: str
    config: dict[str, Any]
    runtime: str

    def matches(self, revision: Revision) -> bool:
        """Whether `revision` runs the same weights with the same serving settings."""
        return revision.snapshot() == {
            "content_hash": self.content_hash,
            "engine": self.engine,
            "config": self.config,
            "runtime": self.runtime,
        }

    @classmethod
    def of(cls, revision: Revision) -> RevisionSnapshot:
        """The snapshot a revision runs (a rollback deploys it again)."""
        return cls(
            embedding_model_id=revision.embedding_model_id,
            source=revision.source,
            model_path=revision.model_path,
            content_hash=revision.content_hash,
            engine=revision.engine,
            config=dict(revision.config),
            runtime=revision.runtime,
        )


@dataclass(frozen=True)
class LiveHealth:
    """How the live revision stands after a replica report: `ready` of `wanted` replicas, and
    the replicas' messages (`reasons`, joined) when fewer are ready."""

    revision_id: str
    ready: int
    wanted: int
    reasons: str = ""
