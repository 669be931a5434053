"""What the tokens API accepts and returns (`/v1/tokens`, docs/api/auth.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from greenroom.auth.scopes import Scope
from greenroom.schemas import UtcDateTime

# no control characters: names appear in logs, tables and the audit log
TokenName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
MIN_EXPIRES_IN_S = 60
MAX_EXPIRES_IN_S = 3650 * 24 * 3600  # ten years
ExpiresIn = Annotated[
    int,
    Field(
        ge=MIN_EXPIRES_IN_S,
        le=MAX_EXPIRES_IN_S,
        description="seconds until the token is refused (401); omitted: it never expires",
    ),
]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TokenName
    scopes: list[Scope] = Field(
        min_length=1, max_length=16, description="one or more of the scopes"
    )
    expires_in: ExpiresIn | None = None

    @field_validator("scopes")
    @classmethod
    def _unique(cls, scopes: list[Scope]) -> list[Scope]:
        return list(dict.fromkeys(scopes))


class TokenSelf(BaseModel):
    """`GET /v1/tokens/self`: the caller's token, never its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    scopes: list[Scope]
    expires_at: UtcDateTime | None


class TokenRead(BaseModel):
    """A token as listed: never its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    scopes: list[Scope]
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None
    revoked_at: UtcDateTime | None
    expires_at: UtcDateTime | None


class TokenCreated(BaseModel):
    """The answer to a creation: the only time the secret (`token`) is shown."""

    id: str
    name: str
    scopes: list[Scope]
    expires_at: UtcDateTime | None
    token: str
