"""The `greenroom` command: the server, a worker, the store, and client commands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Column, Table

from greenroom.auth.scopes import Scope
from greenroom.client import DEFAULT_URL, ClientError, GreenroomClient, default_token

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
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        **UVICORN_LIMITS,  # h11 with a bounded request head
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
            "max_batch_tokens, max_queue, threads, runtime); repeatable.",
        ),
    ] = None,
    allow_embedding_space_change: Annotated[
        bool,
        typer.Option(help="Let vectors that are not comparable with the live ones take over."),
    ] = False,
    wait: Wait = False,
    server: Server = DEFAULT_URL,
) -> None:
    """Deploy the model's latest config as a green rollout; prints the task id."""
    client = _client(server)
    task = _call(
        lambda: client.deploy(model, _parse_sets(set_ or []), allow_embedding_space_change)
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


def follow(client: GreenroomClient, task_id: str, interval_s: float = 0.3) -> dict[str, Any]:
    """Show the task's steps live until it ends; returns the final task."""
    with Live(console=errors, refresh_per_second=8, transient=False) as live:
        while True:
            task = _call(lambda: client.task(task_id))
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


if __name__ == "__main__":
    app()
