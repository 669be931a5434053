from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conformance import (
    READY_DEADLINE_S,
    RuntimeConformance,
    assert_unit_vectors,
    embed_probe,
    wait_ready,
)
from helpers import async_test, pid_alive, wait_until

from greenroom.config import Settings
from greenroom.registry.weights import content_hash
from greenroom.runtime import local
from greenroom.runtime.base import ReplicaState, RevisionSpec, RuntimeBackend
from greenroom.runtime.local import LocalRuntime

LOCAL_PARENT = Path(__file__).with_name("local_parent.py")
PARENT_DEATH_DEADLINE_S = 30.0
SECRET = "5e" * 32


def local_runtime(data_dir: Path, onnx_cache_dir: Path) -> LocalRuntime:
    """A LocalRuntime that restarts and health-checks quickly and shares the ONNX cache."""
    settings = Settings(
        data_dir=data_dir,
        replica_start_timeout_s=READY_DEADLINE_S,
        replica_health_interval_s=0.5,
        replica_health_timeout_s=10.0,
        replica_backoff_initial_s=0.1,
        replica_backoff_max_s=1.0,
        replica_stop_grace_s=5.0,
    )
    runtime = LocalRuntime(settings)
    runtime.onnx_cache_dir = onnx_cache_dir
    return runtime


def revision_spec(
    revision_id: str, model_dir: Path, *, threads: int, priority: str = "normal"
) -> RevisionSpec:
    return RevisionSpec(
        revision_id,
        model_dir,
        content_hash(model_dir),
        threads=threads,
        priority=priority,
        secret=SECRET,
    )


class TestLocalRuntimeConformance(RuntimeConformance):
    @pytest.fixture(autouse=True)
    def _dirs(self, tmp_path: Path, onnx_cache_dir: Path) -> None:
        self.data_dir = tmp_path / "data"
        self.onnx_cache_dir = onnx_cache_dir

    async def make_backend(self) -> RuntimeBackend:
        return local_runtime(self.data_dir, self.onnx_cache_dir)


def test_data_dir_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GREENROOM_ONNX_CACHE_DIR")  # the tests' shared cache (conftest)
    runtime = LocalRuntime(Settings(data_dir=tmp_path))
    assert runtime.onnx_cache_dir == tmp_path / "onnx"
    moved = LocalRuntime(Settings(data_dir=tmp_path, onnx_cache_dir=tmp_path / "exports"))
    assert moved.onnx_cache_dir == tmp_path / "exports"
    assert runtime.log_dir == tmp_path / "logs"
    assert runtime.log_dir.is_dir()


@async_test
async def test_replica_writes_its_log_file(
    tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path
) -> None:
    runtime = local_runtime(tmp_path, onnx_cache_dir)
    try:
        spec = RevisionSpec(
            "rev-log", tiny_model_dir, content_hash(tiny_model_dir), threads=1, secret=SECRET
        )
        await runtime.start_revision(spec)
        (replica,) = await wait_ready(runtime, "rev-log", 1)
        assert (runtime.log_dir / f"replica-{replica.replica_id}.log").is_file()
    finally:
        await runtime.close()


@async_test
async def test_replica_that_cannot_start_backs_off_and_says_why(
    tmp_path: Path, onnx_cache_dir: Path
) -> None:
    missing = tmp_path / "no-such-model"
    runtime = local_runtime(tmp_path, onnx_cache_dir)
    try:
        await runtime.start_revision(
            RevisionSpec("rev-bad", missing, "0", threads=1, secret=SECRET)
        )

        def backed_off() -> bool:
            (replica,) = runtime.replicas("rev-bad")
            return replica.state is ReplicaState.BACKOFF

        await wait_until(backed_off, deadline_s=READY_DEADLINE_S, what="a replica in back-off")
        (replica,) = runtime.replicas("rev-bad")
        assert replica.restarts >= 1
        assert replica.endpoint is None
        assert "while starting" in replica.message
        assert "config.json cannot be read" in replica.message  # the reason, not only "exited"
        log_file = runtime.log_dir / f"replica-{replica.replica_id}.log"
        assert "ModelSourceError" in log_file.read_text()
    finally:
        await runtime.close()
    assert runtime.replicas("rev-bad") == []


@async_test
async def test_replicas_die_with_the_process_that_owns_them(
    tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path
) -> None:
    with (tmp_path / "parent.log").open("wb") as parent_log:
        parent = await asyncio.create_subprocess_exec(
            sys.executable, str(LOCAL_PARENT), str(tiny_model_dir), str(tmp_path),
            str(onnx_cache_dir),
            stdout=asyncio.subprocess.PIPE, stderr=parent_log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    replica_pids: list[int] = []
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(parent.stdout.readline(), READY_DEADLINE_S)
        assert line, f"the parent exited early; see {tmp_path / 'parent.log'}"
        replica_pids = json.loads(line)["pids"]
        assert replica_pids and all(pid_alive(pid) for pid in replica_pids)

        parent.kill()  # SIGKILL: no chance to stop its replicas itself
        await parent.wait()
        await wait_until(
            lambda: not any(pid_alive(pid) for pid in replica_pids),
            deadline_s=PARENT_DEATH_DEADLINE_S,
            what="the orphaned replica to exit",
        )
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()
        for pid in replica_pids:  # only if the test failed: never leave an orphan behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def thread_nice_values(pid: int) -> list[int]:
    """The niceness of every thread of a process (field 19 of /proc/<pid>/task/<tid>/stat): on
    Linux each thread has its own, so every one must have been started after the replica
    lowered its priority."""
    values = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        fields = stat.read_text().rpartition(")")[2].split()  # after "pid (comm)"
        values.append(int(fields[19 - 3]))  # field 19, counted from 1; fields 1-2 are gone
    return values


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@async_test
async def test_a_low_priority_replica_runs_nicer_than_a_normal_one(
    tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path
) -> None:
    runtime = local_runtime(tmp_path, onnx_cache_dir)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    expected = min(19, base + runtime.settings.staged_nice)
    assert runtime.settings.staged_nice >= 10
    try:
        for revision_id, priority in (("rev-live", "normal"), ("rev-staged", "low")):
            await runtime.start_revision(
                revision_spec(revision_id, tiny_model_dir, threads=2, priority=priority)
            )
        (live,) = await wait_ready(runtime, "rev-live", 1)
        (staged,) = await wait_ready(runtime, "rev-staged", 1)
        assert live.pid is not None and staged.pid is not None
        assert os.getpriority(os.PRIO_PROCESS, live.pid) == base
        assert os.getpriority(os.PRIO_PROCESS, staged.pid) == expected >= 10
        staged_threads = thread_nice_values(staged.pid)
        assert len(staged_threads) > 1  # the engine's and the executor's threads too
        assert set(staged_threads) == {expected}
        assert set(thread_nice_values(live.pid)) == {base}
    finally:
        await runtime.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@async_test
async def test_a_count_change_scales_in_place_without_restarting_the_first_replica(
    tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 → 2 → 1: a replica is added beside the first, then the surplus drains (STOPPING
    first) and stops; the first one's process runs throughout."""
    monkeypatch.setattr(local, "SCALE_DOWN_DRAIN_S", 0.2)
    runtime = local_runtime(tmp_path, onnx_cache_dir)
    seen: list[list[ReplicaState]] = []
    runtime.subscribe(lambda rid: seen.append([r.state for r in runtime.replicas(rid)]))
    spec = RevisionSpec(
        "rev-scale", tiny_model_dir, content_hash(tiny_model_dir), threads=1, secret=SECRET
    )
    try:
        await runtime.start_revision(spec)
        (first,) = await wait_ready(runtime, "rev-scale", 1)
        assert runtime.scale_up_refusal(spec, 1) is None  # the test machine has the memory

        await runtime.start_revision(replace(spec, replicas=2))
        both = await wait_ready(runtime, "rev-scale", 2)
        assert [r.replica_id for r in both] == ["rev-scale-0", "rev-scale-1"]
        assert both[0].pid == first.pid and pid_alive(first.pid)
        second = both[1]

        seen.clear()
        await runtime.start_revision(spec)
        # the drain goes on in the background: the supervisor's pass is not held up by it
        states = [(r.replica_id, r.state) for r in runtime.replicas("rev-scale")]
        assert states == [
            ("rev-scale-0", ReplicaState.READY),
            ("rev-scale-1", ReplicaState.STOPPING),
        ]
        await wait_until(lambda: len(runtime.replicas("rev-scale")) == 1, what="the drain")
        (left,) = runtime.replicas("rev-scale")
        assert left.replica_id == "rev-scale-0" and left.state is ReplicaState.READY
        assert left.pid == first.pid and pid_alive(first.pid)
        assert second.pid is not None and not pid_alive(second.pid)
        # drained first: reported STOPPING beside the ready first replica before it went
        assert [ReplicaState.READY, ReplicaState.STOPPING] in seen
        assert runtime.running()["rev-scale"].replicas == 1
    finally:
        await runtime.close()


@async_test
async def test_a_scale_up_while_a_scale_down_drains_counts_only_the_replicas_that_stay(
    tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 → 1 → 2 within the drain: the replica on its way out is not one of the two."""
    monkeypatch.setattr(local, "SCALE_DOWN_DRAIN_S", 1.0)
    runtime = local_runtime(tmp_path, onnx_cache_dir)
    spec = RevisionSpec(
        "rev-back", tiny_model_dir, content_hash(tiny_model_dir), threads=1, secret=SECRET
    )
    two = replace(spec, replicas=2)
    try:
        await runtime.start_revision(two)
        first_two = await wait_ready(runtime, "rev-back", 2)
        await runtime.start_revision(spec)
        await runtime.start_revision(two)
        await wait_until(
            lambda: (
                [r.state for r in runtime.replicas("rev-back")]
                == [ReplicaState.READY, ReplicaState.READY]
            ),
            deadline_s=60,
            what="two ready replicas and the drained one gone",
        )
        ids = [r.replica_id for r in runtime.replicas("rev-back")]
        assert ids == ["rev-back-0", "rev-back-2"]  # the drained rev-back-1 did not come back
        assert {r.replica_id for r in first_two} == {"rev-back-0", "rev-back-1"}
    finally:
        await runtime.close()


@async_test
async def test_a_scale_up_without_the_memory_for_it_is_refused_with_a_reason(
    tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = local_runtime(tmp_path, onnx_cache_dir)
    spec = RevisionSpec("rev-mem", tiny_model_dir, content_hash(tiny_model_dir), secret=SECRET)
    each = int(local.model_bytes(tiny_model_dir) * local.MODEL_MEMORY_FACTOR)
    each += local.REPLICA_BASE_BYTES
    monkeypatch.setattr(local, "available_memory", lambda: 2 * each)
    assert runtime.scale_up_refusal(spec, 2) is None
    reason = runtime.scale_up_refusal(spec, 3)
    assert reason is not None
    assert "Not scaled up by 3 replica(s)" in reason
    assert f"{each // local.MIB} MiB (estimated from the model's files)" in reason
    assert f"only {2 * each // local.MIB} MiB" in reason

    # a running replica's resident size is the measure once there is one
    await runtime.start_revision(spec)
    try:
        await wait_ready(runtime, "rev-mem", 1)
        monkeypatch.setattr(local, "resident_memory", lambda pid: 3 * each)
        reason = runtime.scale_up_refusal(spec, 1)
        assert reason is not None and "the resident size of a running replica" in reason
    finally:
        await runtime.close()


# ----- the spare replica process --------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@async_test
async def test_the_next_replica_like_the_last_one_runs_in_the_spare_process(
    tmp_path: Path, tiny_model_dir: Path, onnx_cache_dir: Path
) -> None:
    runtime = local_runtime(tmp_path, onnx_cache_dir)
    spare = runtime.spare
    assert spare is not None  # on by default
    spare.delay_s = 0.1
    spare_pids: list[int] = []
    try:
        await runtime.start_revision(revision_spec("rev-a", tiny_model_dir, threads=1))
        (first,) = await wait_ready(runtime, "rev-a", 1)
        await wait_until(lambda: spare.pid is not None, deadline_s=30, what="a spare")
        assert spare.pid is not None and spare.pid != first.pid
        spare_pids.append(spare.pid)

        # the same environment (a staged one: its niceness is raised after the spare's start)
        low = revision_spec("rev-b", tiny_model_dir, threads=1, priority="low")
        await runtime.start_revision(low)
        (second,) = await wait_ready(runtime, "rev-b", 1)
        assert second.pid == spare_pids[0]
        assert_unit_vectors(await embed_probe(second, low), None)  # the revision's secret
        replica_log = (runtime.log_dir / f"replica-{second.replica_id}.log").read_text()
        assert "it was the spare" in replica_log and "model loaded" in replica_log
        nicer = min(19, os.getpriority(os.PRIO_PROCESS, 0) + runtime.settings.staged_nice)
        assert set(thread_nice_values(second.pid)) == {nicer}

        await wait_until(
            lambda: spare.pid not in (None, spare_pids[0]), deadline_s=30, what="the next spare"
        )
        assert spare.pid is not None
        spare_pids.append(spare.pid)
        # another environment (2 engine threads) starts a process of its own
        await runtime.start_revision(revision_spec("rev-c", tiny_model_dir, threads=2))
        (third,) = await wait_ready(runtime, "rev-c", 1)
        assert third.pid not in spare_pids
        await wait_until(
            lambda: spare.pid not in (None, *spare_pids), deadline_s=30, what="its spare"
        )
        assert spare.pid is not None
        spare_pids.append(spare.pid)
        assert not pid_alive(spare_pids[1])  # the spare of the other environment is gone
    finally:
        await runtime.close()
    assert spare.pid is None
    assert not any(pid_alive(pid) for pid in spare_pids)


def test_without_the_spare_setting_no_spare_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GREENROOM_REPLICA_SPARE", "false")
    assert LocalRuntime(Settings(data_dir=tmp_path)).spare is None


@async_test
async def test_an_unassigned_spare_exits_when_its_input_closes() -> None:
    spare = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "greenroom.runtime.replica", "--spare", "onnx",
        "--parent-pid", str(os.getpid()),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert spare.stdin is not None
        spare.stdin.close()
        assert await asyncio.wait_for(spare.wait(), 30) == 0
        assert spare.stdout is not None and await spare.stdout.read() == b""  # no ready line
    finally:
        if spare.returncode is None:
            spare.kill()
            await spare.wait()


FORK_WHILE_BLAS = """
import asyncio, sys, threading, time
import numpy as np
import uvloop
from greenroom.config import Settings
from greenroom.runtime.local import LocalRuntime

LocalRuntime(Settings(data_dir=sys.argv[1]))
busy = np.random.default_rng(0).random((1000, 1000))
stop = threading.Event()

def multiply():
    while not stop.is_set():
        busy @ busy

worker = threading.Thread(target=multiply)
worker.start()

async def spawn_for(seconds):
    spawned, until = 0, time.monotonic() + seconds
    while time.monotonic() < until:
        process = await asyncio.create_subprocess_exec("/bin/true")
        await process.wait()
        spawned += 1
    print(spawned)

try:
    uvloop.run(spawn_for(float(sys.argv[2])))
finally:  # a daemon thread still in a matmul when the interpreter ends can crash it (SIGSEGV)
    stop.set()
    worker.join()
"""


def test_replicas_can_be_forked_while_another_thread_runs_blas(tmp_path: Path) -> None:
    """OpenBLAS's fork handler deadlocks a fork while one of its threads works for another
    thread (an adapter's fit in the API process); the local runtime keeps BLAS to one thread.
    With BLAS's default threads (2 here) and these matrices, 3 runs in 4 hung within 8 s."""
    script = tmp_path / "fork_while_blas.py"
    script.write_text(FORK_WHILE_BLAS)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data"), "8"],
        capture_output=True,
        text=True,
        timeout=40,
    )  # a hang is a TimeoutExpired
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) > 50
