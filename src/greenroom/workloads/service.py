"""Workloads: revisions (what runs, its desired replicas, what the runtime reported) and the
live-revision pointer of each served name. Only this module writes them.

Every phase change goes through `states.transition()`; a move the state machine refuses is
logged and ignored here (a rollout step or a reconcile pass never crashes on one). Functions
are keyword-only, led by `db_session`, and never commit: the caller's session scope does.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from greenroom.errors import InvalidRequestError, NotFoundError
from greenroom.store.db import utcnow
from greenroom.workloads.models import LiveRevision, Revision
from greenroom.workloads.schemas import LiveHealth, ReadyCondition, RevisionSnapshot
from greenroom.workloads.states import RevisionPhase, TransitionResult, transition

log = logging.getLogger("greenroom.workloads")

NOT_FOUND = "Resource id not found."
REPLICA_COMMAND = "python -m greenroom.runtime.replica"
INITIALIZING_MESSAGE = "replicas loading and warming up"
TERMINATING_MESSAGE = "draining and stopping"
STAGED_MESSAGE = "staged: no live traffic"


class Priority(StrEnum):
    """The CPU priority of a revision's replicas (`Revision.priority`)."""

    NORMAL = "normal"
    LOW = "low"  # a staged revision's: shadow traffic must never slow the live revision


def parse_id(value: str) -> str:
    """A workload or revision id must be a UUID: 400 otherwise, never a 500."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidRequestError(f"Invalid id '{value}': must be a UUID") from None


# ----- revisions: read ---------------------------------------------------------------------------


def get_revision(db_session: Session, *, revision_id: str) -> Revision | None:
    return db_session.get(Revision, revision_id)


def get_revision_or_fail(db_session: Session, *, revision_id: str) -> Revision:
    """The revision; NotFoundError (`Revision <id> does not exist.`) when there is none."""
    revision = get_revision(db_session, revision_id=revision_id)
    if revision is None:
        raise NotFoundError(f"Revision {revision_id} does not exist.")
    return revision


def revisions_by_id(db_session: Session, *, revision_ids: Iterable[str]) -> list[Revision]:
    """The revisions among these ids that exist (one query), in id order."""
    ids = sorted(set(revision_ids))
    if not ids:
        return []
    return list(
        db_session.scalars(select(Revision).where(Revision.id.in_(ids)).order_by(Revision.id))
    )


def revisions_of(db_session: Session, *, served_name: str) -> list[Revision]:
    """Every revision of a served name, oldest first."""
    query = select(Revision).where(Revision.served_name == served_name)
    return list(db_session.scalars(query.order_by(Revision.created_at, Revision.id)))


def revisions_of_workload_query(*, workload_id: str, deleted: bool | None) -> Select:
    """A workload's revisions (its deployment id), only retired ones or only others when
    `deleted` says so."""
    query = select(Revision).where(Revision.deployment_id == workload_id)
    if deleted is not None:
        column = Revision.deleted_at
        query = query.where(column.is_not(None) if deleted else column.is_(None))
    return query


def list_revisions_of_workload(
    db_session: Session, *, workload_id: str, deleted: bool | None
) -> list[Revision]:
    """A workload's revisions, oldest first (`deleted`: see `revisions_of_workload_query`)."""
    query = revisions_of_workload_query(workload_id=workload_id, deleted=deleted)
    return list(db_session.scalars(query.order_by(Revision.created_at, Revision.id)))


def count_revisions_of_workload(
    db_session: Session, *, workload_id: str, deleted: bool | None
) -> int:
    query = revisions_of_workload_query(workload_id=workload_id, deleted=deleted)
    return db_session.scalar(select(func.count()).select_from(query.subquery())) or 0


def desired_revisions(db_session: Session, *, runtimes: set[str]) -> list[Revision]:
    """The revisions of these runtime targets that ask for replicas (the reconciler's target)."""
    query = select(Revision).where(
        Revision.desired_replicas > 0, Revision.runtime.in_(sorted(runtimes))
    )
    return list(db_session.scalars(query))


def has_replicas(revision: Revision) -> bool:
    """Whether replicas of the revision are wanted or reported."""
    return bool(revision.desired_replicas or revision.ready_replicas or revision.replicas)


def is_stopped(db_session: Session, *, revision_id: str) -> bool:
    """Nothing of the revision is ready and the runtime reports no replica of it."""
    revision = get_revision_or_fail(db_session, revision_id=revision_id)
    return revision.ready_replicas == 0 and not revision.replicas


def ready_or_broken(
    db_session: Session, *, revision_id: str, failed_starts: int
) -> tuple[bool, str | None]:
    """(True, None) once every desired replica is ready; (False, message) when a replica that
    is not ready has failed to start `failed_starts` times (the message is that replica's own);
    (False, None) while it is still coming up."""
    revision = get_revision_or_fail(db_session, revision_id=revision_id)
    if revision.ready_replicas >= revision.desired_replicas > 0:
        return True, None
    for replica in revision.replicas:
        if replica["state"] != "ready" and replica["restarts"] >= failed_starts:
            return False, str(replica["message"])
    return False, None


def referenced_model_paths(db_session: Session) -> set[str]:
    """The weights directory of every revision (the registry keeps those weights)."""
    return set(db_session.scalars(select(Revision.model_path).distinct()))


def referenced_content_hashes(db_session: Session) -> set[str]:
    """The content hash of every revision's weights (the registry keeps those weights)."""
    return set(db_session.scalars(select(Revision.content_hash).distinct()))


def get_rollback_target(
    db_session: Session, *, served_name: str, revision_id: str | None
) -> Revision:
    """The revision a roll back of `served_name` deploys again: `revision_id` when given (it
    must be one of the name's), else the live pointer's previous revision, else the newest
    Stopped one that is not live. NotFoundError (one sentence) when there is none."""
    if revision_id is not None:
        revision = get_revision(db_session, revision_id=revision_id)
        if revision is None or revision.served_name != served_name:
            raise NotFoundError(f"Revision `{revision_id}` of `{served_name}` is not found")
        return revision
    live = get_live(db_session, served_name=served_name)
    if live is None:
        raise NotFoundError(
            f"Embedding model `{served_name}` has no live revision to roll back from"
        )
    previous_id = live.previous_revision_id or db_session.scalar(
        select(Revision.id)
        .where(Revision.served_name == served_name, Revision.id != live.revision_id)
        .where(Revision.phase == RevisionPhase.STOPPED)
        .order_by(Revision.created_at.desc())
        .limit(1)
    )
    previous = get_revision(db_session, revision_id=previous_id) if previous_id else None
    if previous is None:
        raise NotFoundError(
            f"Embedding model `{served_name}` has no earlier revision to roll back to"
        )
    return previous


# ----- the live pointer ----------------------------------------------------------------------


def get_live(db_session: Session, *, served_name: str) -> LiveRevision | None:
    return db_session.get(LiveRevision, served_name)


def live_revisions(db_session: Session, *, served_names: Iterable[str]) -> dict[str, LiveRevision]:
    """The live-revision pointer of each of these served names that has one (one query)."""
    names = sorted(set(served_names))
    if not names:
        return {}
    rows = db_session.scalars(select(LiveRevision).where(LiveRevision.served_name.in_(names)))
    return {row.served_name: row for row in rows}


def live_revision_ids(db_session: Session) -> set[str]:
    """The id of every revision that is live under some served name."""
    return set(db_session.scalars(select(LiveRevision.revision_id)))


def live_pointers(db_session: Session) -> list[tuple[LiveRevision, Revision]]:
    """Every live pointer with the revision it points to (one query), by served name."""
    rows = db_session.execute(
        select(LiveRevision, Revision)
        .join(Revision, Revision.id == LiveRevision.revision_id)
        .order_by(LiveRevision.served_name)
    ).all()
    return [(live, revision) for live, revision in rows]


def point_live(
    db_session: Session, *, served_name: str, revision_id: str, deployment_id: str
) -> None:
    """Point `served_name` at the revision (the previous one is remembered) and record it
    Running: the switch."""
    revision = get_revision_or_fail(db_session, revision_id=revision_id)
    live = get_live(db_session, served_name=served_name)
    if live is None:
        live = LiveRevision(served_name=served_name, revision_id=revision_id)
        db_session.add(live)
    if live.revision_id != revision_id:
        live.previous_revision_id = live.revision_id
        live.revision_id = revision_id
    live.deployment_id = deployment_id
    _move(revision, RevisionPhase.RUNNING)


def unroute(db_session: Session, *, served_name: str) -> str | None:
    """Remove the served name's live pointer; the id of the revision it pointed to, or None
    when nothing was live."""
    live = get_live(db_session, served_name=served_name)
    if live is None:
        return None
    revision_id = live.revision_id
    db_session.delete(live)
    return revision_id


# ----- revisions: write ----------------------------------------------------------------------


def create_revision(
    db_session: Session,
    *,
    revision_id: str,
    deployment_id: str,
    served_name: str,
    snapshot: RevisionSnapshot,
) -> Revision:
    """Store the snapshot as a new revision, phase Creating, no replicas asked for yet."""
    revision = Revision(
        id=revision_id,
        deployment_id=deployment_id,
        served_name=served_name,
        embedding_model_id=snapshot.embedding_model_id,
        source=snapshot.source,
        model_path=snapshot.model_path,
        content_hash=snapshot.content_hash,
        engine=snapshot.engine,
        config=snapshot.config,
        runtime=snapshot.runtime,
        phase=RevisionPhase.CREATING,  # the initial phase, not a transition
    )
    db_session.add(revision)
    db_session.flush()
    return revision


def want_replicas(
    db_session: Session, *, revision_id: str, priority: Priority | str | None = None
) -> int:
    """Ask for the revision's configured replicas (the reconciler starts them) and record it
    Initializing; the number asked for. `priority` ("low" for a staged revision, "normal" for
    a live one), when given, is set too: a different priority is a different spec, so the
    reconciler restarts running replicas with it. A revision the phase machine will not
    initialise (a Failed or retired one: a step resumed after its roll back began) gets no
    replicas again and keeps its priority."""
    revision = get_revision_or_fail(db_session, revision_id=revision_id)
    asked_before, priority_before = revision.desired_replicas, revision.priority
    revision.desired_replicas = starting_replicas(db_session, revision)
    if priority is not None:
        revision.priority = _checked_priority(priority)
    if not _move(revision, RevisionPhase.INITIALIZING, INITIALIZING_MESSAGE).accepted:
        revision.desired_replicas = asked_before
        revision.priority = priority_before
    return revision.desired_replicas


def starting_replicas(db_session: Session, revision: Revision) -> int:
    """The count a revision's replicas start at: its config's `replicas`; with an autoscaling
    range (`min_replicas`/`max_replicas`), the count it already asks for (a step resumed), else
    the live revision's current count for the same name (green takes over blue's load), within
    the range; `min_replicas` with neither."""
    config = revision.config
    low, high = config.get("min_replicas"), config.get("max_replicas")
    if low is None or high is None:
        return int(config.get("replicas", 1))
    current = revision.desired_replicas
    live = get_live(db_session, served_name=revision.served_name)
    if not current and live is not None and live.revision_id != revision.id:
        blue = get_revision(db_session, revision_id=live.revision_id)
        current = blue.desired_replicas if blue is not None else 0
    return max(int(low), min(int(high), current or int(low)))


def scale_replicas(db_session: Session, *, revision_id: str, replicas: int) -> bool:
    """Set the replica count of a serving (Running or Degraded) revision that asks for
    replicas: the autoscaler's decision, which the reconciler carries out in place (no new
    revision). False, and nothing written, for any other revision (one being rolled out,
    stopped or gone)."""
    revision = get_revision(db_session, revision_id=revision_id)
    if revision is None or revision.desired_replicas <= 0 or replicas <= 0:
        return False
    if not RevisionPhase(revision.phase).is_serving():
        return False
    revision.desired_replicas = replicas
    return True


def record_scaling_refused(db_session: Session, *, revision_id: str, reason: str) -> None:
    """Show why the revision did not get the replicas the autoscaler wanted (its phase
    message; the phase stays). The next replica report writes its own message again."""
    revision = get_revision(db_session, revision_id=revision_id)
    if revision is None or not RevisionPhase(revision.phase).is_serving():
        return
    _move(revision, RevisionPhase(revision.phase), reason)


def set_priority(db_session: Session, *, revision_id: str, priority: Priority | str) -> None:
    """Set the CPU priority the revision's replicas run at ("low": they yield to the live
    revision's; "normal"). Running replicas are restarted with it by the reconciler (the spec
    changed), so a caller that must not lose capacity asks for it before they serve."""
    revision = get_revision_or_fail(db_session, revision_id=revision_id)
    revision.priority = _checked_priority(priority)


def record_staged(db_session: Session, *, revision_id: str) -> None:
    """Record the revision Running as a staged revision (`STAGED_MESSAGE`): its replicas are up
    and answer its pinned names and shadow traffic, but the served name's live pointer stays
    on the live revision. `record_replicas` never rewrites this message: it only judges the
    health of the live revision."""
    revision = get_revision_or_fail(db_session, revision_id=revision_id)
    _move(revision, RevisionPhase.RUNNING, STAGED_MESSAGE)


def _checked_priority(priority: Priority | str) -> Priority:
    """A priority the runtime knows; anything else is a programming error, said at once."""
    try:
        return Priority(priority)
    except ValueError:
        raise ValueError(f"unknown replica priority {priority!r}: low or normal") from None


def withdraw(db_session: Session, *, revision_id: str) -> None:
    """Ask for no replicas of the revision; it is Terminating unless already Failed or Stopped."""
    revision = get_revision_or_fail(db_session, revision_id=revision_id)
    revision.desired_replicas = 0
    if not RevisionPhase(revision.phase).is_final():
        _move(revision, RevisionPhase.TERMINATING, TERMINATING_MESSAGE)


def mark_failed(db_session: Session, *, revision_id: str, reason: str) -> None:
    """Record the revision Failed, `reason` its phase message."""
    revision = get_revision_or_fail(db_session, revision_id=revision_id)
    _move(revision, RevisionPhase.FAILED, reason)


def record_retired(
    db_session: Session, *, revision_id: str, phase: RevisionPhase, message: str
) -> None:
    """Record the revision retired (its replicas stopped, or given up on): `phase` (Stopped or
    Failed) with `message`, and `deleted_at` (the first time only)."""
    revision = get_revision_or_fail(db_session, revision_id=revision_id)
    _move(revision, phase, message)
    revision.deleted_at = revision.deleted_at or utcnow()


def record_replicas(
    db_session: Session,
    *,
    revision_id: str,
    replicas: list[dict[str, Any]],
    ready: int,
    now: datetime,
) -> LiveHealth | None:
    """Write the runtime's report of a revision's replicas. For the live revision of its name,
    while Running or Degraded: Running with every desired replica ready, Degraded with fewer,
    and its health returned (the deployment status is decided from it). None otherwise, or
    when the revision no longer exists."""
    revision = get_revision(db_session, revision_id=revision_id)
    if revision is None:
        return None
    revision.replicas = replicas
    revision.ready_replicas = ready
    revision.reported_at = now
    live = get_live(db_session, served_name=revision.served_name)
    if live is None or live.revision_id != revision.id:
        return None
    if not RevisionPhase(revision.phase).is_serving():
        return None
    return _record_health(revision)


def _record_health(revision: Revision) -> LiveHealth:
    ready, wanted = revision.ready_replicas, revision.desired_replicas
    if ready >= wanted:
        _move(revision, RevisionPhase.RUNNING)
        return LiveHealth(revision_id=revision.id, ready=ready, wanted=wanted)
    reasons = "; ".join(sorted({r["message"] for r in revision.replicas if r["message"]}))
    _move(revision, RevisionPhase.DEGRADED, f"{ready} of {wanted} replicas ready: {reasons}")
    return LiveHealth(revision_id=revision.id, ready=ready, wanted=wanted, reasons=reasons)


def _move(revision: Revision, to: RevisionPhase, message: str | None = None) -> TransitionResult:
    """A system move: refused ones are logged and ignored, never raised."""
    result = transition(revision, to, message=message)
    if not result.accepted:
        log.warning("phase change of revision %s ignored: %s", revision.id, result.reason)
    return result


# ----- what the workloads API shows of a revision ---------------------------------------------


def replica_arguments(revision: Revision) -> str:
    config = revision.config
    return " ".join(
        [
            f"--model-path {revision.model_path}",
            f"--content-hash {revision.content_hash}",
            f"--engine {revision.engine}",
            f"--quantization {config.get('quantization', 'none')}",
            f"--threads {config.get('threads', 1)}",
            f"--gpu {config.get('gpu', 0)}",
        ]
    )


def ready_condition(revision: Revision) -> ReadyCondition:
    wanted = int(revision.config.get("replicas", 1))
    if revision.deleted_at is not None or revision.desired_replicas == 0:
        status, reason = "False", "Retired" if revision.deleted_at else "NotRequested"
    elif revision.ready_replicas >= wanted:
        status, reason = "True", "AllReplicasReady"
    elif revision.reported_at is None:
        status, reason = "Unknown", "NotReported"
    else:
        status, reason = "False", "ReplicasNotReady"
    return ReadyCondition(
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message=f"{revision.ready_replicas} of {wanted} replicas ready",
        lastTransitionTime=revision.reported_at or revision.phase_updated_at,
    )
