"""`/v1/tokens`: create, list and revoke tokens (admin only), and `GET /v1/tokens/self` (any
valid token: who am I; docs/api/auth.md)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from greenroom.auth import service as auth_service
from greenroom.auth.deps import INVALID_TOKEN, CurrentPrincipal, get_authenticator
from greenroom.auth.schemas import TokenCreate, TokenCreated, TokenRead, TokenSelf
from greenroom.auth.service import Authenticator
from greenroom.deps import DbSession
from greenroom.errors import UnauthorizedError

api_router = APIRouter(prefix="/v1/tokens", tags=["tokens"])

AuthenticatorDep = Annotated[Authenticator, Depends(get_authenticator)]


@api_router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(token_in: TokenCreate, authenticator: AuthenticatorDep) -> TokenCreated:
    """The only answer that shows the token's secret (`token`). With `expires_in` (seconds) the
    token is refused (401) from `expires_at` on. It works at once, on its first request."""
    token, secret = authenticator.create(token_in)
    return TokenCreated(
        id=token.id,
        name=token.name,
        scopes=token.scopes,
        expires_at=token.expires_at,
        token=secret,
    )


@api_router.get("/self", response_model=TokenSelf)
def read_own_token(principal: CurrentPrincipal, db_session: DbSession) -> TokenSelf:
    """The caller's own token (any valid token, whatever its scopes): its id, name, the scopes
    it was granted and when it expires. The console asks it to know what it may show."""
    token = auth_service.get(db_session, token_id=principal.id)
    if token is None:  # revoked and deleted between the check and now
        raise UnauthorizedError(INVALID_TOKEN)
    return TokenSelf.model_validate(token)


@api_router.get("", response_model=list[TokenRead])
def list_tokens(db_session: DbSession) -> list[TokenRead]:
    """Every token, revoked ones included, oldest first; never a secret."""
    return [TokenRead.model_validate(token) for token in auth_service.get_all(db_session)]


@api_router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: str, authenticator: AuthenticatorDep) -> Response:
    """Revoke at once: this process stops accepting the token before the answer is sent."""
    authenticator.revoke(token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
