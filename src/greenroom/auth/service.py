"""Tokens: create, list, revoke, and authenticate a secret to its principal.

Plain functions, keyword-only arguments led by `db_session`; they never commit. A token is 32
random bytes, URL-safe; the store keeps only its SHA-256 (a fast hash is right for random
secrets: nothing to brute-force, no per-request bcrypt). A secret is found by its hash, and the
hash found is compared with `hmac.compare_digest`.

A token may carry an expiry (`expires_at`); from then on it is refused like a revoked one.

`Authenticator` is the request path: a small in-memory cache from hash to principal in front of
the store. A hit is one dict lookup and one constant-time compare; a miss is one indexed SELECT
(and, at most once a minute per token, an UPDATE of `last_used_at`). A revocation through this
process's `Authenticator.revoke` drops the token from its cache at once; other processes keep a
cached principal for at most `CACHE_TTL_S`, and never past the token's expiry. Unknown hashes
are remembered too, for `NEGATIVE_TTL_S`: a client repeating a wrong token costs a dict lookup,
not a query; a token created through this process's `Authenticator.create` is forgotten there at
once, so it works on its first request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from greenroom.auth.models import Token
from greenroom.auth.schemas import TokenCreate
from greenroom.auth.scopes import Scope, effective_scopes
from greenroom.errors import NotFoundError
from greenroom.store.db import Store, utcnow

SECRET_BYTES = 32
CACHE_TTL_S = 5.0  # how long another process may still accept a token revoked elsewhere
CACHE_MAX_ENTRIES = 10_000
# How long a hash found in no token is answered from memory; another process's new token (one
# whose value was tried here before it existed) works here after at most this long.
NEGATIVE_TTL_S = 5.0
NEGATIVE_MAX_ENTRIES = 10_000
LAST_USED_RESOLUTION = timedelta(minutes=1)
ADMIN_TOKEN_NAME = "admin"  # the bootstrap admin token's name


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: a token's id and name, and every scope it holds (implied ones
    included)."""

    id: str
    name: str
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes


def principal_of(token: Token) -> Principal:
    return Principal(id=token.id, name=token.name, scopes=effective_scopes(token.scopes))


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# ----- reading -----------------------------------------------------------------------------------


def get(db_session: Session, *, token_id: str) -> Token | None:
    return db_session.get(Token, token_id)


def get_or_raise(db_session: Session, *, token_id: str) -> Token:
    token = get(db_session, token_id=token_id)
    if token is None:
        raise NotFoundError(f"Token '{token_id}' not found")
    return token


def get_by_hash(db_session: Session, *, token_hash: str) -> Token | None:
    return db_session.scalars(select(Token).where(Token.token_hash == token_hash)).one_or_none()


def get_all(db_session: Session) -> list[Token]:
    """Every token, revoked ones included, oldest first."""
    return list(db_session.scalars(select(Token).order_by(Token.created_at, Token.id)))


def get_active(db_session: Session, *, now: datetime | None = None) -> list[Token]:
    """Every token neither revoked nor expired (at `now`, default the present)."""
    now = now or utcnow()
    return [token for token in get_all(db_session) if token.is_usable(now)]


def find_active(
    db_session: Session, *, token_hash: str, now: datetime | None = None
) -> Token | None:
    """The token of a secret's hash if it is neither revoked nor expired at `now` (default the
    present), or None; the hash found is compared in constant time."""
    token = get_by_hash(db_session, token_hash=token_hash)
    if token is None or not token.is_usable(now or utcnow()):
        return None
    return token if hmac.compare_digest(token.token_hash, token_hash) else None


# ----- changes -----------------------------------------------------------------------------------


def create(
    db_session: Session,
    *,
    token_in: TokenCreate,
    secret: str | None = None,
    now: datetime | None = None,
) -> tuple[Token, str]:
    """A new token and its secret, which is never stored and cannot be shown again. `secret` is
    for a token whose value is given (`GREENROOM_ADMIN_TOKEN`); new tokens get 32 random bytes.
    With `expires_in`, the token expires that many seconds after `now` (default the present)."""
    secret = secret or new_secret()
    now = now or utcnow()
    expires_in = token_in.expires_in
    token = Token(
        name=token_in.name,
        scopes=[str(scope) for scope in token_in.scopes],
        token_hash=hash_secret(secret),
        created_at=now,
        expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
    )
    db_session.add(token)
    db_session.flush()
    return token, secret


def revoke(db_session: Session, *, token_id: str) -> Token:
    """Revoke a token; revoking a revoked token changes nothing."""
    token = get_or_raise(db_session, token_id=token_id)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token


def touch(token: Token, *, now: datetime) -> bool:
    """Record a use, at most once per `LAST_USED_RESOLUTION`; whether it wrote."""
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_RESOLUTION:
        return False
    token.last_used_at = now
    return True


# ----- the bootstrap admin token ----------------------------------------------------------------


def is_admin(token: Token) -> bool:
    return Scope.ADMIN in token.scopes


def has_active_admin(db_session: Session) -> bool:
    return any(is_admin(token) for token in get_active(db_session))


def create_admin(db_session: Session, *, secret: str | None = None) -> tuple[Token, str]:
    return create(
        db_session,
        token_in=TokenCreate(name=ADMIN_TOKEN_NAME, scopes=[Scope.ADMIN]),
        secret=secret,
    )


def adopt_admin(db_session: Session, *, secret: str) -> tuple[Token, list[Token]]:
    """Make `secret` the bootstrap admin token (the token named `admin` with scope admin).

    Idempotent: the token of that secret when it exists (revoked or not: a revocation stands).
    Otherwise it is created and the previous bootstrap admin tokens are revoked, so that a new
    `GREENROOM_ADMIN_TOKEN` value replaces the old one. Returns the token and those revoked.
    """
    existing = get_by_hash(db_session, token_hash=hash_secret(secret))
    if existing is not None:
        return existing, []
    replaced = [
        token
        for token in get_active(db_session)
        if token.name == ADMIN_TOKEN_NAME and token.scopes == [Scope.ADMIN]
    ]
    for token in replaced:
        revoke(db_session, token_id=token.id)
    token, _ = create_admin(db_session, secret=secret)
    return token, replaced


# ----- the request path --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    token_hash: str
    principal: Principal
    expires_at: float


class Authenticator:
    """Secret → principal for the requests of one process, through a small TTL cache of known
    tokens and one of unknown hashes, both bounded.

    Thread-safe: the event loop reads the caches; lookups that miss run in threads. A lookup that
    read the store before a revocation or a creation here cannot put what it read in a cache
    (a generation counter guards the writes).
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl_s: float = CACHE_TTL_S,
        max_entries: int = CACHE_MAX_ENTRIES,
        negative_ttl_s: float = NEGATIVE_TTL_S,
        negative_max_entries: int = NEGATIVE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.negative_ttl_s = negative_ttl_s
        self.negative_max_entries = negative_max_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: dict[str, _Entry] = {}
        self._unknown: dict[str, float] = {}  # hash → until when it is answered "unknown"
        self._generation = 0
        self._lock = threading.Lock()

    def authenticate(self, secret: str) -> Principal | None:
        """The principal of a usable token (neither revoked nor expired), or None; blocking."""
        token_hash = hash_secret(secret)
        return self.cached(token_hash) or self.lookup(token_hash)

    async def resolve(self, token_hash: str) -> Principal | None:
        """The request path's `authenticate`: a cache hit, known or unknown, costs a dict lookup
        on the event loop; only a miss reads the store, in a thread."""
        principal = self.cached(token_hash)
        if principal is not None or self.known_unknown(token_hash):
            return principal
        return await asyncio.to_thread(self.lookup, token_hash)

    def cached(self, token_hash: str) -> Principal | None:
        """The cached principal of `token_hash`, or None (absent or expired): no I/O."""
        entry = self._entries.get(token_hash)
        if entry is None or entry.expires_at < self._clock():
            return None
        return entry.principal if hmac.compare_digest(entry.token_hash, token_hash) else None

    def known_unknown(self, token_hash: str) -> bool:
        """Whether `token_hash` was found in no usable token less than `negative_ttl_s` ago."""
        until = self._unknown.get(token_hash)
        return until is not None and self._clock() < until

    def lookup(self, token_hash: str) -> Principal | None:
        """Read the token from the store (blocking) and cache the answer, either way."""
        if self.known_unknown(token_hash):
            return None
        generation = self._generation
        now = self._wall_clock()
        with self.store.session_scope() as db_session:
            token = find_active(db_session, token_hash=token_hash, now=now)
            if token is None:
                self._remember_unknown(token_hash, generation)
                return None
            touch(token, now=now)
            principal = principal_of(token)
            expires_at = token.expires_at
        ttl_s = self.ttl_s
        if expires_at is not None:  # a cached principal never outlives its token
            ttl_s = min(ttl_s, (expires_at - now).total_seconds())
        self._remember(token_hash, principal, generation, ttl_s)
        return principal

    def create(self, token_in: TokenCreate) -> tuple[Token, str]:
        """Create a token (committed) that this process accepts from its first request, even if
        its value was tried here before it existed."""
        with self.store.session_scope() as db_session:
            token, secret = create(db_session, token_in=token_in, now=self._wall_clock())
        self.forget_unknown(token.token_hash)
        return token, secret

    def revoke(self, token_id: str) -> Token:
        """Revoke a token in the store and drop it from this process's cache at once."""
        with self.store.session_scope() as db_session:
            token = revoke(db_session, token_id=token_id)
        self.forget([token_id])
        return token

    def forget(self, token_ids: Iterable[str]) -> None:
        ids = set(token_ids)
        with self._lock:
            self._generation += 1
            for token_hash, entry in list(self._entries.items()):
                if entry.principal.id in ids:
                    del self._entries[token_hash]

    def forget_unknown(self, token_hash: str) -> None:
        with self._lock:
            self._generation += 1
            self._unknown.pop(token_hash, None)

    def _remember(
        self, token_hash: str, principal: Principal, generation: int, ttl_s: float
    ) -> None:
        with self._lock:
            if generation != self._generation:
                return  # a revocation happened while the store was read
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            expires_at = self._clock() + ttl_s
            self._entries[token_hash] = _Entry(token_hash, principal, expires_at)

    def _remember_unknown(self, token_hash: str, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return  # a token was created while the store was read
            if len(self._unknown) >= self.negative_max_entries:
                self._unknown.pop(next(iter(self._unknown)))
            self._unknown.pop(token_hash, None)  # a refreshed entry is evicted last
            self._unknown[token_hash] = self._clock() + self.negative_ttl_s
