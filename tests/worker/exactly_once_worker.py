"""A worker process for the exactly-once test: a real Worker with a recording task handler.

    python tests/worker/exactly_once_worker.py DATABASE_URL WORKER_ID RECORD_FILE

Prints `ready` once set up, waits for a line on stdin (so that every process starts claiming at
the same moment), then runs until SIGTERM. Every handler call appends `start` to RECORD_FILE
before it does anything, and `end` once the task is `done` (the `end` time is read before the
commit, so it precedes the moment another task of the same served name can be claimed).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from typing import TextIO

from greenroom.store.db import Store
from greenroom.tasks import leases
from greenroom.tasks.states import TaskStatus, transition
from greenroom.worker.loop import Worker

CONCURRENCY = 4
LEASE_S = 10.0
HOLD_S = (0.005, 0.02)


class RecordingHandler:
    def __init__(self, store: Store, worker_id: str, records: TextIO) -> None:
        self.store, self.worker_id, self.records = store, worker_id, records

    async def __call__(self, task_id: str) -> None:
        self.record("start", task_id, time.monotonic())
        await asyncio.sleep(random.uniform(*HOLD_S))
        ended_at = await asyncio.to_thread(self.finish, task_id)
        if ended_at is not None:
            self.record("end", task_id, ended_at)

    def finish(self, task_id: str) -> float | None:
        with self.store.session_scope() as db_session:
            task = leases.get_held(db_session, task_id=task_id, worker_id=self.worker_id)
            if task is None or not transition(task, TaskStatus.DONE).accepted:
                return None
            db_session.flush()
            return time.monotonic()

    def record(self, event: str, task_id: str, at: float) -> None:
        line = {"event": event, "task": task_id, "worker": self.worker_id, "at": at}
        self.records.write(json.dumps(line) + "\n")
        self.records.flush()


async def main(database_url: str, worker_id: str, record_path: str) -> None:
    store = Store(database_url)
    with open(record_path, "a") as records:
        handler = RecordingHandler(store, worker_id, records)
        worker = Worker(
            store, handler, worker_id=worker_id, concurrency=CONCURRENCY, lease_s=LEASE_S
        )
        stopping: set[asyncio.Task[None]] = set()
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGTERM, lambda: stopping.add(asyncio.create_task(worker.stop()))
        )
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await worker.run()
    store.dispose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
