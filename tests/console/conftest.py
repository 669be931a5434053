"""The app the console's file and dashboard tests read: `create_app` with a fake runtime, no
default model and no worker, behind real authentication (the admin token of tests/servers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from factories import HashEngine
from fastapi.testclient import TestClient
from servers import ADMIN_TOKEN

from greenroom.app import create_app
from greenroom.config import Settings
from greenroom.runtime.fake import FakeRuntime


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("console-app"),
        default_model_id="",
        worker_enabled=False,
        admin_token=ADMIN_TOKEN,
    )
    app = create_app(settings, FakeRuntime(lambda spec: HashEngine()))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
