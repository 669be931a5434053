"""Signals across processes on PostgreSQL: LISTEN/NOTIFY on the channel `greenroom`.

Every process on a PostgreSQL store (each `greenroom serve`, each `greenroom worker`) runs one
`PostgresBridge` beside its `Signals`:

- sending: every `Signals.notify(topic)` (called after the writer's commit) is queued to a sender
  thread, which runs `SELECT pg_notify('greenroom', '<topic>')` on its own autocommit connection,
  so the notification leaves only once the change it announces is committed and visible. Topics
  queued while a send is under way go out together; a failed send is retried after a reconnect.
- listening: an asyncio task holds a second connection in `LISTEN greenroom` and turns each
  notification into `Signals.wake(topic)`: local waiters re-read the store at once, and nothing
  is sent on (no echo). Notifications from this process's own sender are skipped (their local
  waiters were woken already). On a dropped connection it logs, backs off and reconnects; after
  each (re)connect it wakes every topic once, since notifications sent in the gap are lost.

Waiters still re-read the store at least once a second (`signals.MAX_WAIT_S`), so a lost
notification costs at most a second, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading

import psycopg
from sqlalchemy.engine import make_url

from greenroom.signals import Signals, Topic

log = logging.getLogger("greenroom.notify")

CHANNEL = "greenroom"
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
LISTEN_CHECK_S = 10.0  # an idle listening connection is checked this often (a dead peer shows)
CONNECT_TIMEOUT_S = 5
START_WAIT_S = 5.0  # how long `start()` waits for LISTEN before going on (it keeps retrying)
_STOP = object()


def libpq_url(database_url: str) -> str:
    """The libpq form of a SQLAlchemy URL (`postgresql+psycopg://…` → `postgresql://…`)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class PostgresBridge:
    """Forwards this process's signals to PostgreSQL and wakes it on everyone else's."""

    def __init__(self, database_url: str, signals: Signals) -> None:
        self.conninfo = libpq_url(database_url)
        self.signals = signals
        self._outbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._sender_pid: int | None = None  # backend pid of our sending connection
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._stopping = threading.Event()

    # ----- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start sending and listening; waits (bounded) until LISTEN is in place."""
        self._stopping.clear()
        self._sender = threading.Thread(target=self._send_loop, name="pg notify", daemon=True)
        self._sender.start()
        self.signals.forward_to(self.send)
        self._listener = asyncio.create_task(self._listen_loop(), name="pg listen")
        try:
            await asyncio.wait_for(self._listening.wait(), START_WAIT_S)
        except TimeoutError:
            log.warning("LISTEN %s is not in place yet; still trying", CHANNEL)

    async def stop(self) -> None:
        """Stop listening and sending (what is queued is sent first, briefly)."""
        self.signals.stop_forwarding(self.send)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._sender is not None:
            self._outbox.put(_STOP)
            sender = self._sender
            await asyncio.to_thread(sender.join, CONNECT_TIMEOUT_S)
            self._stopping.set()  # a sender stuck in back-off gives up
            self._sender = None

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    # ----- sending -----------------------------------------------------------------------------
    def send(self, topics: tuple[Topic, ...]) -> None:
        """Queue the topics for NOTIFY; never blocks (called from `Signals.notify`)."""
        for topic in topics:
            self._outbox.put(topic)

    def _send_loop(self) -> None:
        conn: psycopg.Connection | None = None
        pending: set[str] = set()
        delay = BACKOFF_INITIAL_S
        stop = False
        try:
            while not stop:
                if not pending:
                    item = self._outbox.get()
                    stop = item is _STOP
                    if not stop:
                        pending.add(str(item))
                while True:  # take everything queued meanwhile: one round trip for all of it
                    try:
                        item = self._outbox.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                    else:
                        pending.add(str(item))
                if not pending:
                    continue
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(
                            self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                        )
                        self._sender_pid = conn.info.backend_pid
                    conn.execute(
                        "SELECT pg_notify(%s, topic) FROM unnest(%s::text[]) AS topic",
                        (CHANNEL, sorted(pending)),
                    )
                    pending.clear()
                    delay = BACKOFF_INITIAL_S
                except psycopg.Error as exc:
                    log.warning("NOTIFY failed (%s); retrying in %.1fs", exc, delay)
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                    conn = None
                    if self._stopping.wait(delay):
                        return
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    stop = False  # finish what is pending first (stop() bounds the wait)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    # ----- listening ---------------------------------------------------------------------------
    async def _listen_loop(self) -> None:
        delay = BACKOFF_INITIAL_S
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # psycopg errors, a reset connection, a server restart
                if self._listening.is_set():  # it had worked: start the back-off afresh
                    delay = BACKOFF_INITIAL_S
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
            self._listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def _listen_once(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        )
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self._listening.set()
            log.info("listening on PostgreSQL channel '%s'", CHANNEL)
            self.signals.wake(*Topic)  # whatever was sent while we were not listening
            while True:
                async for notification in conn.notifies(timeout=LISTEN_CHECK_S):
                    if notification.pid == self._sender_pid:
                        continue  # ours: the local waiters were woken when it was sent
                    try:
                        topic = Topic(notification.payload)
                    except ValueError:
                        continue
                    self.signals.wake(topic)
                await conn.execute("SELECT 1")  # idle a while: prove the connection is alive
