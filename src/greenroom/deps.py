"""FastAPI dependencies shared by the views: the request's database session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from greenroom.db import Store


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_db_session(request: Request) -> Iterator[Session]:
    """One session per request, committed when the view returns without error."""
    with get_store(request).session_scope() as session:
        yield session


DbSession = Annotated[Session, Depends(get_db_session)]
