"""Schemathesis against a live, disposable server: every operation, the destructive ones too.

The server is bare (no default model) with one tiny model registered, and runs the real app over
HTTP on 127.0.0.1 with the admin token, so every route is reached past authentication. Each
operation gets a bounded number of generated requests (valid and invalid ones), checked for
server errors and for conformance to the OpenAPI document: the status codes it lists, the
content type and the response schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from servers import ADMIN_HEADERS, running_server

from greenroom.app import create_app
from greenroom.config import Settings

MAX_EXAMPLES = 25  # per operation: the whole run stays within a few minutes
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    settings_ = Settings(
        data_dir=data_dir,
        default_model_id="",
        admin_token=ADMIN_HEADERS["Authorization"].removeprefix("Bearer "),
        registration_timeout_s=60,
    )
    with running_server(create_app(settings_)) as base_url:
        registered = httpx.post(
            f"{base_url}/v1/embedding-models",
            json={"id": "tiny", "source": str(tiny_model_dir)},
            headers=ADMIN_HEADERS,
            timeout=120,
        )
        assert registered.status_code == 201, registered.text
        yield base_url


# The document is the app's own, built without starting it (no lifespan runs); the requests go
# to the live server.
schema = schemathesis.openapi.from_dict(create_app(Settings(default_model_id="")).openapi())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_every_operation(case: schemathesis.Case, live_server: str) -> None:
    case.headers = {**(case.headers or {}), **ADMIN_HEADERS}
    case.call_and_validate(base_url=live_server, checks=CHECKS, timeout=60)
