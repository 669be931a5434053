"""Which source files one deploy crosses, from the Tasks API view to the router's switch.

Runs one real green deploy in this process: `create_app` on SQLite in a temporary data dir, the
local runtime (replica processes) or the in-process fake one, a model registered through
`/v1/embedding-models`, a first deploy (not traced) so that a blue revision is live, then a second
deploy through `POST /internal/inference-deployment/deploy` with a changed setting, traced until
its task ends. A trace function (`sys.settrace` in every thread) records each file under the
installed `greenroom` package whose code ran, and when it first ran:

- *view → switch*: from the moment the deploy view's endpoint is entered until the router's
  `set_live` is called (the atomic switch of the served name to green);
- *whole deploy*: from the view until the task is done (drain and finish included).

Everything that runs in the process in that window counts, the background loops too (router sync,
supervisor, worker): that is what a reader of the deploy has to follow. Replica processes are not
traced (with `--runtime fake` the replicas run in-process and their files count). Nothing here names
a module of greenroom: the view is found from the app's routes, the switch by its function name
(`--switch-function`), so the script keeps working while the packages move.

    .venv/bin/python scripts/trace_deploy.py                 # the default model, local runtime
    .venv/bin/python scripts/trace_deploy.py --model-source DIR --runtime fake --json out.json
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEPLOY_PATH = "/internal/inference-deployment/deploy"  # the Tasks API contract's path
MODELS_PATH = "/v1/embedding-models"
ADMIN_TOKEN = "trace-deploy-admin-token-0123456789abcdef"
MODEL_ID = "trace-model"
TERMINAL = {"done", "failed", "canceled", "refused"}
BEFORE_SWITCH, AFTER_SWITCH = "view → switch", "switch → done"
# Set in the context of the deploy's own work (the request that asks for it, the worker's task
# handler) and inherited by what they start (`asyncio.to_thread` copies the context): the
# "deploy path" counts only files whose functions ran there, not the background loops'.
ON_PATH: contextvars.ContextVar[bool] = contextvars.ContextVar("on_path", default=False)
DEFINITIONS = ("models.py", "schemas.py", "pagination.py", "config.py", "errors.py")


@dataclass
class Trace:
    """Files of `root` whose code ran, by the phase in which each first ran."""

    root: str
    view_code: Any = None
    switch_name: str = "set_live"
    handler_name: str = "TaskRunner.__call__"
    path_first: dict[str, int] = field(default_factory=dict)
    phase: str | None = None  # None: not recording yet
    idle: bool = False  # recording the background loops alone (no deploy running)
    idle_files: set[str] = field(default_factory=set)
    first_seen: dict[str, tuple[str, int]] = field(default_factory=dict)
    switch_at: str | None = None
    switch_args: dict[str, Any] = field(default_factory=dict)
    _order: int = 0
    _inside: dict[str, bool] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def tracer(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return None
        code = frame.f_code
        filename = code.co_filename
        inside = self._inside.get(filename)
        if inside is None:
            inside = self._inside[filename] = os.path.realpath(filename).startswith(self.root)
        if not inside:
            return None
        if self.idle:
            self.idle_files.add(self.relative(filename))
            return None
        if self.phase is None and code is self.view_code:
            self.phase = BEFORE_SWITCH
        if self.phase is None:
            return None
        if code is self.view_code or code.co_qualname == self.handler_name:
            ON_PATH.set(True)
        with self._lock:
            if self.phase == BEFORE_SWITCH and ON_PATH.get() and filename not in self.path_first:
                self.path_first[filename] = len(self.path_first)
            if filename not in self.first_seen:
                self._order += 1
                self.first_seen[filename] = (self.phase, self._order)
            if self.phase == BEFORE_SWITCH and code.co_name == self.switch_name:
                self.switch_at = f"{self.relative(filename)}:{code.co_qualname}"
                self.switch_args = {
                    k: v for k, v in frame.f_locals.items() if isinstance(v, str | int)
                }
                self.phase = AFTER_SWITCH
        return None

    def stop(self) -> None:
        self.phase = None
        self.view_code = object()  # never entered again

    def relative(self, filename: str) -> str:
        return os.path.relpath(os.path.realpath(filename), os.path.dirname(self.root))

    def path_files(self) -> list[str]:
        return [self.relative(f) for f, _ in sorted(self.path_first.items(), key=lambda i: i[1])]

    def files(self, *phases: str) -> list[str]:
        chosen = [(order, f) for f, (phase, order) in self.first_seen.items() if phase in phases]
        return [self.relative(f) for _, f in sorted(chosen)]


def install(trace: Trace) -> None:
    """Trace this thread and every thread started from now on (before the app starts any)."""
    threading.settrace(trace.tracer)
    sys.settrace(trace.tracer)


def uninstall() -> None:
    threading.settrace(None)  # type: ignore[arg-type]
    sys.settrace(None)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-source",
        default=None,
        help="model to deploy: a sentence-transformers directory or package:<name> "
        "(default: the server's default model source)",
    )
    parser.add_argument("--runtime", choices=["local", "fake"], default="local")
    parser.add_argument(
        "--switch-function",
        default="set_live",
        help="name of the router function that switches a served name (default set_live)",
    )
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per task")
    parser.add_argument(
        "--idle-s",
        type=float,
        default=6.0,
        help="length of the window traced with no deploy running, before the deploy: the files "
        "that ran in it (background loops) are marked `*` (default 6 s, one health check)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    return parser.parse_args()


def source_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def package_of(relative: str) -> str:
    """`greenroom/tasks/views.py` → `tasks`; a top-level module → `greenroom`."""
    parts = Path(relative).parts
    return parts[1] if len(parts) > 2 else parts[0]


def make_runtime(kind: str, data_dir: Path) -> Any:
    if kind == "local":
        return None  # create_app builds the backend its settings name
    from greenroom.runtime.fake import FakeRuntime, real_engines

    return FakeRuntime(engine_factory=real_engines(data_dir / "onnx"))


def find_view(app: Any) -> Any:
    """The endpoint function of `POST /internal/inference-deployment/deploy`."""
    for path, methods, endpoint in walk_routes(app.routes, ""):
        if path == DEPLOY_PATH and "POST" in methods:
            return endpoint.__code__
    raise SystemExit(f"no POST {DEPLOY_PATH} route in the app")


def walk_routes(routes: Any, prefix: str) -> Any:
    """(path, methods, endpoint) of every route, included routers followed (FastAPI keeps them
    flat in some versions and nested in others)."""
    for route in routes:
        endpoint = getattr(route, "endpoint", None)
        if endpoint is not None and hasattr(route, "path"):
            yield prefix + route.path, getattr(route, "methods", None) or set(), endpoint
            continue
        inner = getattr(route, "original_router", None) or route
        context = getattr(route, "include_context", None)
        nested = getattr(inner, "routes", None)
        if nested is not None and nested is not routes:
            yield from walk_routes(nested, prefix + (getattr(context, "prefix", "") or ""))


def wait_for_task(database: Path, task_id: str, timeout_s: float) -> str:
    """The task's final status, read with plain sqlite3 (no greenroom code runs for it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as connection:
            row = connection.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is not None and row[0] in TERMINAL:
            return str(row[0])
        time.sleep(0.2)
    raise SystemExit(f"task {task_id} did not end within {timeout_s:g} s")


def deploy(client: Any, body: dict[str, Any]) -> str:
    response = client.post(DEPLOY_PATH, json=body)
    response.raise_for_status()
    return str(response.json()["id"])


def check_done(client: Any, task_id: str, status: str) -> dict[str, Any]:
    task = client.get(f"{DEPLOY_PATH}/{task_id}").json()
    if status != "done":
        raise SystemExit(f"task {task_id} ended {status}: {task.get('detail')}")
    return task


def run(args: argparse.Namespace, trace: Trace, data_dir: Path) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from greenroom.app import create_app
    from greenroom.config import Settings

    settings = Settings(
        data_dir=data_dir,
        default_model_id="",
        admin_token=ADMIN_TOKEN,
        runtime="local",
        drain_grace_s=5.0,
    )
    source = args.model_source or settings.default_model_source
    runtime = make_runtime(args.runtime, data_dir)
    app = create_app(settings) if runtime is None else create_app(settings, runtime)
    database = settings.resolved_data_dir() / "greenroom.db"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(app, headers=headers) as client:
        started = time.monotonic()
        client.post(MODELS_PATH, json={"id": MODEL_ID, "source": source}).raise_for_status()
        first = deploy(client, {"embedding_model_id": MODEL_ID})
        check_done(client, first, wait_for_task(database, first, args.timeout_s))
        blue_ready_s = time.monotonic() - started
        time.sleep(1.0)  # let the first rollout's after-effects settle
        trace.idle = True
        time.sleep(args.idle_s)
        trace.idle = False
        trace.view_code = find_view(app)
        traced_at = time.monotonic()
        second = deploy(client, {"embedding_model_id": MODEL_ID, "config": {"max_batch_size": 16}})
        status = wait_for_task(database, second, args.timeout_s)
        trace.stop()
        traced_s = time.monotonic() - traced_at
        task = check_done(client, second, status)
    return {
        "task": task,
        "source": source,
        "runtime": args.runtime,
        "setup_s": round(blue_ready_s, 1),
        "traced_s": round(traced_s, 1),
        "idle_s": args.idle_s,
    }


def report(trace: Trace, result: dict[str, Any], all_files: list[str]) -> dict[str, Any]:
    before = trace.files(BEFORE_SWITCH)
    whole = trace.files(BEFORE_SWITCH, AFTER_SWITCH)
    metadata = result["task"].get("metadata", {})
    return {
        "runtime": result["runtime"],
        "model_source": result["source"],
        "task_id": result["task"]["id"],
        "steps": [
            (step["name"], step["status"], step.get("duration_ms"))
            for step in metadata.get("steps", [])
        ],
        "green_revision_id": metadata.get("revision_id"),
        "switch": trace.switch_at,
        "switch_args": trace.switch_args,
        "src_files": len(all_files),
        "src_modules": len([f for f in all_files if not f.endswith("__init__.py")]),
        "src_packages": len({package_of(f) for f in all_files}),
        "view_to_switch": before,
        "view_to_switch_packages": sorted({package_of(f) for f in before}),
        "view_to_switch_not_idle": [f for f in before if f not in trace.idle_files],
        "deploy_path": trace.path_files(),
        "idle": sorted(trace.idle_files),
        "idle_s": result["idle_s"],
        "whole_deploy": whole,
        "whole_deploy_packages": sorted({package_of(f) for f in whole}),
        "setup_s": result["setup_s"],
        "traced_s": result["traced_s"],
    }


def print_report(summary: dict[str, Any]) -> None:
    out: Callable[..., None] = print
    out(f"runtime {summary['runtime']}, model {summary['model_source']}, task {summary['task_id']}")
    out("steps: " + ", ".join(f"{n} {s} {d} ms" for n, s, d in summary["steps"]))
    switch = summary["switch"] or "NOT SEEN (is --switch-function still the router's switch?)"
    out(f"switch: {switch} {summary['switch_args']}")
    out(
        f"src: {summary['src_files']} files ({summary['src_modules']} without __init__.py) "
        f"in {summary['src_packages']} packages"
    )
    idle = set(summary["idle"])
    for title, key in (("view → switch", "view_to_switch"), ("whole deploy", "whole_deploy")):
        files, packages = summary[key], summary[f"{key}_packages"]
        out(f"\n{title}: {len(files)} files, {len(packages)} packages ({', '.join(packages)})")
        for path in sorted(files):
            out(f"  {'*' if path in idle else ' '} {path}")
    not_idle = summary["view_to_switch_not_idle"]
    out(
        f"\n* also ran in {summary['idle_s']:g} s with no deploy (background loops: "
        f"{len(idle)} files); view → switch without them: {len(not_idle)} files"
    )
    path = summary["deploy_path"]
    logic = [f for f in path if not f.endswith(DEFINITIONS) and "/store/" not in f]
    out(
        f"\ndeploy path (functions run by the deploy request and its task handler, in the order "
        f"first entered, until the switch): {len(path)} files, {len(logic)} of them not "
        "definitions or store plumbing (models, schemas, config, errors, store/)"
    )
    for path_file in path:
        out(f"  {' ' if path_file in logic else '-'} {path_file}")
    out(f"\n(set-up {summary['setup_s']} s, traced deploy {summary['traced_s']} s)")


def main() -> int:
    args = parse_args()
    import greenroom

    root = Path(greenroom.__file__).resolve().parent
    trace = Trace(root=str(root), switch_name=args.switch_function)
    all_files = [os.path.relpath(p, root.parent) for p in source_files(root)]
    data_dir = Path(tempfile.mkdtemp(prefix="gr-trace-"))
    install(trace)
    try:
        result = run(args, trace, data_dir)
    finally:
        uninstall()
        if not args.keep:
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)
    summary = report(trace, result, all_files)
    print_report(summary)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["switch"] else 1


if __name__ == "__main__":
    sys.exit(main())
