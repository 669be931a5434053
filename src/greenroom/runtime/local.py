"""The local runtime: replica processes on this machine, owned by the supervisor.

The supervisor lives in the `greenroom serve` process. Each replica slot is one asyncio task that
starts the replica process, waits for its ready line, health-checks it (a real embed) and restarts
it with exponential back-off when it exits or stops answering. Replicas bind loopback only and die
with this process (parent-death signal), so a killed server leaves no orphans. A replica starts
with the minimal environment of `environment.replica_environment` (never the server's, which
holds `GREENROOM_*` secrets) and gets its revision's secret through its standard input. A
low-priority (staged) revision's replicas run `settings.staged_nice` nicer than live ones. A
running revision's new spec (its priority) is handed over (`greenroom.runtime.handover`): new
replicas start beside the old, which stop once the new ones are ready. A change of the
replica count alone (the autoscaler's) is made in place: new slots start beside the running
ones (a replica is READY, and takes traffic, only after its warm-up embed), or the surplus is
drained (STOPPING for `SCALE_DOWN_DRAIN_S`, so every router moves its queued batches away)
and stopped, in the background (the supervisor's pass goes on; a replica on its way out is no
longer one of the revision's count); the other replicas are never restarted. Before a
scale-up the supervisor asks `scale_up_refusal`: the memory a replica of the revision takes
(the largest resident size of its running replicas, or an estimate from the model's files)
against `MemAvailable`. The next replica like the one started last runs in the spare process
(`greenroom.runtime.spare`, `settings.replica_spare`): its interpreter and engine modules are
loaded already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import orjson
from threadpoolctl import threadpool_limits

from greenroom.config import Settings
from greenroom.runtime.base import ReplicaState, ReplicaStatus, RevisionSpec, RuntimeBackend
from greenroom.runtime.environment import replica_environment
from greenroom.runtime.handover import Handovers, count_change_only, surplus
from greenroom.runtime.protocol import ReplicaClient
from greenroom.runtime.spare import REPLICA_COMMAND, SpareProcess, assign

log = logging.getLogger("greenroom.runtime.local")
LOOPBACK = "127.0.0.1"
HEALTHY_RESETS_BACKOFF_S = 30.0
# a replica taken out by a scale-down is reported STOPPING this long before it is signalled:
# routers in other processes learn it from the store's reports (a pass at least every second)
SCALE_DOWN_DRAIN_S = 2.0
# the memory of a replica not yet measured: its model's files times this, plus the runtime's own
MODEL_MEMORY_FACTOR = 2.0
REPLICA_BASE_BYTES = 200 * 2**20
MIB = 2**20


def available_memory() -> int | None:
    """The bytes the kernel says new processes can still get (`MemAvailable`); None when
    unknown (not Linux)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def resident_memory(pid: int) -> int | None:
    """The resident size of a process in bytes (`VmRSS`); None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def model_bytes(model_path: Path) -> int:
    """The size of a model's files."""
    if model_path.is_file():
        return model_path.stat().st_size
    return sum(p.stat().st_size for p in model_path.rglob("*") if p.is_file())


def estimated_replica_bytes(model_path: Path) -> int:
    """The memory of a replica of this model that does not run yet."""
    return int(model_bytes(model_path) * MODEL_MEMORY_FACTOR) + REPLICA_BASE_BYTES


def memory_refusal(spec: RevisionSpec, add: int, pids: Iterable[int | None]) -> str | None:
    """Why `add` more replicas of the revision do not fit this machine's free memory, or None:
    each takes the largest resident size of its running replicas (`pids`), or the estimate
    from the model's files when none runs."""
    available = available_memory()
    if available is None:
        return None
    measured = [
        rss for pid in pids if pid is not None and (rss := resident_memory(pid)) is not None
    ]
    if measured:
        each, basis = max(measured), "the resident size of a running replica"
    else:
        each, basis = estimated_replica_bytes(spec.model_path), "estimated from the model's files"
    if each * add <= available:
        return None
    return (
        f"Not scaled up by {add} replica(s): each takes about {each // MIB} MiB ({basis}) "
        f"and only {available // MIB} MiB of memory is available."
    )


async def hand_over_secret(process: asyncio.subprocess.Process, secret: str) -> None:
    """Write the revision's secret as the first line of the replica's standard input and close
    it: a pipe only the two processes hold (never argv, never the environment)."""
    assert process.stdin is not None
    with contextlib.suppress(ConnectionError):  # it died at once: its exit code tells why
        process.stdin.write(secret.encode() + b"\n")
        await process.stdin.drain()
    process.stdin.close()


class ReplicaSlot:
    """Keeps one replica of a revision running until stopped."""

    def __init__(self, runtime: LocalRuntime, spec: RevisionSpec, index: int) -> None:
        self.runtime = runtime
        self.spec = spec
        self.status = ReplicaStatus(
            replica_id=f"{spec.revision_id}-{index}",
            revision_id=spec.revision_id,
            state=ReplicaState.STARTING,
        )
        self.process: asyncio.subprocess.Process | None = None
        self._env: dict[str, str] = {}  # the process's environment, set by `_spawn`
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"replica {self.status.replica_id}")

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    def _set(self, **changes: object) -> None:
        self.status = replace(self.status, **changes)  # type: ignore[arg-type]
        self.runtime._notify(self.spec.revision_id)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            loop = asyncio.get_running_loop()
            started = loop.time()
            message = await self._run_once()
            if self._stopping:
                break
            failures = 0 if loop.time() - started > HEALTHY_RESETS_BACKOFF_S else failures + 1
            delay = min(
                self.settings.replica_backoff_initial_s * 2 ** max(failures - 1, 0),
                self.settings.replica_backoff_max_s,
            )
            log.warning(
                "replica %s down (%s); restart in %.1fs", self.status.replica_id, message, delay
            )
            self._set(
                state=ReplicaState.BACKOFF,
                port=None,
                pid=None,
                restarts=self.status.restarts + 1,
                message=message,
            )
            await asyncio.sleep(delay)
        self._set(state=ReplicaState.STOPPED, port=None, pid=None)

    async def _run_once(self) -> str:
        """Start the process and watch it; returns why it went down."""
        self._set(state=ReplicaState.STARTING, message="loading model")
        spawned_at = asyncio.get_running_loop().time()
        self.process = await self._spawn()
        try:
            port = await asyncio.wait_for(
                self._read_ready_port(), self.settings.replica_start_timeout_s
            )
        except (TimeoutError, ValueError) as exc:
            await self._kill()
            return f"did not become ready: {exc or 'timed out'}"
        if port is None:
            code = await self.process.wait()
            reason = self._last_log_line()
            return f"exited with code {code} while starting: {reason}; see {self._log_path()}"
        log.info(
            "replica %s ready on port %d, %.2f s after its spawn",
            self.status.replica_id,
            port,
            asyncio.get_running_loop().time() - spawned_at,
        )
        self._set(
            state=ReplicaState.READY, host=LOOPBACK, port=port, pid=self.process.pid, message=""
        )
        if self.runtime.spare is not None:
            self.runtime.spare.want(self._env, self.spec.engine)  # for the next start like it
        return await self._watch(port)

    async def _spawn(self) -> asyncio.subprocess.Process:
        spec = self.spec
        args = [
            "--model-path", str(spec.model_path),
            "--content-hash", spec.content_hash,
            "--engine", spec.engine,
            "--quantization", spec.quantization,
            "--threads", str(spec.threads),
            "--gpu", str(spec.gpu),
            "--cache-dir", str(self.runtime.onnx_cache_dir),
            "--host", LOOPBACK,
            "--parent-pid", str(os.getpid()),
            "--max-batch-size", str(spec.max_batch_size),
        ]  # fmt: skip
        if spec.priority == "low":  # a staged revision's replica yields the CPU to live ones
            args += ["--nice", str(self.settings.staged_nice)]
        self._env = replica_environment(
            spec.environment,
            self.settings.allowed_env_names(),
            threads=spec.threads,
            revision_id=spec.revision_id,
        )
        spare = self.runtime.spare
        process = spare.take(self._env, spec.engine) if spare is not None else None
        if process is not None and await assign(process, args, spec.secret, self._log_path()):
            log.info("replica %s runs in the spare process %d", self.status.replica_id, process.pid)
            return process
        log_file = self._log_path().open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *REPLICA_COMMAND,
                *args,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                stdin=asyncio.subprocess.PIPE,
                env=self._env,
            )
        finally:
            log_file.close()
        await hand_over_secret(process, spec.secret)
        return process

    def _log_path(self) -> Path:
        return self.runtime.log_dir / f"replica-{self.status.replica_id}.log"

    def _last_log_line(self) -> str:
        """The replica's last words (usually the exception that stopped it)."""
        try:
            lines = self._log_path().read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1][-500:] if lines else "no output"

    async def _read_ready_port(self) -> int | None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            with contextlib.suppress(ValueError):
                event = orjson.loads(line)
                if isinstance(event, dict) and event.get("event") == "ready":
                    return int(event["port"])
        return None

    async def _watch(self, port: int) -> str:
        """Wait for the process to exit or fail a health check."""
        assert self.process is not None
        exited = asyncio.create_task(self.process.wait())
        client = ReplicaClient(LOOPBACK, port, self.spec.secret)
        try:
            while True:
                done, _ = await asyncio.wait(
                    {exited}, timeout=self.settings.replica_health_interval_s
                )
                if done:
                    return f"exited with code {exited.result()}; see {self._log_path()}"
                try:
                    await asyncio.wait_for(client.health(), self.settings.replica_health_timeout_s)
                except Exception as exc:  # any failure, a timeout included, is unhealthy
                    if self._stopping:
                        return "stopped"
                    await self._kill()
                    return f"failed its health check: {exc!r}"
        finally:
            exited.cancel()
            await client.close()

    @property
    def leaving(self) -> bool:
        """Taken out by a scale-down (or stopping): no longer one of the revision's count."""
        return self._stopping

    def begin_retiring(self) -> None:
        """Scale-down: reported STOPPING at once, so routers send it nothing new and move its
        queued batches elsewhere; `finish_retiring` stops it after the drain."""
        self._stopping = True
        self._set(state=ReplicaState.STOPPING)

    async def finish_retiring(self, drain_s: float) -> None:
        await asyncio.sleep(drain_s)
        await self.stop()

    async def stop(self) -> None:
        """Graceful stop (SIGTERM), forced after the grace period."""
        self._stopping = True
        self._set(state=ReplicaState.STOPPING)
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.settings.replica_stop_grace_s)
            except TimeoutError:
                await self._kill()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.status = replace(self.status, state=ReplicaState.STOPPED, port=None, pid=None)

    async def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


def keep_blas_to_one_thread() -> None:
    """This process forks replica processes (uvloop spawns with `fork()`) while other threads
    may be in a BLAS call (an adapter's fit or its application, shadow comparisons). OpenBLAS's
    fork handler then waits forever for its busy worker threads, and the event loop with it; with
    BLAS on one thread there is no worker to wait for. The API process serves while it fits, so
    one BLAS thread is also what leaves the replicas their cores."""
    threadpool_limits(1, user_api="blas")


class LocalRuntime(RuntimeBackend):
    """Replica processes on this machine, one slot task per replica."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        keep_blas_to_one_thread()
        self.onnx_cache_dir = settings.resolved_onnx_cache_dir()
        self.log_dir = settings.resolved_data_dir() / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._specs: dict[str, RevisionSpec] = {}
        self._slots: dict[str, list[ReplicaSlot]] = {}
        self._started: dict[str, int] = {}  # replicas ever started per revision: the next index
        self._handovers: Handovers[ReplicaSlot] = Handovers(self._notify)
        self._retiring: dict[str, set[asyncio.Task[None]]] = {}  # scale-downs draining
        self.spare = (
            SpareProcess(parent_pid=os.getpid(), log_path=self.log_dir / "replica-spare.log")
            if settings.replica_spare
            else None
        )

    async def start_revision(self, spec: RevisionSpec) -> None:
        revision_id = spec.revision_id
        running = self._specs.get(revision_id)
        if running == spec:
            return
        self._specs[revision_id] = spec
        if count_change_only(running, spec) and not self._handovers.active(revision_id):
            await self._scale_in_place(spec)
            return
        new = self._new_slots(spec, spec.replicas)
        if revision_id not in self._slots:
            self._slots[revision_id] = new
            self._notify(revision_id)
            return
        await self._handovers.start(
            revision_id, self._slots[revision_id], new, self.settings.replica_start_timeout_s
        )

    def _new_slots(self, spec: RevisionSpec, count: int) -> list[ReplicaSlot]:
        first = self._started.get(spec.revision_id, 0)
        self._started[spec.revision_id] = first + count
        return [ReplicaSlot(self, spec, first + i) for i in range(count)]

    async def _scale_in_place(self, spec: RevisionSpec) -> None:
        """Add slots up to `spec.replicas`, or drain and stop the surplus; the rest run on."""
        slots = self._slots.setdefault(spec.revision_id, [])
        staying = [slot for slot in slots if not slot.leaving]  # a drain may still be going on
        for slot in staying:
            slot.spec = spec
        log.info("revision %s: %d → %d replicas", spec.revision_id, len(staying), spec.replicas)
        if spec.replicas > len(staying):
            slots.extend(self._new_slots(spec, spec.replicas - len(staying)))
            self._notify(spec.revision_id)
            return
        leaving = surplus(staying, spec.replicas)
        for slot in leaving:
            slot.begin_retiring()
        # drained in the background: the supervisor's pass (other revisions' starts) goes on
        task = asyncio.create_task(self._retire(spec.revision_id, slots, leaving))
        self._retiring.setdefault(spec.revision_id, set()).add(task)
        task.add_done_callback(self._retiring[spec.revision_id].discard)

    async def _retire(
        self, revision_id: str, slots: list[ReplicaSlot], leaving: list[ReplicaSlot]
    ) -> None:
        await asyncio.gather(*(slot.finish_retiring(SCALE_DOWN_DRAIN_S) for slot in leaving))
        slots[:] = [slot for slot in slots if slot not in leaving]
        self._notify(revision_id)

    def scale_up_refusal(self, spec: RevisionSpec, add: int) -> str | None:
        pids = [slot.status.pid for slot in self._slots.get(spec.revision_id, [])]
        return memory_refusal(spec, add, pids)

    async def stop_revision(self, revision_id: str) -> None:
        await self._handovers.cancel(revision_id)
        for task in self._retiring.pop(revision_id, set()):
            task.cancel()  # its slots stop with the others, below
        slots = self._slots.pop(revision_id, [])
        self._specs.pop(revision_id, None)
        self._started.pop(revision_id, None)
        await asyncio.gather(*(slot.stop() for slot in slots))
        self._notify(revision_id)

    def replicas(self, revision_id: str) -> list[ReplicaStatus]:
        return [slot.status for slot in self._slots.get(revision_id, [])]

    def running(self) -> dict[str, RevisionSpec]:
        return dict(self._specs)

    async def close(self) -> None:
        if self.spare is not None:
            await self.spare.close()
        await asyncio.gather(*(self.stop_revision(r) for r in list(self._slots)))
