"""Exactly once: worker processes share one store and run every task once, one per served name
at a time, through the real claim and lease code (a recording task handler, no replicas)."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until_sync
from sqlalchemy import delete, select
from task_rows import add_tasks, count_by_status

from greenroom.store.db import Store
from greenroom.store.migrations import upgrade
from greenroom.tasks.models import Task
from greenroom.tasks.states import TaskStatus

SCRIPT = Path(__file__).resolve().parent / "exactly_once_worker.py"
TASKS = 200
SERVED_NAMES = 50
DEADLINE_S = 25.0


@pytest.fixture
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The store the worker processes share; its task table is emptied before and after."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_database_url")
    else:
        url = f"sqlite:///{tmp_path / 'greenroom.db'}"
        upgrade(url)
    store = Store(url)
    empty_tasks(store)
    try:
        yield store
    finally:
        empty_tasks(store)
        store.dispose()


def empty_tasks(store: Store) -> None:
    with store.session_scope() as db_session:
        db_session.execute(delete(Task))


@pytest.mark.parametrize(
    ("shared_store", "processes"),
    [("postgresql", 4), ("sqlite", 2)],
    indirect=["shared_store"],
)
def test_every_task_runs_exactly_once(shared_store: Store, processes: int, tmp_path: Path) -> None:
    ids = add_tasks(shared_store, (f"name-{n % SERVED_NAMES}" for n in range(TASKS)))
    record_files = [tmp_path / f"worker-{n}.jsonl" for n in range(processes)]

    with worker_processes(shared_store.url, record_files) as workers:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        wait_until_sync(
            lambda: (
                count_by_status(shared_store, TaskStatus.DONE) == TASKS
                or any(worker.poll() is not None for worker in workers)
            ),
            deadline_s=DEADLINE_S,
            interval_s=0.1,
            what=f"{TASKS} tasks done",
        )
        for worker, path in zip(workers, record_files, strict=True):
            assert worker.poll() is None, f"a worker process died: {log_tail(path)}"

    records = [json.loads(line) for path in record_files for line in path.read_text().splitlines()]
    starts = Counter(r["task"] for r in records if r["event"] == "start")
    ends = Counter(r["task"] for r in records if r["event"] == "end")
    assert starts == ends == Counter(ids)  # every task ran once and ended once
    workers_with_work = {r["worker"] for r in records}
    assert len(workers_with_work) > 1
    assert_one_at_a_time_per_name(shared_store, records)
    with shared_store.session_scope() as db_session:
        rows = db_session.execute(select(Task.status, Task.attempts, Task.lease_owner)).all()
    assert set(rows) == {("done", 1, None)}


def assert_one_at_a_time_per_name(store: Store, records: list[dict[str, object]]) -> None:
    """The runs of each served name never overlap and follow the order the tasks came in."""
    with store.session_scope() as db_session:
        tasks = db_session.execute(
            select(Task.id, Task.embedding_model_id).order_by(Task.created_at, Task.id)
        ).all()
    runs: dict[str, dict[str, float]] = defaultdict(dict)
    for record in records:
        runs[str(record["task"])][str(record["event"])] = float(str(record["at"]))
    expected: dict[str, list[str]] = defaultdict(list)
    for task_id, name in tasks:
        expected[name].append(task_id)
    for name, task_ids in expected.items():
        ran = sorted(task_ids, key=lambda task_id: runs[task_id]["start"])
        assert ran == task_ids, f"the tasks of {name} ran out of order"
        for before, after in itertools.pairwise(ran):
            assert runs[before]["end"] < runs[after]["start"], f"two tasks of {name} ran at once"


@contextlib.contextmanager
def worker_processes(
    database_url: str, record_files: list[Path]
) -> Iterator[list[subprocess.Popen[str]]]:
    """Start one worker process per record file, wait until each is ready; stop them all."""
    workers: list[subprocess.Popen[str]] = []
    try:
        for n, path in enumerate(record_files):
            with path.with_suffix(".log").open("w") as log:
                workers.append(
                    subprocess.Popen(
                        [sys.executable, str(SCRIPT), database_url, f"worker-{n}", str(path)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log,
                        text=True,
                    )
                )
        for worker, path in zip(workers, record_files, strict=True):
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line.strip() == "ready", f"a worker did not start: {log_tail(path)}"
        yield workers
    finally:
        for worker in workers:
            worker.terminate()
        end = time.monotonic() + 10
        for worker in workers:
            try:
                worker.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def log_tail(record_file: Path) -> str:
    return record_file.with_suffix(".log").read_text()[-3000:]
