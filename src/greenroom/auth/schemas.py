"""What the tokens API accepts and returns (`/v1/tokens`, api/auth.md)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from greenroom.auth.scopes import Scope
from greenroom.deployments.schemas import UtcDateTime

TokenName = Annotated[str, Field(min_length=1, max_length=255)]


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TokenName
    scopes: list[Scope] = Field(min_length=1, description="one or more of the scopes")

    @field_validator("scopes")
    @classmethod
    def _unique(cls, scopes: list[Scope]) -> list[Scope]:
        return list(dict.fromkeys(scopes))


class TokenRead(BaseModel):
    """A token as listed: never its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    scopes: list[Scope]
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None
    revoked_at: UtcDateTime | None


class TokenCreated(BaseModel):
    """The answer to a creation: the only time the secret (`token`) is shown."""

    id: str
    name: str
    scopes: list[Scope]
    token: str
