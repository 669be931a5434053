"""What the migrations tests share: a session on an empty store, with the migration tables
registered (so they are emptied between tests)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session

import greenroom.migrations.models  # noqa: F401 - registers the tables the store fixture empties
from greenroom.store.db import Store


@pytest.fixture
def db_session(store: Store) -> Iterator[Session]:
    """One session for the test, committed at the end (the store is empty and migrated)."""
    with store.session_scope() as session:
        yield session
