"""The GreenroomError tree. Each API family renders these in its own error shape."""

from __future__ import annotations


class GreenroomError(Exception):
    """Base of every error greenroom raises on purpose; `message` is one human sentence."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(GreenroomError):
    """The caller sent something we cannot act on."""

    status_code = 400


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
