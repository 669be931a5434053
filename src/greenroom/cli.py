"""The `greenroom` command: the server, a worker, the store, and client commands."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO, TypeVar

import click
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Column, Table
from rich.text import Text
from typer.core import TyperGroup

from greenroom.auth.scopes import Scope
from greenroom.client import (
    DEFAULT_URL,
    MAX_SAMPLE_CHARS,
    MAX_SAMPLES_KEPT,
    ClientError,
    GreenroomClient,
    default_token,
    sample_chunks,
)

app = typer.Typer(
    help="greenroom: green deployments and an OpenAI-compatible endpoint for embedding models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Register and list embedding models.", no_args_is_help=True)
db_app = typer.Typer(help="The store (SQLite by default, PostgreSQL by URL).", no_args_is_help=True)
tokens_app = typer.Typer(
    help="Create, list and revoke API tokens (needs an admin token).", no_args_is_help=True
)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(tokens_app, name="tokens")
console = Console()
errors = Console(stderr=True)
T = TypeVar("T")

DataDir = Annotated[
    Path | None,
    typer.Option(
        help="State, ONNX export cache and logs (env GREENROOM_DATA_DIR, default ~/.greenroom)."
    ),
]
Server = Annotated[
    str,
    typer.Option(envvar="GREENROOM_URL", help="greenroom's URL (env GREENROOM_URL)."),
]
Wait = Annotated[
    bool, typer.Option("--wait", help="Follow the task until it ends; exit 1 if it fails.")
]


@app.callback()
def main() -> None:
    """Settings come from GREENROOM_* environment variables; flags override them."""


def _settings(**overrides: Any) -> Any:
    from greenroom.config import InsecureSettingError, Settings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except InsecureSettingError as exc:  # one sentence, never a traceback (it may hold a secret)
        typer.echo(f"greenroom: {exc}", err=True)
        raise typer.Exit(2) from None


def _logging(settings: Any, level: str, name: str) -> None:
    """Log to standard error and `<data dir>/logs/<name>.log`; from here on every file this
    process and its replicas create is private to this user (umask 077: the store, the logs,
    the export cache), and the data dir and log file are tightened to 0700/0600 if wider."""
    from greenroom.store.db import ensure_private_dir, ensure_private_file

    os.umask(0o077)
    logs = ensure_private_dir(ensure_private_dir(settings.resolved_data_dir()) / "logs")
    for earlier in logs.glob("*.log"):  # replicas' logs too, written before 0600 was the rule
        ensure_private_file(earlier)
    log_file = ensure_private_file(logs / f"{name}.log")
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(log_file)],
    )


# ----- server side ---------------------------------------------------------------------------


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (env GREENROOM_HOST, default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to bind (env GREENROOM_PORT, default 8000).")
    ] = None,
    data_dir: DataDir = None,
    database_url: Annotated[
        str | None,
        typer.Option(help="postgresql+psycopg://… to share state (env GREENROOM_DATABASE_URL)."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level: debug, info, warning.")] = "info",
) -> None:
    """Start the API, the router, the supervisor of local replicas and an embedded worker.

    On first start the default model is registered and deployed; after a restart whatever was
    live comes back from the store. Several servers on one store elect one supervisor per
    runtime target; the others stand by, take over when it dies, and meanwhile route to the
    replicas it reports to the store. With GREENROOM_SUPERVISOR=false a server never supervises.
    """
    import uvicorn

    from greenroom.app import create_app
    from greenroom.edge import UVICORN_LIMITS

    settings = _settings(host=host, port=port, data_dir=data_dir, database_url=database_url)
    _logging(settings, log_level, "greenroom")
    # uvicorn stops gracefully on SIGTERM, then raises the signal again with the handler it
    # found: this one makes the end of a graceful stop exit 0 instead of death by signal.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    logging.getLogger("greenroom").info(
        "the web console: http://%s:%d/ui/ (sign in with a token)", settings.host, settings.port
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        **UVICORN_LIMITS,  # httptools with a bounded request head
    )


@app.command()
def worker(
    data_dir: DataDir = None,
    database_url: Annotated[
        str | None, typer.Option(help="The shared store (env GREENROOM_DATABASE_URL).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Tasks run at once (env GREENROOM_WORKER_CONCURRENCY).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level: debug, info, warning.")] = "info",
) -> None:
    """Run a worker process: claims tasks from the shared store and runs their steps.

    Workers never start replicas; `greenroom serve` processes own them. Use PostgreSQL to run
    several workers beside the servers.
    """
    from greenroom.compose import WORKER_STOP_GRACE_S, build_parts

    settings = _settings(
        data_dir=data_dir, database_url=database_url, worker_concurrency=concurrency
    )
    _logging(settings, log_level, "worker")

    async def run() -> None:
        # on PostgreSQL the servers' changes (new tasks, reported replicas, router reports)
        # wake this worker at once through LISTEN/NOTIFY, and its changes wake them
        parts = build_parts(settings, role="worker")
        assert parts.worker is not None
        worker = parts.worker
        try:
            await parts.start()
            # SIGTERM: stop claiming, give running tasks a moment, release the rest's leases
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGTERM, lambda: asyncio.ensure_future(worker.stop(WORKER_STOP_GRACE_S))
            )
            await parts.worker_stopped()
        finally:
            await parts.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDir = None,
    database_url: Annotated[
        str | None, typer.Option(help="The store to migrate (env GREENROOM_DATABASE_URL).")
    ] = None,
) -> None:
    """Apply the schema migrations (idempotent; `greenroom serve` does it on start)."""
    from greenroom.store.migrations import upgrade

    settings = _settings(data_dir=data_dir, database_url=database_url)
    settings.resolved_data_dir().mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url())
    errors.print("The store is up to date.")


# ----- client side ---------------------------------------------------------------------------


def _client(server: str) -> GreenroomClient:
    return GreenroomClient(server, default_token())


def _call(action: Callable[[], T]) -> T:
    """Run a client call; a refusal or an unreachable server ends the command with its reason."""
    try:
        return action()
    except ClientError as exc:
        raise _fail(exc) from None


def _fail(exc: ClientError) -> typer.Exit:
    errors.print(f"[red]error:[/red] {exc}", soft_wrap=True)
    return typer.Exit(1)


@models_app.command("register")
def models_register(
    model_id: Annotated[str, typer.Argument(metavar="ID", help="The embedding model id.")],
    source: Annotated[
        str, typer.Argument(help="A model directory, or package:<import name> of a package.")
    ],
    description: Annotated[str | None, typer.Option(help="A note for people.")] = None,
    server: Server = DEFAULT_URL,
) -> None:
    """Register a model: the server checks that it loads and records what it produces."""
    model = _call(lambda: _client(server).register_model(model_id, source, description))
    console.print(
        f"registered [bold]{model['id']}[/bold]: dimension {model['dimension']}, "
        f"hash {model['content_hash'][:12]}"
    )


@models_app.command("list")
def models_list(server: Server = DEFAULT_URL) -> None:
    """List registered models."""
    models = _call(lambda: _client(server).models())
    table = Table("id", "dimension", "max length", "hash", "source")
    for model in models:
        table.add_row(
            model["id"],
            str(model["dimension"]),
            str(model["max_seq_length"]),
            model["content_hash"][:12],
            model["source"],
        )
    console.print(table)


@tokens_app.command("create")
def tokens_create(
    scope: Annotated[
        list[Scope],
        typer.Option(
            "--scope",
            metavar="SCOPE",
            help="A scope: admin, deploy, controller, read or infer; repeatable.",
            show_default=False,
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="Who or what uses it (default: its scopes).")
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option(
            help="Refuse it after this long: seconds, or a number with s, m, h or d (30d); "
            "from 1 minute to 10 years (default: never).",
            show_default=False,
        ),
    ] = None,
    server: Server = DEFAULT_URL,
) -> None:
    """Create a token; prints only the token on standard output (it is shown only now)."""
    scopes = list(dict.fromkeys(str(s) for s in scope))
    seconds = _duration_s(expires_in) if expires_in is not None else None
    client = _client(server)
    token = _call(lambda: client.create_token(name or "-".join(scopes), scopes, seconds))
    print(token["token"])
    expiry = f"; it expires at {_minute(token['expires_at'])} UTC" if token["expires_at"] else ""
    errors.print(
        f"created token {token['id']} '{token['name']}' with scopes {', '.join(token['scopes'])}"
        f"{expiry}; its value is shown only now"
    )


DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_s(text: str) -> int:
    """Seconds of `3600`, `90s`, `30m`, `1h` or `30d`; the server checks the bounds."""
    value = text.strip().lower()
    unit = DURATION_UNITS_S.get(value[-1:], 0) if value[-1:].isalpha() else 1
    number = value[:-1] if value[-1:].isalpha() else value
    if not unit or not number.isdigit() or len(number) > 12:
        raise typer.BadParameter(
            f"'{text}' is not a duration: give seconds or a number with s, m, h or d (30d)",
            param_hint="--expires-in",
        )
    return int(number) * unit


@tokens_app.command("list")
def tokens_list(server: Server = DEFAULT_URL) -> None:
    """List tokens (never their values), revoked ones included."""
    tokens = _call(lambda: _client(server).tokens())
    table = Table("name", "scopes", "created", "last used", "revoked")
    table.columns.insert(0, Column("id", no_wrap=True))
    for token in tokens:
        table.add_row(
            token["id"], token["name"], ", ".join(token["scopes"]), _minute(token["created_at"]),
            _minute(token["last_used_at"]), _minute(token["revoked_at"]),
        )  # fmt: skip
    console.print(table)


def _minute(timestamp: str | None) -> str:
    return (timestamp or "")[:16].replace("T", " ")


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id.")],
    server: Server = DEFAULT_URL,
) -> None:
    """Revoke a token: requests with it get 401 from then on."""
    _call(lambda: _client(server).revoke_token(token_id))
    errors.print(f"revoked {token_id}")


def _parse_sets(values: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"'{item}' is not key=value", param_hint="--set")
        config[key.strip()] = int(raw) if raw.strip().lstrip("-").isdigit() else raw.strip()
    return config


@app.command()
def deploy(
    model: Annotated[str, typer.Argument(help="The served name (an embedding model id).")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="A config override key=value (engine, quantization, replicas, max_batch_size, "
            "max_batch_tokens, max_queue, threads, runtime, cache_mib, min_replicas, "
            "max_replicas, target_ongoing_requests, upscale_delay_s, downscale_delay_s); "
            "repeatable.",
        ),
    ] = None,
    allow_embedding_space_change: Annotated[
        bool,
        typer.Option(help="Let vectors that are not comparable with the live ones take over."),
    ] = False,
    stage: Annotated[
        bool,
        typer.Option(
            "--stage",
            help="Stage the new revision beside the live one without live traffic (an "
            "embedding migration's first stage); then `greenroom migration M`, `greenroom "
            "promote M` or `greenroom migration abort M`.",
        ),
    ] = False,
    wait: Wait = False,
    server: Server = DEFAULT_URL,
) -> None:
    """Deploy the model's latest config as a green rollout (or staged); prints the task id."""
    client = _client(server)
    overrides = _parse_sets(set_ or [])
    task = _call(
        lambda: client.deploy(model, overrides, allow_embedding_space_change, staged=stage)
    )
    _after_submit(client, task, wait)


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="The served name to roll back.")],
    revision: Annotated[
        str | None,
        typer.Option(help="The revision id to bring back (default: the one the live replaced)."),
    ] = None,
    allow_embedding_space_change: Annotated[
        bool,
        typer.Option(help="Let the earlier revision's vectors differ from the live ones."),
    ] = False,
    wait: Wait = False,
    server: Server = DEFAULT_URL,
) -> None:
    """Bring back an earlier revision's snapshot as a new revision, through a green rollout."""
    client = _client(server)
    task = _call(lambda: client.rollback(model, revision, allow_embedding_space_change))
    _after_submit(client, task, wait)


@app.command()
def delete(
    model: Annotated[str, typer.Argument(help="The served name to withdraw.")],
    reason: Annotated[str | None, typer.Option(help="Why; kept in the task's metadata.")] = None,
    wait: Wait = False,
    server: Server = DEFAULT_URL,
) -> None:
    """Drain and withdraw a model; requests for it then get 404."""
    client = _client(server)
    task = _call(lambda: client.delete(model, reason))
    _after_submit(client, task, wait)


@app.command()
def cancel(
    task_id: Annotated[str, typer.Argument(help="A pending task's id.")],
    server: Server = DEFAULT_URL,
) -> None:
    """Cancel a pending task."""
    task = _call(lambda: _client(server).cancel(task_id))
    console.print(f"{task['id']} is {task['status']}")


@app.command()
def tasks(
    model: Annotated[str | None, typer.Argument(help="Only this served name's tasks.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    server: Server = DEFAULT_URL,
) -> None:
    """List recent tasks, newest first."""
    rows = _call(lambda: _client(server).tasks(model, limit))
    table = Table("model", "status", "created", "detail")
    table.columns.insert(0, Column("id", no_wrap=True))  # ids are what people copy
    for task in rows:
        table.add_row(
            task["id"], task["embedding_model_id"], task["status"], task["created_at"][:19],
            (task.get("detail") or "")[:80],
        )  # fmt: skip
    console.print(table)


@app.command()
def status(server: Server = DEFAULT_URL) -> None:
    """Readiness, live models and the latest task of each registered model."""
    client = _client(server)
    try:
        live = {m["id"] for m in client.get("/v1/models")["data"]}
        models = client.models()
        ready = client.http.get("/readyz").json()
    except (ClientError, ValueError) as exc:
        raise _fail(ClientError(str(exc))) from None
    console.print(f"server {server}: {ready.get('status')} {ready.get('reason', '')}")
    table = Table("model", "live", Column("latest task", no_wrap=True), "status", "detail")
    for model in models:
        try:
            task = client.get(f"/internal/inference-deployment/deploy-status/{model['id']}")
        except ClientError:
            task = {"id": "-", "status": "-"}
        table.add_row(
            model["id"], "yes" if model["id"] in live else "no", task["id"], task["status"],
            (task.get("detail") or "")[:60],
        )  # fmt: skip
    console.print(table)


def _after_submit(client: GreenroomClient, task: dict[str, Any], wait: bool) -> None:
    print(task["id"])
    if task["status"] in ("refused", "canceled", "failed"):  # ended before it started
        _report_end(task)
    if not wait:
        errors.print(f"{task['id']} is {task['status']}; follow it with --wait")
        return
    _report_end(follow(client, task["id"]))


def _report_end(task: dict[str, Any]) -> None:
    """Say how the task ended; exit 1 unless it is done."""
    if task["status"] != "done":
        detail = task.get("detail") or ""
        errors.print(f"[red]{task['id']} {task['status']}:[/red] {detail}", soft_wrap=True)
        raise typer.Exit(1)
    result = task.get("metadata", {}).get("result", "done")
    errors.print(f"[green]{task['id']} done[/green] ({result})")


SUBMITTED_VISIBLE_S = 5.0


def follow(client: GreenroomClient, task_id: str, interval_s: float = 0.3) -> dict[str, Any]:
    """Show the task's steps live until it ends; returns the final task."""
    # The server answers a submission before its session commits, so the first reads of a
    # task just submitted may not find it yet: a 404 is retried for a few seconds.
    visible_by = time.monotonic() + SUBMITTED_VISIBLE_S
    with Live(console=errors, refresh_per_second=8, transient=False) as live:
        while True:
            try:
                task = client.task(task_id)
            except ClientError as exc:
                if exc.status != 404 or time.monotonic() > visible_by:
                    raise _fail(exc) from None
                time.sleep(interval_s)
                continue
            visible_by = 0.0  # found once: a later 404 is real
            live.update(_steps_table(task))
            if task["status"] in ("done", "failed", "canceled", "refused"):
                return task
            time.sleep(interval_s)


STEP_MARKS = {"pending": "·", "running": "…", "done": "✓", "skipped": "–", "failed": "✗"}


def _steps_table(task: dict[str, Any]) -> Table:
    table = Table(title=f"{task['id']} · {task['embedding_model_id']} · {task['status']}")
    table.add_column("step")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("message")
    for step in task.get("metadata", {}).get("steps", []):
        duration = step.get("duration_ms")
        table.add_row(
            step["name"],
            f"{STEP_MARKS.get(step['status'], '?')} {step['status']}",
            f"{duration / 1000:.1f} s" if duration is not None else "",
            step.get("message") or "",
        )
    return table


# ----- embedding migrations (docs/migrations.md) --------------------------------------------


class _ShowByDefault(TyperGroup):
    """`greenroom migration M` is `greenroom migration show M`: whatever is not a subcommand's
    name (or the group's --help) is the live view's argument. A model named like a
    subcommand is viewed with `show` spelled out."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["show", *args]
        return super().parse_args(ctx, args)


migration_app = typer.Typer(
    cls=_ShowByDefault,
    help="An embedding migration: `greenroom migration M` shows its stage, shadow report and "
    "adapter live; the subcommands feed and end it. Start one with `greenroom deploy M "
    "--stage`, go live with `greenroom promote M [--adapted]`.",
    no_args_is_help=True,
)
app.add_typer(migration_app, name="migration")

Model = Annotated[
    str,
    typer.Argument(
        metavar="M",
        help="The served name: an embedding model id, or workspace/name of a deployment.",
    ),
]
WaitOrNot = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait", help="Follow the task's steps until it ends; exit 1 if it fails."
    ),
]
MIN_PAIRS = 200  # what a fit needs (docs/api/migrations.md)


class SampleFormat(StrEnum):
    AUTO = "auto"
    TEXT = "text"
    JSONL = "jsonl"


NEXT_STEP = {
    "none": "No migration: `greenroom deploy {m} --stage` starts one.",
    "staged": "Next: `greenroom promote {m}` (raw: indexes must be rebuilt), or `greenroom "
    "migration fit {m}` then `greenroom promote {m} --adapted` (indexes keep working); "
    "`greenroom migration abort {m}` withdraws the staged revision.",
    "adapted": "Next: re-index with `{m}@live`, then `greenroom migration finish {m}`; "
    "`greenroom migration abort {m}` brings the old model back.",
}


@app.command()
def promote(
    model: Model,
    adapted: Annotated[
        bool,
        typer.Option(
            "--adapted",
            help="Answer the served name with the new model's vectors mapped into the live "
            "space by the fitted adapter (existing indexes keep working; `M@live` gives raw "
            "vectors for the re-index). Without it the promotion is raw.",
        ),
    ] = False,
    allow_embedding_space_change: Annotated[
        bool,
        typer.Option(
            help="Raw only: let vectors that are not comparable with the live ones take over "
            "(every index built with the old model must be rebuilt)."
        ),
    ] = False,
    wait: WaitOrNot = False,
    server: Server = DEFAULT_URL,
) -> None:
    """Make the staged revision live, raw or adapted; prints the task id."""
    if adapted and allow_embedding_space_change:
        raise typer.BadParameter(
            "an adapted promotion keeps the live space: --allow-embedding-space-change is for "
            "a raw one",
            param_hint="--allow-embedding-space-change",
        )
    client = _client(server)
    task = _call(
        lambda: client.promote(model, adapted=adapted, allow_change=allow_embedding_space_change)
    )
    _after_submit(client, task, wait)


@migration_app.command("show")
def migration_show(
    model: Model,
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame and exit instead of refreshing.")
    ] = False,
    interval: Annotated[
        float, typer.Option(min=0.2, max=3600.0, help="Seconds between refreshes.")
    ] = 2.0,
    server: Server = DEFAULT_URL,
) -> None:
    """The migration's stage, revisions, shadow report, adapter and samples, refreshed until
    Ctrl-C (`greenroom migration M` is the same)."""
    client = _client(server)
    state = _call(lambda: client.migration(model))
    if once:
        console.print(migration_frame(state))
        return
    with (
        contextlib.suppress(KeyboardInterrupt),
        Live(migration_frame(state), console=console, auto_refresh=False) as live,
    ):
        while True:
            time.sleep(interval)
            try:
                state = client.migration(model)
                frame: Any = migration_frame(state)
            except ClientError as exc:  # a restart or a hiccup: keep the last frame, say why
                frame = Group(migration_frame(state), Text(f"refresh failed: {exc}", "red"))
            live.update(frame, refresh=True)


@migration_app.command("samples")
def migration_samples(
    model: Model,
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            allow_dash=True,
            help="One text per line, or JSONL of strings (`-` reads standard input).",
        ),
    ],
    format_: Annotated[
        SampleFormat,
        typer.Option(
            "--format",
            help="auto: JSONL when the name ends in .jsonl or .ndjson or the first text line "
            "is a JSON string, else one text per line.",
        ),
    ] = SampleFormat.AUTO,
    server: Server = DEFAULT_URL,
) -> None:
    """Upload sample texts an adapter is fitted from (both revisions embed them); in calls of
    at most 2048 texts and 8 MiB. The server keeps the newest 20,000, so only a file's last
    20,000 texts are sent."""
    sample = _read_samples(file, format_)
    if not sample.texts:
        errors.print(f"[red]error:[/red] {file} has no texts")
        raise typer.Exit(2)
    if sample.total > len(sample.texts):
        errors.print(
            f"{sample.total} texts in {file}: the server keeps the newest {MAX_SAMPLES_KEPT}, "
            f"so only the last {len(sample.texts)} are sent"
        )
    if sample.cut:
        errors.print(f"{sample.cut} texts were cut to {MAX_SAMPLE_CHARS} characters")
    client = _client(server)
    sent, answer = 0, None
    for chunk in sample_chunks(sample.texts):
        answer = _call(lambda chunk=chunk: client.add_samples(model, chunk))
        sent += len(chunk)
        errors.print(f"sent {sent} of {len(sample.texts)} texts")
    assert answer is not None
    console.print(f"{answer['samples']} sample texts kept for {answer.get('served_name', model)}")


@migration_app.command("fit")
def migration_fit(
    model: Model,
    timeout: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Seconds to wait for the fit (both revisions embed every stored sample text).",
        ),
    ] = 1800.0,
    server: Server = DEFAULT_URL,
) -> None:
    """Fit an adapter from the stored sample texts and the shadow pairs, and print its
    held-out evaluation against the thresholds of an adapted promotion."""
    client = GreenroomClient(server, default_token(), timeout=timeout)
    adapter = _call(lambda: client.fit_adapter(model))
    try:
        thresholds = client.migration(model).get("thresholds") or {}
    except ClientError:
        thresholds = {}
    console.print(_adapter_table(adapter, thresholds))
    if thresholds and not _adapter_passes(adapter, thresholds):
        errors.print(
            "[yellow]below the thresholds:[/yellow] an adapted promotion would be refused; "
            "add sample texts (`greenroom migration samples`) and fit again, or promote raw"
        )


@migration_app.command("finish")
def migration_finish(model: Model, wait: WaitOrNot = False, server: Server = DEFAULT_URL) -> None:
    """After an adapted promotion and the re-index: the served name answers with the new
    model's raw vectors and the adapter is retired; prints the task id."""
    client = _client(server)
    _after_submit(client, _call(lambda: client.finish(model)), wait)


@migration_app.command("abort")
def migration_abort(model: Model, wait: WaitOrNot = False, server: Server = DEFAULT_URL) -> None:
    """Withdraw the staged revision; after an adapted promotion, bring the old model back as
    a new revision (smoke-tested, then switched in); prints the task id."""
    client = _client(server)
    _after_submit(client, _call(lambda: client.abort(model)), wait)


@migration_app.command("shadow")
def migration_shadow(
    model: Model,
    fraction: Annotated[
        str,
        typer.Argument(
            metavar="FRACTION",
            help="The share of live requests also embedded by the staged revision: 0 to 1, "
            "or a percentage (5%).",
        ),
    ],
    server: Server = DEFAULT_URL,
) -> None:
    """Set the shadow traffic's share; every API process samples at it."""
    share = _fraction(fraction)
    answer = _call(lambda: _client(server).set_shadow_fraction(model, share))
    console.print(f"shadow traffic of {answer['served_name']}: {_percent(answer['fraction'])}")


def _fraction(text: str) -> float:
    """0.05 or 5%: a share from 0 to 1."""
    value = text.strip()
    scale = 100.0 if value.endswith("%") else 1.0
    try:
        share = float(value.removesuffix("%")) / scale
    except ValueError:
        share = float("nan")
    if not 0.0 <= share <= 1.0:  # nan fails this too
        raise typer.BadParameter(
            f"'{text}' is not a share: give 0 to 1 or a percentage", param_hint="FRACTION"
        )
    return share


# ----- reading sample files ----------------------------------------------------------------------


@dataclass
class SampleFile:
    texts: list[str]  # the last MAX_SAMPLES_KEPT, in file order
    total: int  # texts in the file
    cut: int  # texts cut to MAX_SAMPLE_CHARS


def _read_samples(path: Path, format_: str) -> SampleFile:
    """The texts of a sample file; exit 2 with the line that is not a text."""
    kept: deque[str] = deque(maxlen=MAX_SAMPLES_KEPT)
    total = cut = 0
    jsonl = format_ == "jsonl" or (
        format_ == "auto" and path.suffix.lower() in (".jsonl", ".ndjson")
    )
    try:
        with _open_text(path) as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                if format_ == "auto" and total == 0 and not jsonl:
                    jsonl = _is_json_string(line)
                text = _sample_text(line, jsonl=jsonl, where=f"{path}:{number}")
                if not text.strip():  # an empty JSONL string: nothing to embed
                    continue
                if len(text) > MAX_SAMPLE_CHARS:
                    text, cut = text[:MAX_SAMPLE_CHARS], cut + 1
                kept.append(text)
                total += 1
    except (OSError, UnicodeDecodeError) as exc:
        errors.print(f"[red]error:[/red] cannot read {path}: {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    return SampleFile(list(kept), total, cut)


@contextlib.contextmanager
def _open_text(path: Path) -> Iterator[TextIO]:
    if str(path) == "-":
        yield io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="strict")
        return
    with path.open(encoding="utf-8", errors="strict") as stream:
        yield stream


def _is_json_string(line: str) -> bool:
    try:
        return isinstance(json.loads(line), str)
    except ValueError:
        return False


def _sample_text(line: str, *, jsonl: bool, where: str) -> str:
    """One line's text: the line less its line break, or a JSONL line's string."""
    if jsonl:
        try:
            text = json.loads(line)
        except ValueError:
            text = None
        if not isinstance(text, str):
            _refuse_line(where, "is not a JSON string (JSONL: one string a line)")
    else:
        text = line.rstrip("\r\n")
    if "\x00" in text:
        _refuse_line(where, "holds a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        _refuse_line(where, "is not valid UTF-8 text")
    return text


def _refuse_line(where: str, why: str) -> NoReturn:
    errors.print(f"[red]error:[/red] {where} {why}; nothing was sent", soft_wrap=True)
    raise typer.Exit(2)


# ----- the migration's view --------------------------------------------------------------------


def migration_frame(state: dict[str, Any]) -> Group:
    """One frame of `greenroom migration M`: built from the state endpoint's answer only."""
    name = str(state.get("served_name", "?"))
    stage = str(state.get("stage", "?"))
    thresholds = state.get("thresholds") or {}
    parts: list[Any] = [
        Text.assemble(("migration of ", "bold"), (name, "bold cyan"), " · stage ", (stage, "bold"))
    ]
    parts.append(_revisions_table(state))
    parts.append(_shadow_table(state.get("shadow")))
    adapter = state.get("adapter")
    if adapter:
        parts.append(_adapter_table(adapter, thresholds))
    else:
        parts.append(Text(f"adapter: none fitted (a fit needs {MIN_PAIRS} pairs)"))
    parts.append(Text(f"sample texts stored: {_count(state.get('samples'))}"))
    if stage in NEXT_STEP:
        parts.append(Text(NEXT_STEP[stage].format(m=name), style="dim"))
    return Group(*parts)


def _revisions_table(state: dict[str, Any]) -> Table:
    table = Table(title="revisions", title_justify="left")
    table.add_column("")
    table.add_column("revision", no_wrap=True)
    table.add_column("embedding space", no_wrap=True)
    table.add_column("phase")
    for role in ("live", "staged"):
        revision = state.get(role)
        if revision:
            table.add_row(
                role, str(revision.get("revision_id", "?")),
                str(revision.get("embedding_space") or "unknown"),
                str(revision.get("phase", "Running" if role == "live" else "?")),
            )  # fmt: skip
        else:
            table.add_row(role, "—", "", "")
    return table


def _shadow_table(shadow: dict[str, Any] | None) -> Table | Text:
    if not shadow:
        return Text("shadow traffic: none (no staged revision, or no report written yet)")
    latency = shadow.get("latency_ms") or {}
    table = Table(title="shadow traffic", title_justify="left", show_header=False)
    table.add_column("measure")
    table.add_column("value")
    rows = [
        ("fraction", _percent(shadow.get("fraction"))),
        ("requests", _count(shadow.get("requests"))),
        ("inputs", _count(shadow.get("inputs"))),
        ("dropped", _count(shadow.get("dropped"))),
        ("errors", _count(shadow.get("errors"))),
        ("latency p50 ms", f"live {_ms(latency.get('live_p50'))} · "
                           f"staged {_ms(latency.get('staged_p50'))}"),
        ("latency p99 ms", f"live {_ms(latency.get('live_p99'))} · "
                           f"staged {_ms(latency.get('staged_p99'))}"),
        ("mean cosine", _score(shadow.get("mean_cosine"), "— (dimensions differ)")),
        ("neighbour overlap@10", _score(shadow.get("neighbour_overlap_at_10"), "— (too few)")),
        ("window", _count(shadow.get("window"))),
        ("processes", _count(shadow.get("processes"))),
    ]  # fmt: skip
    for measure, value in rows:
        table.add_row(measure, value)
    return table


def _adapter_table(adapter: dict[str, Any], thresholds: dict[str, Any]) -> Table:
    kind = adapter.get("kind", "?")
    table = Table(title=f"adapter: {kind}", title_justify="left")
    table.add_column("held-out measure")
    table.add_column("value")
    table.add_column("threshold")
    table.add_column("")
    for label, key, threshold_key in (
        ("mean cosine", "mean_cosine", "adapter_mean_cosine"),
        ("neighbour overlap@10", "neighbour_overlap_at_10", "adapter_neighbour_overlap_at_10"),
    ):
        value, bound = adapter.get(key), thresholds.get(threshold_key)
        mark = "" if bound is None else ("✓" if _meets(value, bound) else "✗")
        table.add_row(label, _score(value), f"≥ {bound:.2f}" if bound is not None else "", mark)
    table.add_row("pairs", _count(adapter.get("pairs")), "", "")
    table.add_row("held out", _count(adapter.get("held_out")), "", "")
    table.add_row("fitted at", _minute(adapter.get("fitted_at")), "", "")
    return table


def _meets(value: Any, bound: float) -> bool:
    return isinstance(value, int | float) and value >= bound


def _adapter_passes(adapter: dict[str, Any], thresholds: dict[str, Any]) -> bool:
    return _meets(
        adapter.get("mean_cosine"), thresholds.get("adapter_mean_cosine", 0.0)
    ) and _meets(
        adapter.get("neighbour_overlap_at_10"),
        thresholds.get("adapter_neighbour_overlap_at_10", 0.0),
    )


def _percent(value: Any) -> str:
    return f"{value * 100:g}%" if isinstance(value, int | float) else "—"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "—"


def _ms(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "—"


def _score(value: Any, missing: str = "—") -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else missing


if __name__ == "__main__":
    app()
