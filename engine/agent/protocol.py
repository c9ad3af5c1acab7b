"""The engine <-> agent wire protocol: one JSON object per line, commands on
the agent's stdin, events on its stdout. This module names the version and
validates incoming commands into typed values (`ProtocolError` says what is
wrong, and is answered with an "error" event); it does no I/O.

Commands: start, stop, attach, list, ping, shutdown (see `parse_command`).
`start` carries "uid": the job's owner, whom the agent runs it as (null: the
agent's own user; an agent that is not root refuses any other uid).
Events: hello, telemetry, started, log, metric, exited, lost, runs, pong, error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from engine.agent.runs import valid_attempt

VERSION = 1
MAX_COMMAND_BYTES = 16 * 1024 * 1024
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no change" to setreuid, so it is never a user


class ProtocolError(ValueError):
    """A command the agent cannot act on. `attempt`/`op` name it when known."""

    def __init__(self, message: str, attempt: str | None = None, op: str | None = None) -> None:
        super().__init__(message)
        self.attempt = attempt
        self.op = op


@dataclass(frozen=True)
class Start:
    attempt: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    gpus: tuple[int, ...] = ()
    uid: int | None = None  # the job's owner; None: run as the agent's own user


@dataclass(frozen=True)
class Stop:
    attempt: str
    grace: float | None = None


@dataclass(frozen=True)
class Attach:
    attempt: str
    output: int = 0
    metrics: int = 0


@dataclass(frozen=True)
class Simple:
    """list, shutdown and ping (`id` is echoed back in the pong)."""

    op: str
    id: Any = None


Command = Start | Stop | Attach | Simple


def _no_nul(value: str, what: str, attempt: str, op: str) -> str:
    """`value` if it can reach exec(): no NUL byte, no lone surrogate."""
    if "\0" in value:
        raise ProtocolError(f"{what} contains a NUL byte", attempt, op)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{what} is not UTF-8 text (a lone surrogate)", attempt,
                            op) from None
    return value


def _attempt(msg: dict[str, Any], op: str) -> str:
    attempt = msg.get("attempt")
    if not valid_attempt(attempt):
        raise ProtocolError(f"{op}: invalid attempt id {attempt!r}", None, op)
    return str(attempt)


def _parse_start(msg: dict[str, Any]) -> Start:
    attempt = _attempt(msg, "start")
    argv = msg.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ProtocolError("start: argv must be a non-empty list of strings", attempt, "start")
    if not argv[0]:
        raise ProtocolError("start: argv[0] is empty", attempt, "start")
    for a in argv:
        _no_nul(a, "an argument", attempt, "start")
    env = msg.get("env", {})
    if env is None:
        env = {}
    if not isinstance(env, dict):
        raise ProtocolError("start: env must be an object of strings", attempt, "start")
    clean_env: dict[str, str] = {}
    for k, v in env.items():
        if not isinstance(v, str) or not k or "=" in k:
            raise ProtocolError(f"start: bad env entry {k!r} (names without '=', string "
                                "values)", attempt, "start")
        clean_env[_no_nul(k, "an env name", attempt, "start")] = _no_nul(
            v, f"env {k}", attempt, "start")
    cwd = msg.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not os.path.isabs(cwd)):
        raise ProtocolError("start: cwd must be null or an absolute path", attempt, "start")
    if cwd is not None:
        _no_nul(cwd, "cwd", attempt, "start")
    gpus = msg.get("gpus", [])
    if gpus is None:
        gpus = []
    if not isinstance(gpus, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus):
        raise ProtocolError("start: gpus must be a list of GPU indices", attempt, "start")
    uid = msg.get("uid")
    if uid is not None and (not isinstance(uid, int) or isinstance(uid, bool)
                            or not 0 <= uid <= MAX_UID):
        raise ProtocolError(f"start: uid must be null or a user id in [0, {MAX_UID}]",
                            attempt, "start")
    return Start(attempt, tuple(argv), clean_env, cwd, tuple(gpus), uid)


def _offset(value: object, name: str, attempt: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"attach: offsets.{name} must be a byte offset >= 0",
                            attempt, "attach")
    return value


def parse_command(line: bytes) -> Command:
    """One stdin line -> a command. Raises ProtocolError."""
    if len(line) > MAX_COMMAND_BYTES:
        raise ProtocolError(f"command longer than {MAX_COMMAND_BYTES} bytes")
    try:
        msg = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"malformed command (not JSON): {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("malformed command: not a JSON object")
    op = msg.get("op")
    if op == "start":
        return _parse_start(msg)
    if op == "stop":
        attempt = _attempt(msg, "stop")
        grace = msg.get("grace")
        if grace is not None and (not isinstance(grace, (int, float)) or isinstance(grace, bool)
                                  or not 0 <= grace <= 86400):
            raise ProtocolError("stop: grace must be seconds in [0, 86400]", attempt, "stop")
        return Stop(attempt, None if grace is None else float(grace))
    if op == "attach":
        attempt = _attempt(msg, "attach")
        offsets = msg.get("offsets") or {}
        if not isinstance(offsets, dict):
            raise ProtocolError("attach: offsets must be an object", attempt, "attach")
        return Attach(attempt, _offset(offsets.get("output"), "output", attempt),
                      _offset(offsets.get("metrics"), "metrics", attempt))
    if op in ("list", "shutdown", "ping"):
        return Simple(op, msg.get("id"))
    raise ProtocolError(f"unknown op {op!r}", op=op if isinstance(op, str) else None)
