"""Which scope each route needs: the authenticated-by-default rule, in one table.

Every route needs a token, except the open paths. A route takes the scope of the first rule that
matches its method and path template; a route no rule names needs `read` for GET and HEAD and
`deploy` for anything else (tasks, deployments, configs, registry writes). A new route is thus
authenticated the moment it is mounted; only a rule here can relax or tighten that.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from greenroom.auth.scopes import Scope

# `/docs`, `/redoc` and `/openapi.json` are not API routes: the auth dependency never sees them.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
READ_METHODS = frozenset({"GET", "HEAD"})
# What a route needs that any valid token has, whatever its scopes (`GET /v1/tokens/self`).
ANY_TOKEN: Literal["any token"] = "any token"
Requirement = Scope | Literal["any token"]


@dataclass(frozen=True)
class Rule:
    """`scope` for the routes whose path template matches `path` (a regex) and, when given,
    whose method is one of `methods`."""

    scope: Requirement
    path: str
    methods: frozenset[str] | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return re.fullmatch(self.path, path) is not None


RULES: tuple[Rule, ...] = (
    Rule(Scope.INFER, r"/v1/(embeddings|models)(/.*)?"),
    Rule(ANY_TOKEN, r"/v1/tokens/self", frozenset({"GET", "HEAD"})),
    Rule(Scope.ADMIN, r"/v1/tokens(/.*)?"),
    Rule(Scope.ADMIN, r"/v1/audit(/.*)?"),
    Rule(Scope.CONTROLLER, r"/apis/.*/deployments/\{[^/]+\}/status", frozenset({"POST"})),
)


@functools.cache
def required_scope(method: str, path: str) -> Requirement | None:
    """The scope a route needs (None: an open route). `path` is the route's template
    (`/deploy/{task_id}`), never a request's URL, so the cache stays as small as the URL map."""
    if path in OPEN_PATHS:
        return None
    for rule in RULES:
        if rule.matches(method, path):
            return rule.scope
    return Scope.READ if method in READ_METHODS else Scope.DEPLOY
