"""The runtime backend interface: the one seam between greenroom and where replicas run.

A backend makes a revision's replicas real, reports them (state and endpoint) and stops them. The
local backend runs replica processes on this machine; the Ray backend runs Ray Serve applications.
Every backend passes `tests/runtime/conformance.py` unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class ReplicaState(StrEnum):
    STARTING = "starting"  # process launched, model loading and warming up
    READY = "ready"  # has embedded its warm-up batch and answers health checks
    BACKOFF = "backoff"  # crashed or unhealthy; waits before the next start
    STOPPING = "stopping"
    STOPPED = "stopped"

    def is_ready(self) -> bool:
        return self is ReplicaState.READY


@dataclass(frozen=True)
class RevisionSpec:
    """What a revision runs: the model, the engine and how many replicas."""

    revision_id: str
    model_path: Path
    content_hash: str
    engine: str = "onnx"
    quantization: str = "none"
    replicas: int = 1
    threads: int = 1
    gpu: int = 0
    environment: dict[str, str] = field(default_factory=dict)
    runtime: str = "local"  # the runtime target (`local`, `ray`) that runs it
    max_batch_size: int = 32  # bounds the requests its replicas accept
    # "normal", or "low" for a staged revision: its replicas yield the CPU to the live ones
    # (locally a higher `nice`, on Ray half the CPUs). It takes part in comparing specs, so a
    # change restarts the replicas: promotion starts the live ones fresh at normal priority.
    priority: str = "normal"
    # The revision's replica secret (`revisions.replica_secret`): every connection to its
    # replicas proves it knows it. Never in a repr or a log; it never changes for a revision,
    # so it takes no part in comparing specs (an adopted Ray application's spec has none).
    secret: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica as the backend sees it now."""

    replica_id: str
    revision_id: str
    state: ReplicaState
    host: str | None = None
    port: int | None = None
    restarts: int = 0
    message: str = ""
    pid: int | None = None

    @property
    def endpoint(self) -> tuple[str, int] | None:
        if self.state.is_ready() and self.host and self.port:
            return self.host, self.port
        return None


ChangeListener = Callable[[str], None]


class ReplicaSource(Protocol):
    """Where the router learns a revision's replicas: the runtime itself in a process that runs
    the supervisor, or the supervisor's reports in the store (`serving.replicas.StoreReplicas`)."""

    def replicas(self, revision_id: str) -> list[ReplicaStatus]:
        """The revision's replicas now; empty for an unknown revision."""
        ...

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener(revision_id)` whenever a replica of that revision changes."""
        ...


class RuntimeBackend(ABC):
    """Start, report and stop the replicas of revisions."""

    name: str

    def __init__(self) -> None:
        self._listeners: list[ChangeListener] = []

    async def open(self) -> None:  # noqa: B027 (optional hook)
        """Connect and adopt what already runs (Ray); called once before the first use."""

    @abstractmethod
    async def start_revision(self, spec: RevisionSpec) -> None:
        """Ask for `spec.replicas` replicas of the revision; idempotent for the same spec."""

    @abstractmethod
    async def stop_revision(self, revision_id: str) -> None:
        """Stop every replica of the revision (gracefully, then forced) and forget it.

        The caller drains first: nothing may be in flight to the revision any more.
        """

    @abstractmethod
    def replicas(self, revision_id: str) -> list[ReplicaStatus]:
        """The revision's replicas now; empty for an unknown revision."""

    @abstractmethod
    def running(self) -> dict[str, RevisionSpec]:
        """The spec each revision runs now (the last started), by revision id: the actual state
        the reconciler compares with the store's desired one. Adopted revisions included."""

    def scale_up_refusal(self, spec: RevisionSpec, add: int) -> str | None:
        """Why `add` more replicas of the revision cannot start here (not enough memory), or
        None when they can; asked before an autoscaling scale-up. A change of `spec.replicas`
        alone is made in place by the local, fake and Ray runtimes (Ray: the Serve
        application's `num_replicas`): replicas are added, or the surplus drained and stopped,
        and the others run on."""
        return None

    def revisions(self) -> list[str]:
        """Ids of the revisions this backend runs."""
        return list(self.running())

    @abstractmethod
    async def close(self) -> None:
        """Stop everything this backend started in this process."""

    def ready_replicas(self, revision_id: str) -> list[ReplicaStatus]:
        return [r for r in self.replicas(revision_id) if r.state.is_ready()]

    def subscribe(self, listener: ChangeListener) -> None:
        """Call `listener(revision_id)` whenever a replica of that revision changes state."""
        self._listeners.append(listener)

    def _notify(self, revision_id: str) -> None:
        for listener in list(self._listeners):
            listener(revision_id)
