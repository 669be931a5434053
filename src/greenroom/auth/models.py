"""The token table: a token is stored only as the SHA-256 of its secret."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from greenroom.store.db import Base, utcnow


def new_token_id() -> str:
    return str(uuid.uuid4())


class Token(Base):
    """A bearer token: its name, granted scopes and times; never the secret itself. A token with
    `expires_at` is refused from then on, like a revoked one."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_token_id)
    name: Mapped[str] = mapped_column(String(255))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the secret
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]  # updated at most once a minute
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def is_usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at `now`."""
        return not self.is_revoked and not self.is_expired(now)
