"""What the tasks tests share: a session on a store holding the embedding model `m1`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from factories import add_embedding_model
from sqlalchemy.orm import Session

from greenroom.store.db import Store


@pytest.fixture
def db_session(store: Store) -> Iterator[Session]:
    """One session for the test, committed at the end (the store is empty and migrated)."""
    with store.session_scope() as session:
        add_embedding_model(session, "m1")
        yield session
