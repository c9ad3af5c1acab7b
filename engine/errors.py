"""Errors a caller of the engine can cause, each with the HTTP status the
API answers with. Messages name the input and the fix, in one line.

`MAX_REQUEST_BYTES` is the largest request body the API reads (a larger one
is `TooLarge`, 413); the client checks it before sending, so a caller learns
which of its inputs is too big without shipping megabytes first."""

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


class TooLarge(EngineError):
    """A request body over `MAX_REQUEST_BYTES`."""

    status = 413


class Unavailable(EngineError):
    """The engine cannot be reached (no daemon, or it died)."""

    status = 503


class Unreachable(Unavailable):
    """The engine's socket cannot be used by this caller, and starting an
    engine would not help: it is someone else's (permission denied), or its
    path is too long for a Unix socket. Never a reason to auto-start one."""


MAX_REQUEST_BYTES = 4 * 1024 * 1024

BY_STATUS: dict[int, type[EngineError]] = {
    cls.status: cls
    for cls in (BadRequest, Forbidden, NotFound, Conflict, TooLarge, Unavailable)
}
