"""Scopes and what each implies: `admin` ⊇ all; `deploy`, `controller` ⊇ `read`; `infer` alone."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Scope(StrEnum):
    ADMIN = "admin"  # everything, the tokens API and the audit log included
    DEPLOY = "deploy"  # tasks, deployments, configs, registry writes
    CONTROLLER = "controller"  # deployment status updates
    READ = "read"  # every GET, /metrics
    INFER = "infer"  # /v1/embeddings, /v1/models


IMPLIED_SCOPES: dict[Scope, frozenset[Scope]] = {
    Scope.ADMIN: frozenset(Scope),
    Scope.DEPLOY: frozenset({Scope.DEPLOY, Scope.READ}),
    Scope.CONTROLLER: frozenset({Scope.CONTROLLER, Scope.READ}),
    Scope.READ: frozenset({Scope.READ}),
    Scope.INFER: frozenset({Scope.INFER}),
}


def effective_scopes(granted: Iterable[str]) -> frozenset[Scope]:
    """Every scope that a token granted `granted` holds, implied ones included."""
    held: set[Scope] = set()
    for scope in granted:
        held |= IMPLIED_SCOPES[Scope(scope)]
    return frozenset(held)
