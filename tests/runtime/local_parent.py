"""A stand-in `greenroom serve` for the parent-death test: a LocalRuntime with one replica.

    python tests/runtime/local_parent.py MODEL_DIR DATA_DIR ONNX_CACHE_DIR

Prints `{"pids": [...]}` once the replica is ready and its spare process started (the spare's
pid last), then runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from greenroom.config import Settings
from greenroom.registry.weights import content_hash
from greenroom.runtime.base import RevisionSpec
from greenroom.runtime.local import LocalRuntime

REVISION_ID = "rev-parent-death"


async def main(model_dir: Path, data_dir: Path, onnx_cache_dir: Path) -> None:
    runtime = LocalRuntime(Settings(data_dir=data_dir, replica_backoff_initial_s=0.1))
    runtime.onnx_cache_dir = onnx_cache_dir
    spec = RevisionSpec(
        REVISION_ID, model_dir, content_hash(model_dir), threads=1, secret="5e" * 32
    )
    await runtime.start_revision(spec)
    while not (ready := runtime.ready_replicas(REVISION_ID)):
        await asyncio.sleep(0.05)
    assert runtime.spare is not None
    while runtime.spare.pid is None:
        await asyncio.sleep(0.05)
    print(json.dumps({"pids": [r.pid for r in ready] + [runtime.spare.pid]}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*(Path(arg) for arg in sys.argv[1:4])))
