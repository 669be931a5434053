"""FastAPI dependencies: the gate every route passes (`authorize`) and the request's principal.

`create_app` attaches `authorize` to the whole app, so every API route, mounted now or later,
needs a bearer token with the scope `greenroom.auth.policy` gives its route; views that need to
know who calls take `CurrentPrincipal`. 401 (`UnauthorizedError`) when the token is missing,
unknown or revoked; 403 (`ForbiddenError`) when it lacks the scope; each API family renders them
in its own shape (`greenroom.app.install_error_handlers`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from greenroom.auth.policy import required_scope
from greenroom.auth.scopes import Scope
from greenroom.auth.service import Authenticator, Principal, hash_secret
from greenroom.errors import ForbiddenError, UnauthorizedError

MISSING_TOKEN = "A token is required: send `Authorization: Bearer <token>`."
INVALID_TOKEN = "The token is unknown or revoked."

# Parses `Authorization: Bearer …` and documents the scheme in the OpenAPI schema (`/docs`).
bearer = HTTPBearer(auto_error=False, description="A greenroom token (api/auth.md).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def get_authenticator(request: Request) -> Authenticator:
    return request.app.state.authenticator


# async: FastAPI runs plain `def` dependencies in its threadpool, a hop per request
async def authorize(request: Request, credentials: Credentials) -> Principal | None:
    """The principal of the request's token, checked against the scope its route needs; None on
    the open routes (`/healthz`, `/readyz`)."""
    route: APIRoute = request.scope["route"]
    scope = required_scope(request.method, route.path_format)
    if scope is None:
        return None
    principal = await authenticate(get_authenticator(request), credentials)
    require_scope(principal, scope)
    return principal


async def authenticate(
    authenticator: Authenticator, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """A cache hit costs a hash and a dict lookup; a miss reads the store in a thread."""
    if credentials is None:
        raise UnauthorizedError(MISSING_TOKEN)
    token_hash = hash_secret(credentials.credentials)
    principal = authenticator.cached(token_hash)
    if principal is None:
        principal = await asyncio.to_thread(authenticator.lookup, token_hash)
    if principal is None:
        raise UnauthorizedError(INVALID_TOKEN)
    return principal


def require_scope(principal: Principal, scope: Scope) -> None:
    if not principal.allows(scope):
        raise ForbiddenError(f"The token '{principal.name}' lacks the `{scope}` scope.")


async def current_principal(
    principal: Annotated[Principal | None, Depends(authorize)],
) -> Principal:
    """The caller, for views that record who acted (`initiated_by`, `auth_context`)."""
    if principal is None:  # an open route asked who calls: nobody was authenticated
        raise UnauthorizedError(MISSING_TOKEN)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
