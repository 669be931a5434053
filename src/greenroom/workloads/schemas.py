"""The workloads API's shapes (api/workloads.md): camelCase, as cluster tooling reads them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict


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
