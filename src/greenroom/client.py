"""A small HTTP client of greenroom's APIs for the CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TASKS = "/internal/inference-deployment"


# What `POST /v1/migrations/…/samples` accepts (docs/api/migrations.md): texts a call, characters
# a text, and the body, which must stay under 8 MiB; the server keeps the newest 20,000.
MAX_SAMPLES_PER_CALL = 2048
MAX_SAMPLE_CHARS = 8192
MAX_SAMPLES_BODY_BYTES = 8 * 1024 * 1024 - 1
MAX_SAMPLES_KEPT = 20_000
TASK_KINDS = ("deploy", "delete", "promote", "finish", "abort")


class ClientError(Exception):
    """The server refused or could not be reached; the message says why in one sentence.
    `status` is the HTTP status of a refusal (None when nothing answered)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def default_token(data_dir: Path | None = None) -> str | None:
    """GREENROOM_TOKEN, else GREENROOM_ADMIN_TOKEN (the server's, where they share the
    environment), else the admin token file of the data dir (`<data dir>/admin.token`)."""
    for variable in ("GREENROOM_TOKEN", "GREENROOM_ADMIN_TOKEN"):
        if token := os.environ.get(variable):
            return token
    directory = data_dir or Path(os.environ.get("GREENROOM_DATA_DIR", "~/.greenroom"))
    token_file = directory.expanduser() / "admin.token"
    return token_file.read_text().strip() if token_file.is_file() else None


class GreenroomClient:
    def __init__(self, server: str, token: str | None = None, timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ClientError(
                f"Cannot reach greenroom at {self.http.base_url}: {exc}. Is `greenroom serve` "
                "running, and is --server (or GREENROOM_URL) right?"
            ) from exc
        if response.status_code >= 400:
            raise ClientError(
                f"{response.status_code}: {_error_text(response)}", response.status_code
            )
        return response.json() if response.content else None

    def register_model(self, model_id: str, source: str, description: str | None) -> Any:
        body = {"id": model_id, "source": source, "description": description}
        return self.request("POST", "/v1/embedding-models", json=body)

    def models(self) -> Any:
        return self.request("GET", "/v1/embedding-models")

    def deploy(
        self, model: str, config: dict[str, Any], allow_change: bool, *, staged: bool = False
    ) -> Any:
        body: dict[str, Any] = {"embedding_model_id": model}
        if config:
            body["config"] = config
        if allow_change:
            body["allow_embedding_space_change"] = True
        if staged:
            body["strategy"] = "staged"
        return self.request("POST", f"{TASKS}/deploy", json=body)

    def rollback(self, model: str, revision_id: str | None, allow_change: bool) -> Any:
        body: dict[str, Any] = {"embedding_model_id": model}
        if revision_id:
            body["revision_id"] = revision_id
        if allow_change:
            body["allow_embedding_space_change"] = True
        return self.request("POST", f"{TASKS}/rollback", json=body)

    def delete(self, model: str, reason: str | None) -> Any:
        return self.request(
            "POST", f"{TASKS}/delete", json={"embedding_model_id": model, "reason": reason}
        )

    def task(self, task_id: str) -> Any:
        return self._task_and_kind(task_id)[0]

    def _task_and_kind(self, task_id: str) -> tuple[Any, str]:
        """The task and its kind: the kind its id starts with first (`promote-…`), then the
        others (a client may have chosen the id); the first refusal when none has it."""
        path_id = quote(task_id, safe="")
        first = next((k for k in TASK_KINDS if task_id.startswith(f"{k}-")), "deploy")
        refusal: ClientError | None = None
        for kind in (first, *(k for k in TASK_KINDS if k != first)):
            try:
                return self.request("GET", f"{TASKS}/{kind}/{path_id}"), kind
            except ClientError as exc:
                if exc.status != 404:
                    raise
                refusal = refusal or exc
        assert refusal is not None
        raise refusal

    def cancel(self, task_id: str) -> Any:
        task, kind = self._task_and_kind(task_id)
        return self.request("POST", f"{TASKS}/{kind}/{quote(task['id'], safe='')}/cancel")

    # ----- embedding migrations (docs/api/migrations.md) ----------------------------------------
    def promote(self, model: str, *, adapted: bool, allow_change: bool) -> Any:
        body: dict[str, Any] = {
            "embedding_model_id": model,
            "mode": "adapted" if adapted else "raw",
        }
        if allow_change:
            body["allow_embedding_space_change"] = True
        return self.request("POST", f"{TASKS}/promote", json=body)

    def finish(self, model: str) -> Any:
        return self.request("POST", f"{TASKS}/finish", json={"embedding_model_id": model})

    def abort(self, model: str) -> Any:
        return self.request("POST", f"{TASKS}/abort", json={"embedding_model_id": model})

    def migration(self, model: str) -> Any:
        return self.request("GET", migration_path(model))

    def set_shadow_fraction(self, model: str, fraction: float) -> Any:
        return self.request("PUT", f"{migration_path(model)}/shadow", json={"fraction": fraction})

    def add_samples(self, model: str, texts: list[str]) -> Any:
        """One call of at most `MAX_SAMPLES_PER_CALL` texts; the body is encoded here, as
        `samples_body_bytes` measures it, so a chunk's size is known before it is sent."""
        return self.request(
            "POST",
            f"{migration_path(model)}/samples",
            content=samples_body(texts),
            headers={"Content-Type": "application/json"},
        )

    def fit_adapter(self, model: str) -> Any:
        return self.request("POST", f"{migration_path(model)}/adapter")

    def tasks(self, model: str | None, limit: int) -> Any:
        params: dict[str, Any] = {"limit": limit}
        if model:
            params["embedding_model_id"] = model
        return self.request("GET", f"{TASKS}/tasks", params=params)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create_token(self, name: str, scopes: list[str], expires_in: int | None = None) -> Any:
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if expires_in is not None:
            body["expires_in"] = expires_in
        return self.request("POST", "/v1/tokens", json=body)

    def tokens(self) -> Any:
        return self.request("GET", "/v1/tokens")

    def revoke_token(self, token_id: str) -> None:
        self.request("DELETE", f"/v1/tokens/{token_id}")


def migration_path(model: str) -> str:
    """`/v1/migrations/{workspace}/{name}` of a served name: `ws/name` is workspace `ws`, a
    plain name (an embedding model id) is in `default`."""
    workspace, _, name = model.partition("/") if "/" in model else ("default", "", model)
    return f"/v1/migrations/{quote(workspace, safe='')}/{quote(name, safe='')}"


def encoded_text(text: str) -> bytes:
    """One text as it appears in a samples body."""
    return json.dumps(text, ensure_ascii=False).encode()


def samples_body(texts: list[str]) -> bytes:
    return b'{"texts":[' + b",".join(encoded_text(t) for t in texts) + b"]}"


SAMPLES_BODY_OVERHEAD = len(samples_body([]))


def sample_chunks(texts: Iterable[str]) -> Iterator[list[str]]:
    """The texts in order, in chunks the samples endpoint accepts: at most
    `MAX_SAMPLES_PER_CALL` texts and `MAX_SAMPLES_BODY_BYTES` of body each. A text must fit a
    body on its own (`MAX_SAMPLE_CHARS` characters always do)."""
    chunk: list[str] = []
    size = SAMPLES_BODY_OVERHEAD
    for text in texts:
        length = len(encoded_text(text))
        if SAMPLES_BODY_OVERHEAD + length > MAX_SAMPLES_BODY_BYTES:
            raise ValueError("a text is larger than a samples call may carry")
        if chunk and (
            len(chunk) >= MAX_SAMPLES_PER_CALL or size + 1 + length > MAX_SAMPLES_BODY_BYTES
        ):
            yield chunk
            chunk, size = [], SAMPLES_BODY_OVERHEAD
        size += length + (1 if chunk else 0)  # and the comma before it
        chunk.append(text)
    if chunk:
        yield chunk


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str):
            return body["detail"]
        if isinstance(body.get("error"), dict):
            return body["error"].get("message", str(body))
        if "message" in body:
            return str(body["message"])
    return str(body)[:500]
