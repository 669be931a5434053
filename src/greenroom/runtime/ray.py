"""The Ray runtime: every revision is its own Ray Serve application, `greenroom-<revision id>`.

Green comes up as a new application beside blue's (never an in-place update of one application)
and blue's application is deleted after the drain. The replicas are `ray_replica.GreenroomReplica`
deployments: each runs the replica protocol server and publishes its endpoint in Ray's KV store,
where this backend reads it, so the router talks to a Serve replica exactly as to a local one.

Where Ray runs is `ray_cluster`'s: `RAY_ADDRESS` when set, else a private local Ray that dies
with this process. Applications on an external cluster outlive greenroom and are re-adopted on
the next start (their spec is kept in Ray's KV store); a private Ray's die with it. Replicas get
the allowed variables of their config only (`environment.replica_environment`) and their
revision's secret as a bind argument, which guards their protocol port. A low-priority (staged)
revision's replicas ask Ray for half the CPUs (`replica_num_cpus`); its priority is part of the
kept spec, so an adopted application is not redeployed for it.

A change of the replica count alone (the autoscaler's, `handover.count_change_only`) is made in
place: the same application is deployed again with the same code version (`code_version`: a
hash of everything its replicas run, not a random one as `serve.run` gives) and a new
`num_replicas`, which Serve takes as a lightweight update: it starts or stops replicas and
leaves the others running. A new replica takes traffic only once it publishes its endpoint,
after its warm-up embed. On a scale-down Serve chooses the replica to stop (by its own rule:
not yet running first, then off the head node, on the node with fewest replicas, the newest;
`DeploymentScheduler._get_replicas_to_stop`) and greenroom cannot name it. So the draining is
the replica's own: Serve's graceful shutdown calls its `__del__`, where it first reports itself
stopping (its KV endpoint marked `stopping`, read here as STOPPING, so every router stops
sending to it and moves its queued batches), waits `ray_replica.SCALE_DOWN_DRAIN_S` for routers
in other processes to learn it from the store, and only then closes its protocol server. That
holds whichever replica Serve picks, and for any other graceful stop of Serve's (a node being
drained). Deleting an application (a revision stopped after its drain) skips the wait.
Before a scale-up, `scale_up_refusal` checks the CPUs (and GPUs) Ray has free for the new
replicas' share, and on a private Ray (this machine) the memory, as the local runtime does.

Every call into Ray runs on one thread of its own (`_call`), off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from greenroom.config import Settings, default_threads
from greenroom.runtime.base import ReplicaState, ReplicaStatus, RevisionSpec, RuntimeBackend
from greenroom.runtime.environment import replica_environment
from greenroom.runtime.handover import count_change_only
from greenroom.runtime.local import memory_refusal
from greenroom.runtime.ray_cluster import (
    KV_NAMESPACE,
    LOOPBACK,
    RAY_TOKEN_FILE,
    connect,
    node_ip,
    start_private_ray,
    start_serve,
    stop_private_ray,
)
from greenroom.runtime.ray_replica import (
    DELETING_PREFIX,
    SCALE_DOWN_DRAIN_S,
    GreenroomReplica,
    kv,
    spec_from_json,
    spec_to_json,
)

log = logging.getLogger("greenroom.runtime.ray")
APP_PREFIX = "greenroom-"
DEPLOYMENT = "GreenroomReplica"
SERVE_NAMESPACE = "serve"
ACTOR_PREFIX = "SERVE_REPLICA::"


def app_name(revision_id: str) -> str:
    return f"{APP_PREFIX}{revision_id}"


@dataclass
class Slot:
    """One wanted replica; `serve_id` is the Serve replica that fills it now."""

    status: ReplicaStatus
    serve_id: str | None = None
    had_replica: bool = False


@dataclass
class RayRevision:
    spec: RevisionSpec
    slots: list[Slot] = field(default_factory=list)
    deploy_error: str = ""  # Serve refused the application
    next_index: int = 0  # the index of the next slot's id: ids are never reused


def new_slot(revision_id: str, index: int) -> Slot:
    return Slot(
        ReplicaStatus(
            replica_id=f"{revision_id}-{index}",
            revision_id=revision_id,
            state=ReplicaState.STARTING,
            message="starting on Ray Serve",
        )
    )


@dataclass(frozen=True)
class Observation:
    """What one poll saw: application status and message, live replica ids, endpoints."""

    apps: dict[str, tuple[str, str]]
    alive: dict[str, set[str]]  # app → Serve replica ids whose actors are alive
    endpoints: dict[str, dict[str, dict[str, Any]]]  # app → Serve replica id → endpoint
    free: dict[str, float] = field(default_factory=dict)  # Ray's available resources


class RayRuntime(RuntimeBackend):
    """Revisions as Ray Serve applications; replicas reported with their protocol endpoints."""

    name = "ray"

    def __init__(
        self,
        settings: Settings,
        *,
        poll_interval_s: float = 0.5,
        keep_applications: bool | None = None,
        replica_class: type[GreenroomReplica] = GreenroomReplica,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.replica_class = replica_class  # the Serve deployment's class (bench: a subclass)
        self.poll_interval_s = poll_interval_s
        self.onnx_cache_dir = settings.resolved_onnx_cache_dir()
        self.external = bool(os.environ.get("RAY_ADDRESS"))
        # On close, applications on an external cluster stay (re-adopted next start).
        self.keep_applications = self.external if keep_applications is None else keep_applications
        self.owns_ray = False
        self._temp_dir: Path | None = None
        self._revisions: dict[str, RayRevision] = {}
        self._free: dict[str, float] | None = None  # Ray's available resources, last poll
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray")
        self._opened: asyncio.Future[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    # ----- Ray calls, one thread --------------------------------------------------------------
    async def _call(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def open(self) -> None:
        """Connect (or start a private Ray), start Serve, adopt running applications; once."""
        if self._opened is None:
            self._opened = asyncio.get_running_loop().create_future()
            try:
                await self._call(self._connect)
                adopted = await self._call(self._read_adopted)
            except BaseException as exc:
                self._opened.set_exception(exc)
                self._opened.exception()  # consumed: callers see it through `await`
                self._opened = None
                raise
            for spec in adopted:
                log.info("adopting the running Serve application of revision %s", spec.revision_id)
                self._revisions[spec.revision_id] = self._new_revision(spec)
            self._closed = False
            self._poller = asyncio.create_task(self._poll_loop(), name="ray runtime poller")
            self._opened.set_result(None)
        await self._opened

    def _connect(self) -> None:
        import ray

        if not ray.is_initialized():
            if self.external:
                connect(os.environ["RAY_ADDRESS"])
            else:
                token = self.settings.resolved_data_dir() / RAY_TOKEN_FILE
                self._temp_dir = start_private_ray(token)
                self.owns_ray = True
        start_serve(self.settings.ray_http_port)

    def _read_adopted(self) -> list[RevisionSpec]:
        from ray import serve

        specs = []
        for name in serve.status().applications:
            if not name.startswith(APP_PREFIX):
                continue
            raw = kv()._internal_kv_get(f"spec/{name}", namespace=KV_NAMESPACE)
            if raw:
                specs.append(spec_from_json(raw))
        return specs

    def _new_revision(self, spec: RevisionSpec) -> RayRevision:
        slots = [new_slot(spec.revision_id, i) for i in range(spec.replicas)]
        return RayRevision(spec, slots, next_index=spec.replicas)

    # ----- the interface ------------------------------------------------------------------
    async def start_revision(self, spec: RevisionSpec) -> None:
        await self.open()
        current = self._revisions.get(spec.revision_id)
        if current is not None and current.spec == spec:
            return
        if (
            current is not None
            and not current.deploy_error
            and count_change_only(current.spec, spec)
        ):
            await self._scale_in_place(current, spec)
            return
        if current is not None:
            await self.stop_revision(spec.revision_id)
        self._revisions[spec.revision_id] = self._new_revision(spec)
        self._notify(spec.revision_id)
        try:
            await self._call(self._deploy, spec)
        except Exception as exc:
            log.exception("deploying revision %s on Ray Serve failed", spec.revision_id)
            revision = self._revisions.get(spec.revision_id)
            if revision is not None:
                revision.deploy_error = f"Ray Serve refused the application: {exc}"
            self._set_all(spec.revision_id, ReplicaState.BACKOFF, f"Serve refused it: {exc}")

    async def _scale_in_place(self, revision: RayRevision, spec: RevisionSpec) -> None:
        """Set the application's `num_replicas`: Serve adds replicas beside the running ones,
        or stops the surplus it chooses, each of which drains itself first (see the module's
        docstring); their slots go once their replicas have (`assign`)."""
        before = revision.spec
        log.info(
            "revision %s: %d → %d replicas on Ray Serve",
            spec.revision_id,
            before.replicas,
            spec.replicas,
        )
        revision.spec = spec
        added = [
            new_slot(spec.revision_id, revision.next_index + i)
            for i in range(spec.replicas - len(revision.slots))
        ]
        revision.next_index += len(added)
        revision.slots.extend(added)
        self._notify(spec.revision_id)
        try:
            await self._call(self._deploy, spec)
        except Exception:  # the application runs on at its count; the next pass retries
            log.exception("scaling revision %s on Ray Serve failed", spec.revision_id)
            revision.spec = before
            revision.slots[:] = [
                slot for slot in revision.slots if all(slot is not a for a in added)
            ]
            self._notify(spec.revision_id)

    def code_version(self, spec: RevisionSpec, bind_args: tuple[str, ...]) -> str:
        """The Serve code version of a revision's application: a hash of everything its
        replicas run apart from their count (and the secret, which never changes for a
        revision). The same for a count change, so Serve keeps the running replicas (with
        `serve.run`'s random version it would replace every one)."""
        digest = hashlib.sha256(spec_to_json(replace(spec, replicas=0)))
        cls = self.replica_class
        for part in (f"{cls.__module__}.{cls.__qualname__}", *bind_args):
            digest.update(b"\0" + part.encode())
        return digest.hexdigest()[:16]

    def _deploy(self, spec: RevisionSpec) -> None:
        from ray import serve
        from ray.serve.api import RunTarget, _run_many  # the non-blocking form of serve.run

        name = app_name(spec.revision_id)
        raw = spec_to_json(spec)
        kv()._internal_kv_put(f"spec/{name}", raw, namespace=KV_NAMESPACE)
        # On an external cluster the router may run on another node: the protocol server
        # listens on every interface there, and the revision's secret is what guards it.
        report_host = LOOPBACK if not self.external else node_ip()
        bind_host = LOOPBACK if not self.external else "0.0.0.0"
        env_vars = replica_environment(
            spec.environment,
            self.settings.allowed_env_names(),
            threads=spec.threads,
            revision_id=spec.revision_id,
            inherit_base=False,
        )
        deployment = serve.deployment(
            self.replica_class,
            name=DEPLOYMENT,
            num_replicas=spec.replicas,
            max_ongoing_requests=self.settings.ray_max_ongoing_requests,
            ray_actor_options={
                "num_cpus": self.replica_num_cpus(spec),
                "num_gpus": spec.gpu,
                "runtime_env": {"env_vars": env_vars},
            },
            health_check_period_s=1.0,
            health_check_timeout_s=self.settings.replica_health_timeout_s,
            graceful_shutdown_wait_loop_s=0.2,
            # a replica Serve stops drains itself first (`ray_replica.SCALE_DOWN_DRAIN_S`)
            graceful_shutdown_timeout_s=SCALE_DOWN_DRAIN_S + self.settings.replica_stop_grace_s,
        )
        # A fixed version (`Deployment` has no public option for it any more): a deploy that
        # changes `num_replicas` alone keeps the running replicas.
        places = (str(self.onnx_cache_dir), bind_host, report_host)
        deployment._version = self.code_version(spec, places)
        # The secret travels as a bind argument, through Ray's authenticated channel; never in
        # `runtime_env` (an environment listing) or the KV spec.
        app = deployment.bind(raw, *places, spec.secret)
        _run_many(
            [RunTarget(target=app, name=name, route_prefix=f"/{name}")],
            wait_for_ingress_deployment_creation=False,
            wait_for_applications_running=False,
        )

    def replica_num_cpus(self, spec: RevisionSpec) -> float:
        """The CPU share a replica asks of Ray: a fraction, so green fits beside blue; half of
        it for a low-priority (staged) revision, whose replicas must leave the CPUs to the
        live revision's (Ray has no `nice`: fewer CPUs is its lower priority)."""
        divisor = 2 if spec.priority == "low" else 1
        if self.settings.ray_replica_num_cpus is not None:
            return self.settings.ray_replica_num_cpus / divisor
        return round(min(spec.threads, default_threads()) / default_threads() / 2 / divisor, 3)

    async def stop_revision(self, revision_id: str) -> None:
        known = self._revisions.pop(revision_id, None)
        if known is None and self._opened is None:
            return
        await self.open()
        await self._call(self._delete, revision_id)
        self._notify(revision_id)

    def _delete(self, revision_id: str) -> None:
        from ray import serve

        name = app_name(revision_id)
        store = kv()
        if name in serve.status().applications:
            # drained already (the caller's promise): its replicas stop without their wait
            store._internal_kv_put(f"{DELETING_PREFIX}{name}", b"1", namespace=KV_NAMESPACE)
            serve.delete(name, _blocking=True)
        for key in store._internal_kv_list(f"{name}/", namespace=KV_NAMESPACE):
            store._internal_kv_del(key, namespace=KV_NAMESPACE)
        store._internal_kv_del(f"spec/{name}", namespace=KV_NAMESPACE)
        store._internal_kv_del(f"{DELETING_PREFIX}{name}", namespace=KV_NAMESPACE)

    def scale_up_refusal(self, spec: RevisionSpec, add: int) -> str | None:
        """Why Ray cannot place `add` more replicas of the revision: not enough free CPUs (or
        GPUs) in the cluster for their share, as the last poll saw them; on a private Ray,
        whose replicas run on this machine, not enough memory either. Ray itself would leave
        such a replica pending for ever."""
        free = self._free
        if free is None:
            return None  # not polled yet: Ray will tell by leaving it pending
        cpus = self.replica_num_cpus(spec) * add
        if cpus > free.get("CPU", 0.0) + 1e-9:
            return (
                f"Not scaled up by {add} replica(s): they ask Ray for {cpus:g} CPU and the "
                f"cluster has {free.get('CPU', 0.0):g} free."
            )
        if spec.gpu and spec.gpu * add > free.get("GPU", 0.0):
            return (
                f"Not scaled up by {add} replica(s): they ask Ray for {spec.gpu * add} GPU and "
                f"the cluster has {math.floor(free.get('GPU', 0.0))} free."
            )
        if self.external:  # the replicas run on other machines: their memory is Ray's to place
            return None
        revision = self._revisions.get(spec.revision_id)
        return memory_refusal(spec, add, [s.status.pid for s in revision.slots] if revision else [])

    def replicas(self, revision_id: str) -> list[ReplicaStatus]:
        revision = self._revisions.get(revision_id)
        return [slot.status for slot in revision.slots] if revision else []

    def running(self) -> dict[str, RevisionSpec]:
        return {revision_id: known.spec for revision_id, known in self._revisions.items()}

    async def close(self) -> None:
        if self._closed or self._opened is None:
            self._revisions.clear()
            return
        self._closed = True
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        revision_ids = list(self._revisions)
        self._revisions.clear()
        if not self.keep_applications:
            for revision_id in revision_ids:
                await self._call(self._delete, revision_id)
        if self.owns_ray:
            await self._call(self._shutdown)
        self._opened = None

    def _shutdown(self) -> None:
        stop_private_ray(self._temp_dir)
        self.owns_ray = False

    # ----- observing Serve ------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            try:
                observation = await self._call(self._observe, list(self._revisions))
                self._free = observation.free
                self._apply(observation)
            except Exception:  # a failed poll is retried at the next tick
                log.exception("observing Ray Serve failed")
            await asyncio.sleep(self.poll_interval_s)

    def _observe(self, revision_ids: list[str]) -> Observation:
        import ray
        from ray import serve

        names = {app_name(r) for r in revision_ids}
        apps = {  # the status's value: `str()` of Serve's (str, Enum) is "ApplicationStatus.…"
            name: (str(getattr(status.status, "value", status.status)), status.message)
            for name, status in serve.status().applications.items()
            if name in names
        }
        alive: dict[str, set[str]] = {name: set() for name in names}
        for actor in ray.util.list_named_actors(all_namespaces=True):
            actor_name = actor["name"] if isinstance(actor, dict) else actor
            if not actor_name.startswith(ACTOR_PREFIX):
                continue
            app, _, rest = actor_name[len(ACTOR_PREFIX) :].partition("#")
            if app in alive:
                alive[app].add(rest.rpartition("#")[2])
        endpoints: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
        store = kv()
        for name in names:
            for key in store._internal_kv_list(f"{name}/", namespace=KV_NAMESPACE):
                serve_id = key.decode().rpartition("/")[2]
                if serve_id not in alive[name]:  # a dead replica's leftover
                    store._internal_kv_del(key, namespace=KV_NAMESPACE)
                    continue
                raw = store._internal_kv_get(key, namespace=KV_NAMESPACE)
                if raw:
                    endpoints[name][serve_id] = orjson.loads(raw)
        free = {key: float(value) for key, value in ray.available_resources().items()}
        return Observation(apps, alive, endpoints, free)

    def _apply(self, seen: Observation) -> None:
        for revision_id, revision in list(self._revisions.items()):
            name = app_name(revision_id)
            if name not in seen.alive or revision.deploy_error:
                continue  # started after this poll began, or never deployed
            before = [slot.status for slot in revision.slots]
            assign(
                revision.slots,
                seen.alive[name],
                seen.endpoints[name],
                seen.apps.get(name),
                wanted=revision.spec.replicas,
            )
            if [slot.status for slot in revision.slots] != before:
                self._notify(revision_id)

    def _set_all(self, revision_id: str, state: ReplicaState, message: str) -> None:
        revision = self._revisions.get(revision_id)
        if revision is None:
            return
        for slot in revision.slots:
            slot.status = replace(slot.status, state=state, message=message)
        self._notify(revision_id)


def assign(
    slots: list[Slot],
    alive: set[str],
    endpoints: dict[str, dict[str, Any]],
    app: tuple[str, str] | None,
    *,
    wanted: int | None = None,
) -> None:
    """Map Serve's replicas onto our stable slots (`<revision>-<i>`), counting replacements as
    restarts, and set each slot's status. While there are more slots than `wanted` replicas (a
    scale-down), the slots whose Serve replicas have gone are dropped instead, and those never
    filled. A replica that marks its endpoint `stopping` (it drains before Serve stops it) is
    STOPPING. Pure: the decision apart from talking to Ray."""
    for slot in slots:
        if slot.serve_id is not None and slot.serve_id not in alive:
            slot.serve_id = None  # its Serve replica died; Serve starts another
    if wanted is not None:
        drop_surplus(slots, wanted)
    taken = {slot.serve_id for slot in slots}
    newcomers = sorted(alive - taken, key=lambda s: (s not in endpoints, s))
    app_status, app_message = app or ("DEPLOYING", "")
    for slot in slots:
        if slot.serve_id is None and newcomers:
            slot.serve_id = newcomers.pop(0)
            if slot.had_replica:
                slot.status = replace(slot.status, restarts=slot.status.restarts + 1)
            slot.had_replica = True
        endpoint = endpoints.get(slot.serve_id) if slot.serve_id else None
        if endpoint is not None:
            changes: dict[str, Any] = dict(
                state=ReplicaState.STOPPING if endpoint.get("stopping") else ReplicaState.READY,
                host=endpoint["host"],
                port=int(endpoint["port"]),
                pid=int(endpoint["pid"]),
                message="draining: Ray Serve stops it" if endpoint.get("stopping") else "",
            )
        elif app_status == "DEPLOY_FAILED" or (slot.had_replica and slot.serve_id is None):
            changes = dict(
                state=ReplicaState.BACKOFF,
                host=None,
                port=None,
                pid=None,
                message=app_message or "the Serve replica died; Serve is starting another",
            )
        else:
            changes = dict(
                state=ReplicaState.STARTING, host=None, port=None, pid=None, message="loading model"
            )
        slot.status = replace(slot.status, **changes)


def drop_surplus(slots: list[Slot], wanted: int) -> None:
    """Down to `wanted` slots, dropping first those whose Serve replica has gone (stopped by
    the scale-down), then those that never had one (the newest first)."""
    gone = [slot for slot in slots if slot.serve_id is None and slot.had_replica]
    empty = [slot for slot in reversed(slots) if slot.serve_id is None and not slot.had_replica]
    leaving = {id(slot) for slot in (gone + empty)[: max(len(slots) - wanted, 0)]}
    slots[:] = [slot for slot in slots if id(slot) not in leaving]
