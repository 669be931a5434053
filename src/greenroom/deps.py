"""FastAPI dependencies shared by the views: the request's database session; waking workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, Request
from sqlalchemy import event
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from greenroom.signals import Topic
from greenroom.store.db import Store


def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_db_session(request: Request) -> AsyncIterator[Session]:
    """One session per request, committed when the view returns without error, else rolled
    back. Opening a session reads nothing (its first statement, in the view's thread, checks a
    connection out), so this runs on the event loop and only its end takes a thread: FastAPI
    runs a plain generator's start and its end in a thread each, one more hop a request."""
    session = get_store(request).sessions()
    try:
        yield session
    except BaseException:
        await _end_shielded(session, commit=False)
        raise
    await _end_shielded(session, commit=True)


async def _end_shielded(session: Session, *, commit: bool) -> None:
    with anyio.CancelScope(shield=True):  # a client that leaves must not leak the connection
        await run_in_threadpool(_end, session, commit)


def _end(session: Session, commit: bool) -> None:
    with session:  # closed, its connection back in the pool, either way
        if commit:
            session.commit()
        else:
            session.rollback()


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
