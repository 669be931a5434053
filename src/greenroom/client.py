"""A small HTTP client of greenroom's APIs for the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TASKS = "/internal/inference-deployment"


class ClientError(Exception):
    """The server refused or could not be reached; the message says why in one sentence."""


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
            raise ClientError(f"{response.status_code}: {_error_text(response)}")
        return response.json() if response.content else None

    def register_model(self, model_id: str, source: str, description: str | None) -> Any:
        body = {"id": model_id, "source": source, "description": description}
        return self.request("POST", "/v1/embedding-models", json=body)

    def models(self) -> Any:
        return self.request("GET", "/v1/embedding-models")

    def deploy(self, model: str, config: dict[str, Any], allow_change: bool) -> Any:
        body: dict[str, Any] = {"embedding_model_id": model}
        if config:
            body["config"] = config
        if allow_change:
            body["allow_embedding_space_change"] = True
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
        kind = "delete" if task_id.startswith("delete-") else "deploy"
        try:
            return self.request("GET", f"{TASKS}/{kind}/{task_id}")
        except ClientError:
            other = "deploy" if kind == "delete" else "delete"
            return self.request("GET", f"{TASKS}/{other}/{task_id}")

    def cancel(self, task_id: str) -> Any:
        task = self.task(task_id)
        kind = "delete" if task["id"].startswith("delete-") else "deploy"
        if task.get("metadata", {}).get("deletion_type"):
            kind = "delete"
        return self.request("POST", f"{TASKS}/{kind}/{task_id}/cancel")

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
