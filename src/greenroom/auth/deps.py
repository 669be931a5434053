"""FastAPI dependencies: the gate every route passes (`authorize`) and the request's principal.

`greenroom.edge.EdgeMiddleware` authenticates every request before its body is read and leaves
the principal in `request.state.principal`; `create_app` also attaches `authorize` to the whole
app, which reads that principal and checks it against the scope `greenroom.auth.policy` gives the
route. Views that need to know who calls take `CurrentPrincipal`. 401 (`UnauthorizedError`) when
the token is missing, unknown, revoked or expired; 403 (`ForbiddenError`) when it lacks the
scope; each API family renders them in its own shape (`greenroom.app.install_error_handlers`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from greenroom.auth.policy import ANY_TOKEN, required_scope
from greenroom.auth.scopes import Scope
from greenroom.auth.service import Authenticator, Principal, hash_secret
from greenroom.errors import ForbiddenError, UnauthorizedError

MISSING_TOKEN = "A token is required: send `Authorization: Bearer <token>`."
INVALID_TOKEN = "The token is unknown or revoked."

# Documents the scheme in the OpenAPI schema (`/docs`); the middleware reads the header itself.
bearer = HTTPBearer(auto_error=False, description="A greenroom token (docs/api/auth.md).")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def get_authenticator(request: Request) -> Authenticator:
    return request.app.state.authenticator


# async: FastAPI runs plain `def` dependencies in its threadpool, a hop per request
async def authorize(request: Request, credentials: Credentials) -> Principal | None:
    """The request's principal, checked against the scope its route needs; None on the open
    routes (`/healthz`, `/readyz`).

    Behind the middleware this only reads the principal it found. An app assembled without the
    middleware (a view test's) authenticates here instead, so no route is open by omission."""
    route: APIRoute = request.scope["route"]
    scope = required_scope(request.method, route.path_format)
    if scope is None:
        return None
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        token = credentials.credentials if credentials else None
        principal = await authenticate(get_authenticator(request), token)
        request.state.principal = principal
    if scope != ANY_TOKEN:
        require_scope(principal, scope)
    return principal


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme in any case)."""
    scheme, token = get_authorization_scheme_param(authorization)
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(authenticator: Authenticator, token: str | None) -> Principal:
    """A cache hit (known or unknown token) costs a hash and a dict lookup; a miss reads the
    store in a thread."""
    if not token:
        raise UnauthorizedError(MISSING_TOKEN)
    principal = await authenticator.resolve(hash_secret(token))
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
