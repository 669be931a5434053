"""`greenroom worker`, started ahead and run on cue, so a crash case does not wait for imports.

    python tests/crash/worker_on_cue.py worker [worker options]

imports the worker's modules, then waits for a line on standard input (end of input: exits
without running) and runs the `greenroom worker` command with those options, in this process:
with `GREENROOM_TEST_CRASH_AT` set, that worker SIGKILLs itself at the boundary it names
(`Settings.test_crash_at`).
"""

from __future__ import annotations

import sys

# what the worker command imports, ahead of the cue
import greenroom.compose
import greenroom.rollout.runner
import greenroom.store.migrations  # noqa: F401
from greenroom.cli import app


def main() -> None:
    if not sys.stdin.readline():
        return  # the test ended before it needed this worker
    app()


if __name__ == "__main__":
    main()
