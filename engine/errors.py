"""Errors a caller of the engine can cause, each with the HTTP status the
API answers with. Messages name the input and the fix, in one line."""

from __future__ import annotations


class UserError(Exception):
    """Anything a user can cause and fix: the CLI prints it as one line."""


class EngineError(UserError):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(EngineError):
    status = 400


class Forbidden(EngineError):
    status = 403


class NotFound(EngineError):
    status = 404


class Conflict(EngineError):
    status = 409


class Unavailable(EngineError):
    """The engine cannot be reached (no daemon, or it died)."""

    status = 503


BY_STATUS: dict[int, type[EngineError]] = {
    cls.status: cls for cls in (BadRequest, Forbidden, NotFound, Conflict, Unavailable)
}
