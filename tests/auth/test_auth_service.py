"""Tokens: created and stored as hashes, listed, revoked; the authenticator and its cache."""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from helpers import async_test
from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

from greenroom.auth import service as auth_service
from greenroom.auth.models import Token
from greenroom.auth.schemas import TokenCreate
from greenroom.auth.scopes import Scope, effective_scopes
from greenroom.auth.service import Authenticator, Principal
from greenroom.errors import NotFoundError
from greenroom.store.db import Store, utcnow

URL_SAFE = set(string.ascii_letters + string.digits + "-_")


class Clock:
    """A monotonic clock (`clock()`) and a wall clock (`clock.wall()`) that advance together."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.epoch = utcnow() - timedelta(seconds=self.now)

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return self.epoch + timedelta(seconds=self.now)


def create_token(store: Store, name: str = "ci", *scopes: Scope) -> tuple[str, str]:
    """A token's id and secret."""
    token_in = TokenCreate(name=name, scopes=list(scopes) or [Scope.DEPLOY])
    with store.session_scope() as db_session:
        token, secret = auth_service.create(db_session, token_in=token_in)
        return token.id, secret


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authenticator(store: Store, clock: Clock) -> Authenticator:
    return Authenticator(store, ttl_s=5.0, clock=clock)


def test_create_keeps_only_the_sha256_of_a_random_url_safe_secret(store: Store) -> None:
    token_id, secret = create_token(store, "ci", Scope.DEPLOY, Scope.INFER, Scope.DEPLOY)
    assert len(secret) == 43 and set(secret) <= URL_SAFE  # 32 random bytes
    with store.session_scope() as db_session:
        token = auth_service.get_or_raise(db_session, token_id=token_id)
        assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert (token.name, token.scopes) == ("ci", ["deploy", "infer"])
        assert token.created_at is not None and token.last_used_at is token.revoked_at is None
        columns = inspect(Token).columns.keys()
        assert all(secret not in str(getattr(token, column)) for column in columns)
    assert create_token(store)[1] != secret


def test_get_all_lists_every_token_oldest_first(store: Store) -> None:
    first, _ = create_token(store, "a")
    second, _ = create_token(store, "b")
    with store.session_scope() as db_session:
        auth_service.revoke(db_session, token_id=first)
        assert [t.id for t in auth_service.get_all(db_session)] == [first, second]
        assert [t.id for t in auth_service.get_active(db_session)] == [second]


def test_revoke_is_idempotent_and_unknown_ids_are_not_found(store: Store) -> None:
    token_id, _ = create_token(store)
    with store.session_scope() as db_session:
        revoked_at = auth_service.revoke(db_session, token_id=token_id).revoked_at
        assert revoked_at is not None
        assert auth_service.revoke(db_session, token_id=token_id).revoked_at == revoked_at
        with pytest.raises(NotFoundError, match="Token 'nope' not found"):
            auth_service.revoke(db_session, token_id="nope")


def test_authenticate_gives_the_principal_with_implied_scopes(
    store: Store, authenticator: Authenticator
) -> None:
    token_id, secret = create_token(store, "ci", Scope.DEPLOY)
    principal = authenticator.authenticate(secret)
    assert principal == Principal(
        id=token_id, name="ci", scopes=frozenset({Scope.DEPLOY, Scope.READ})
    )
    assert authenticator.authenticate("not-a-token") is None
    assert authenticator.authenticate(secret[:-1]) is None


def test_hashes_are_compared_in_constant_time_on_both_paths(
    store: Store, authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def compare_digest(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_service.hmac, "compare_digest", compare_digest)
    _, secret = create_token(store)
    expected = auth_service.hash_secret(secret)
    assert authenticator.authenticate(secret) is not None  # a miss: the store
    assert authenticator.authenticate(secret) is not None  # a hit: the cache
    assert compared == [(expected, expected), (expected, expected)]


def test_a_cache_hit_does_not_read_the_store_until_the_ttl(
    store: Store, authenticator: Authenticator, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, secret = create_token(store)
    principal = authenticator.authenticate(secret)
    reads: list[str] = []
    real = auth_service.find_active

    def find_active(db_session: Session, *, token_hash: str, **kwargs: object) -> Token | None:
        reads.append("read")
        return real(db_session, token_hash=token_hash, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(auth_service, "find_active", find_active)
    clock.now += 4.9
    assert authenticator.authenticate(secret) == principal and reads == []
    clock.now += 0.2
    assert authenticator.authenticate(secret) == principal and reads == ["read"]


def test_a_revocation_here_invalidates_the_cache_at_once(
    store: Store, authenticator: Authenticator
) -> None:
    token_id, secret = create_token(store)
    _, other = create_token(store, "other")
    assert authenticator.authenticate(secret) and authenticator.authenticate(other)
    authenticator.revoke(token_id)
    assert authenticator.authenticate(secret) is None  # no clock advance: at once
    assert authenticator.authenticate(other) is not None
    with store.session_scope() as db_session:
        assert auth_service.get_or_raise(db_session, token_id=token_id).is_revoked


def test_another_process_sees_a_revocation_within_the_ttl(
    store: Store, authenticator: Authenticator, clock: Clock
) -> None:
    token_id, secret = create_token(store)
    assert authenticator.authenticate(secret)
    Authenticator(store).revoke(token_id)  # another process's authenticator
    assert authenticator.authenticate(secret) is not None  # cached here, for at most the TTL
    clock.now += authenticator.ttl_s + 0.1
    assert authenticator.authenticate(secret) is None


def test_a_lookup_racing_a_revocation_is_not_cached(
    store: Store, authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_id, secret = create_token(store)
    real_touch = auth_service.touch

    def touch_then_revoke(token: Token, *, now: object) -> bool:
        authenticator.forget([token_id])  # the revocation lands while the store is read
        return real_touch(token, now=now)  # type: ignore[arg-type]

    monkeypatch.setattr(auth_service, "touch", touch_then_revoke)
    assert authenticator.authenticate(secret) is not None
    assert authenticator.cached(auth_service.hash_secret(secret)) is None


def test_the_cache_is_bounded(store: Store, clock: Clock) -> None:
    authenticator = Authenticator(store, max_entries=2, clock=clock)
    secrets = [create_token(store, f"t{i}")[1] for i in range(3)]
    for secret in secrets:
        assert authenticator.authenticate(secret) is not None
    hashes = [auth_service.hash_secret(secret) for secret in secrets]
    assert [authenticator.cached(h) is not None for h in hashes] == [False, True, True]


def test_last_used_at_is_written_at_most_once_a_minute(
    store: Store, authenticator: Authenticator, clock: Clock
) -> None:
    token_id, secret = create_token(store)
    authenticator.authenticate(secret)
    with store.session_scope() as db_session:
        token = auth_service.get_or_raise(db_session, token_id=token_id)
        first = token.last_used_at
        assert first is not None
        assert not auth_service.touch(token, now=first + timedelta(seconds=59))
        assert auth_service.touch(token, now=first + timedelta(seconds=60))
    clock.now += 10  # past the TTL: the store is read again, and not written
    authenticator.authenticate(secret)
    with store.session_scope() as db_session:
        last = auth_service.get_or_raise(db_session, token_id=token_id).last_used_at
        assert last == first + timedelta(seconds=60)


IMPLIED = {
    Scope.ADMIN: {Scope.ADMIN, Scope.DEPLOY, Scope.CONTROLLER, Scope.READ, Scope.INFER},
    Scope.DEPLOY: {Scope.DEPLOY, Scope.READ},
    Scope.CONTROLLER: {Scope.CONTROLLER, Scope.READ},
    Scope.READ: {Scope.READ},
    Scope.INFER: {Scope.INFER},
}


@pytest.mark.parametrize("granted", list(Scope))
@pytest.mark.parametrize("needed", list(Scope))
def test_scope_implication(granted: Scope, needed: Scope) -> None:
    principal = Principal(id="t", name="t", scopes=effective_scopes([granted]))
    assert principal.allows(needed) is (needed in IMPLIED[granted])


def test_scopes_add_up() -> None:
    assert effective_scopes(["read", "infer"]) == {Scope.READ, Scope.INFER}
    assert effective_scopes(["controller", "deploy"]) == {
        Scope.CONTROLLER,
        Scope.DEPLOY,
        Scope.READ,
    }


# ----- the bootstrap admin token ----------------------------------------------------------------


def test_adopt_admin_is_idempotent(store: Store, authenticator: Authenticator) -> None:
    with store.session_scope() as db_session:
        token, replaced = auth_service.adopt_admin(db_session, secret="env-secret")
        assert (token.name, token.scopes, replaced) == ("admin", ["admin"], [])
    with store.session_scope() as db_session:
        again, replaced = auth_service.adopt_admin(db_session, secret="env-secret")
        assert (again.id, replaced) == (token.id, [])
        assert len(auth_service.get_all(db_session)) == 1
        assert auth_service.has_active_admin(db_session)
    principal = authenticator.authenticate("env-secret")
    assert principal is not None and principal.allows(Scope.DEPLOY)


def test_a_new_admin_secret_replaces_the_bootstrap_admin_token_only(
    store: Store, authenticator: Authenticator
) -> None:
    _, ops = create_token(store, "admin", Scope.ADMIN, Scope.INFER)  # not the bootstrap one
    with store.session_scope() as db_session:
        old, _ = auth_service.adopt_admin(db_session, secret="old-secret")
    with store.session_scope() as db_session:
        new, replaced = auth_service.adopt_admin(db_session, secret="new-secret")
        assert [t.id for t in replaced] == [old.id] and new.id != old.id
    assert authenticator.authenticate("old-secret") is None
    assert authenticator.authenticate("new-secret") is not None
    assert authenticator.authenticate(ops) is not None


def test_a_revoked_admin_secret_stays_revoked(store: Store, authenticator: Authenticator) -> None:
    with store.session_scope() as db_session:
        token, _ = auth_service.adopt_admin(db_session, secret="env-secret")
    authenticator.revoke(token.id)
    with store.session_scope() as db_session:
        again, _ = auth_service.adopt_admin(db_session, secret="env-secret")
        assert again.is_revoked and not auth_service.has_active_admin(db_session)
    assert authenticator.authenticate("env-secret") is None


# ----- unknown tokens: answered from memory ------------------------------------------------------


@pytest.fixture
def token_reads(store: Store) -> Iterator[list[str]]:
    """The statements that read the tokens table, as the store runs them."""
    reads: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "tokens" in statement:
            reads.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    try:
        yield reads
    finally:
        event.remove(store.engine, "before_cursor_execute", note)


def test_a_repeated_unknown_token_costs_no_query_until_the_negative_ttl(
    store: Store, authenticator: Authenticator, clock: Clock, token_reads: list[str]
) -> None:
    for _ in range(20):
        assert authenticator.authenticate("not-a-token") is None
    assert len(token_reads) == 1
    clock.now += authenticator.negative_ttl_s - 0.1
    assert authenticator.authenticate("not-a-token") is None and len(token_reads) == 1
    clock.now += 0.2
    assert authenticator.authenticate("not-a-token") is None and len(token_reads) == 2


@async_test
async def test_resolve_answers_a_known_unknown_hash_without_the_store(
    store: Store, authenticator: Authenticator, token_reads: list[str]
) -> None:
    unknown = auth_service.hash_secret("not-a-token")
    assert await authenticator.resolve(unknown) is None
    assert authenticator.known_unknown(unknown) and len(token_reads) == 1
    assert await authenticator.resolve(unknown) is None and len(token_reads) == 1


def test_the_negative_cache_is_bounded(store: Store, clock: Clock) -> None:
    authenticator = Authenticator(store, negative_max_entries=2, clock=clock)
    hashes = [auth_service.hash_secret(f"wrong-{i}") for i in range(3)]
    for token_hash in hashes:
        assert authenticator.lookup(token_hash) is None
    assert [authenticator.known_unknown(h) for h in hashes] == [False, True, True]


def test_a_token_created_after_a_refusal_of_its_value_works_at_once(
    store: Store, authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "a-value-tried-before-it-was-a-token-0123456789"
    assert authenticator.authenticate(secret) is None  # remembered as unknown
    monkeypatch.setattr(auth_service, "new_secret", lambda: secret)
    token, _ = authenticator.create(TokenCreate(name="late", scopes=[Scope.READ]))
    principal = authenticator.authenticate(secret)  # no clock advance: at once
    assert principal is not None and principal.id == token.id


def test_a_lookup_racing_a_creation_does_not_cache_the_refusal(
    store: Store, authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = auth_service.hash_secret("not-yet-a-token")
    real = auth_service.find_active

    def find_then_create(db_session: Session, **kwargs: object) -> Token | None:
        found = real(db_session, **kwargs)  # type: ignore[arg-type]
        authenticator.forget_unknown(unknown)  # a creation lands while the store is read
        return found

    monkeypatch.setattr(auth_service, "find_active", find_then_create)
    assert authenticator.lookup(unknown) is None
    assert not authenticator.known_unknown(unknown)


# ----- expiry ------------------------------------------------------------------------------------


@pytest.fixture
def timed(store: Store, clock: Clock) -> Authenticator:
    """An authenticator whose wall clock is the test's."""
    return Authenticator(store, ttl_s=5.0, clock=clock, wall_clock=clock.wall)


def test_create_stores_the_expiry_of_expires_in(store: Store, clock: Clock) -> None:
    with store.session_scope() as db_session:
        token, _ = auth_service.create(
            db_session,
            token_in=TokenCreate(name="ci", scopes=[Scope.READ], expires_in=3600),
            now=clock.wall(),
        )
        assert token.expires_at == clock.wall() + timedelta(hours=1)
        forever, _ = auth_service.create(
            db_session, token_in=TokenCreate(name="ops", scopes=[Scope.READ])
        )
        assert forever.expires_at is None


@pytest.mark.parametrize("expires_in", [0, 59, 3650 * 86400 + 1])
def test_expires_in_is_bounded(expires_in: int) -> None:
    with pytest.raises(ValueError, match="expires_in"):
        TokenCreate(name="ci", scopes=[Scope.READ], expires_in=expires_in)


def test_an_expired_token_is_refused_and_no_longer_active(
    store: Store, timed: Authenticator, clock: Clock
) -> None:
    token, secret = timed.create(TokenCreate(name="ci", scopes=[Scope.READ], expires_in=60))
    clock.now += 59
    assert timed.authenticate(secret) is not None
    clock.now += timed.ttl_s + 1  # past the expiry and the cache's TTL
    assert timed.authenticate(secret) is None
    with store.session_scope() as db_session:
        assert token.id not in [t.id for t in auth_service.get_active(db_session, now=clock.wall())]
        assert token.id in [t.id for t in auth_service.get_all(db_session)]


def test_a_cached_principal_never_outlives_its_token(
    store: Store, timed: Authenticator, clock: Clock
) -> None:
    _, secret = timed.create(TokenCreate(name="ci", scopes=[Scope.READ], expires_in=60))
    clock.now += 58
    assert timed.authenticate(secret) is not None  # cached for 2 s, not the TTL's 5
    clock.now += 2.5
    assert timed.cached(auth_service.hash_secret(secret)) is None
    assert timed.authenticate(secret) is None
