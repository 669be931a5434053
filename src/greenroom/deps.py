"""FastAPI dependencies shared by the views: the request's database session; waking workers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.orm import Session

from greenroom.signals import Topic
from greenroom.store.db import Store


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_db_session(request: Request) -> Iterator[Session]:
    """One session per request, committed when the view returns without error."""
    with get_store(request).session_scope() as session:
        yield session


# scope="function": the session commits before the response is sent (FastAPI's default runs a
# yield dependency's exit after it), so a client that reads what it just wrote finds it.
DbSession = Annotated[Session, Depends(get_db_session, scope="function")]


def notify_workers_after_commit(request: Request, db_session: Session) -> None:
    """Wake this process's workers once the request's session commits (not before: a woken
    worker must find the task). Apps without signals (some tests) skip it."""
    signals = getattr(request.app.state, "signals", None)
    if signals is None:
        return
    event.listen(db_session, "after_commit", lambda _: signals.notify(Topic.TASKS), once=True)
