"""The `greenroom` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="greenroom: green deployments and an OpenAI-compatible endpoint for embedding models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Settings come from GREENROOM_* environment variables; flags override them."""


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (env GREENROOM_HOST, default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to bind (env GREENROOM_PORT, default 8000).")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="State, ONNX export cache and logs (env GREENROOM_DATA_DIR, default ~/.greenroom)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Log level: debug, info, warning.")] = "info",
) -> None:
    """Start the API, the router and the local runtime; the default model is served at start."""
    import os

    import uvicorn

    from greenroom.app import create_app
    from greenroom.config import Settings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    overrides = {"host": host, "port": port, "data_dir": data_dir}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    data = settings.resolved_data_dir()
    (data / "logs").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(), logging.FileHandler(data / "logs" / "greenroom.log")],
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    app()
