"""Deleting deployment versions: DELETING while something of a version runs, DELETED once nothing
does, and the records removed by a DELETE of versions already DELETED.

What runs under a served name (`Activity`) is the workloads and tasks domains' to know: the
caller (deployments.flows) gathers it through their services and passes it in as plain values.
Plain functions, keyword-only arguments led by `db_session`; they never commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from greenroom.deployments.models import Deployment
from greenroom.deployments.service import (
    get_deployment_or_raise,
    list_deployment_versions,
    mark_one_deleted,
    mark_one_deleting,
)
from greenroom.deployments.states import DeploymentStatus, current_status
from greenroom.errors import NotFoundError


@dataclass(frozen=True)
class Deletion:
    """What a DELETE did. `removed`: every targeted version was DELETED, nothing of it runs any
    more, and its record is gone (204). Otherwise `deployment` is the targeted (or latest)
    version, now DELETING or DELETED (202), and `needs_delete_task` says the served name's
    delete task must be queued."""

    removed: bool
    deployment: Deployment | None = None
    needs_delete_task: bool = False


@dataclass(frozen=True)
class Activity:
    """What runs under a served name, as plain values: the revision its live pointer names,
    whether any task of it is unfinished (and a delete task among them), the revisions an
    unfinished task names, and the revisions of it with replicas wanted or reported."""

    served: str
    live_revision_id: str | None = None
    tasks_unfinished: bool = False
    delete_task_unfinished: bool = False
    named_by_tasks: frozenset[str] = frozenset()
    with_replicas: frozenset[str] = frozenset()

    def may_run(self, deployment: Deployment) -> bool:
        """Whether something of this version runs or may soon: it is live, an unfinished task
        names its revision, or its revision has replicas wanted or reported."""
        revision_id = deployment.revision_id
        return (
            revision_id == self.live_revision_id
            or revision_id in self.named_by_tasks
            or revision_id in self.with_replicas
        )

    def withdrawn(self) -> bool:
        """Whether the runtime has withdrawn everything of the served name: no live pointer, no
        unfinished task, no revision of it with replicas wanted or reported."""
        return (
            self.live_revision_id is None and not self.tasks_unfinished and not self.with_replicas
        )


def targets_of(
    db_session: Session, *, workspace: str, name: str, version: int | None
) -> tuple[list[Deployment], list[Deployment]]:
    """Every version of the deployment (newest first) and those a DELETE targets: all of them,
    or the one named (404 either way)."""
    versions = list_deployment_versions(db_session, workspace=workspace, name=name)
    if version is None:
        if not versions:
            raise NotFoundError(f"Deployment '{workspace}/{name}' not found")
        return versions, versions
    target = get_deployment_or_raise(db_session, workspace=workspace, name=name, version=version)
    return versions, [target]


def delete_deployment(
    db_session: Session,
    *,
    workspace: str,
    name: str,
    version: int | None = None,
    activity: Activity,
) -> Deletion:
    """DELETE of a deployment (every version) or of one version; `activity`: what runs under
    its served name.

    First, versions left DELETING by an earlier delete whose task has ended and of which
    nothing runs become DELETED. Then: if every targeted version is DELETED and the runtime has
    withdrawn what they ran (for a whole deployment: everything of the served name), their
    records are removed (after that of every version, the name is free). While a delete task is
    under way nothing changes. Otherwise each targeted version that runs or may soon (and, for
    a whole deployment, its latest version unless it is DELETED with everything withdrawn)
    becomes DELETING and the served name's delete task is needed; any other becomes DELETED at
    once: nothing of it runs. So records never go while the runtime still serves them, even
    when a version says DELETED."""
    versions, targets = targets_of(db_session, workspace=workspace, name=name, version=version)
    settle_deleted(versions=versions, activity=activity)
    whole = version is None
    withdrawn = activity.withdrawn()
    if all(_is(target, DeploymentStatus.DELETED) for target in targets):
        if withdrawn or not (whole or activity.may_run(targets[0])):
            for target in targets:
                db_session.delete(target)
            db_session.flush()
            return Deletion(removed=True)
        if activity.delete_task_unfinished:  # it withdraws the rest; a later DELETE removes
            return Deletion(removed=False, deployment=targets[0])
    deleting = _mark_targets(targets, latest=versions[0] if whole else None, activity=activity)
    db_session.flush()
    return Deletion(
        removed=False,
        deployment=targets[0],
        needs_delete_task=deleting and not activity.delete_task_unfinished,
    )


def _mark_targets(
    targets: Iterable[Deployment], *, latest: Deployment | None, activity: Activity
) -> bool:
    """Each target DELETING when it is already, may run, or is the latest of a whole deployment
    (unless DELETED with everything withdrawn); else DELETED. Whether any is DELETING."""
    deleting = False
    for target in targets:
        latest_of_whole = target is latest
        if (
            _is(target, DeploymentStatus.DELETING)
            or activity.may_run(target)
            or (
                latest_of_whole
                and not (_is(target, DeploymentStatus.DELETED) and activity.withdrawn())
            )
        ):
            mark_one_deleting(target)
            deleting = True
        elif not _is(target, DeploymentStatus.DELETED):
            mark_one_deleted(target)
    return deleting


def settle_deleted(*, versions: Iterable[Deployment], activity: Activity) -> None:
    """DELETING versions become DELETED once no task of the served name is unfinished and
    nothing of them runs."""
    if activity.tasks_unfinished:
        return
    for deployment in versions:
        if _is(deployment, DeploymentStatus.DELETING) and not activity.may_run(deployment):
            mark_one_deleted(deployment)


def _is(deployment: Deployment, status: DeploymentStatus) -> bool:
    return current_status(deployment) is status
