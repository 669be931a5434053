"""The GreenroomError tree. Each API family renders these in its own error shape."""

from __future__ import annotations

from typing import ClassVar

INTERNAL_ERROR = "Internal error; the server log has the details."


class GreenroomError(Exception):
    """Base of every error greenroom raises on purpose; `message` is one human sentence.

    `headers` are the HTTP headers that every API family sends with it.
    """

    status_code = 500
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(GreenroomError):
    """The caller sent something we cannot act on."""

    status_code = 400


class UnauthorizedError(GreenroomError):
    """No valid token: missing, unknown or revoked."""

    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class ForbiddenError(GreenroomError):
    """A valid token that lacks the scope the route needs."""

    status_code = 403


class NotFoundError(GreenroomError):
    status_code = 404


class ModelNotFoundError(NotFoundError):
    """No live deployment serves the requested name."""


class ConflictError(GreenroomError):
    status_code = 409


class InvalidTransitionError(ConflictError):
    """A state machine refused a transition."""


class OverloadedError(GreenroomError):
    """A bounded queue is full; the caller should retry shortly."""

    status_code = 429
    headers = {"Retry-After": "1"}


class ServiceUnavailableError(GreenroomError):
    """Nothing can serve the request now (e.g. every replica is down)."""

    status_code = 503


class BackendError(GreenroomError):
    """A runtime backend or a replica failed; raised at the backend's edge."""

    status_code = 503


class ModelSourceError(InvalidRequestError):
    """A model source cannot be resolved or read."""


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
