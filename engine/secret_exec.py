"""Secrets for horovodrun's ranks without a command line: a stdlib-only
script, run under `-I -S` like the agent's supervisor (it imports nothing
from the package). engine/secrets.py says why and where secrets go.

Two modes:

    python -I -S secret_exec.py hold --names A,B -- PROGRAM [ARG...]

  The job's first program on the launching node (engine.launch puts it in
  front of horovodrun, and of engine/sshwrap's prelude). It takes the named
  variables out of its environment, writes them as a JSON object into an
  anonymous memory file (memfd_create; elsewhere an unlinked temporary
  file), mode 0600, and forks a keeper that holds the file open until
  PROGRAM and everything that inherited its pipe have exited (it reads a
  pipe to its end; SIGTERM, SIGINT and SIGHUP leave it waiting for that).
  Then it execs PROGRAM without the secrets, with `LLMCONSOLE_SECRETS_FD`
  set to the keeper's `/proc/PID/fd/N` (a path, no secret: horovodrun may
  copy it onto every command line). Named variables that are not set are
  ignored; none set: PROGRAM is exec'd as it is.

    python -I -S secret_exec.py rank -- PROGRAM [ARG...]

  What horovodrun starts for each rank. With `LLMCONSOLE_SECRETS_STDIN=1`
  in its environment (set by engine/sshwrap for a rank it starts on another
  node), it reads the JSON object from stdin to its end (our ssh wrote it
  there, then closed it) and points stdin at /dev/null; otherwise it reads
  the file `LLMCONSOLE_SECRETS_FD` names. Then it execs PROGRAM with the
  secrets in its environment and neither variable.

A missing or unreadable file, bad JSON, or a usage error: one line on
stderr naming the cause, exit 126 (2 for usage).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping

ENV_FD = "LLMCONSOLE_SECRETS_FD"
ENV_STDIN = "LLMCONSOLE_SECRETS_STDIN"
MAX_BYTES = 60_000  # below a pipe's 64 KiB: engine/sshwrap writes it in one go
USAGE = ("usage: secret_exec.py hold --names A,B -- PROGRAM [ARG...] | "
         "secret_exec.py rank -- PROGRAM [ARG...]")


class SecretsError(ValueError):
    """The secrets could not be read; the message is one line."""


def _say(message: str) -> None:
    try:
        os.write(2, f"llmconsole secrets: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def encode(values: Mapping[str, str]) -> bytes:
    """The wire and file form of the secrets: a JSON object. Raises
    SecretsError when it is too large to pass through a pipe at once."""
    data = json.dumps(dict(values), sort_keys=True).encode()
    if len(data) > MAX_BYTES:
        raise SecretsError(f"the job's secrets take {len(data)} bytes, more than {MAX_BYTES}; "
                           "pass large credentials as a file and name its path instead")
    return data


def decode(data: bytes, where: str) -> dict[str, str]:
    """The secrets in `data` (read from `where`, for the message)."""
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        raise SecretsError(f"the secrets from {where} are not a JSON object") from None
    if not isinstance(doc, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise SecretsError(f"the secrets from {where} are not a JSON object of strings")
    return doc


def _secret_file(data: bytes) -> int:
    """A descriptor of an anonymous 0600 file holding `data` (close-on-exec)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("llmconsole-secrets", os.MFD_CLOEXEC)
    else:  # pragma: no cover - not Linux
        import tempfile

        fd = os.dup(tempfile.TemporaryFile().fileno())
    os.fchmod(fd, 0o600)
    os.write(fd, data)
    return fd


def _keep(fd: int, until: int) -> None:
    """The keeper: hold `fd` open until `until` (a pipe's read end) ends."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    try:
        while os.read(until, 1):
            pass
    except OSError:
        pass
    os.close(fd)
    os._exit(0)


def hold(names: list[str], program: list[str]) -> int:
    env = dict(os.environ)
    values = {n: env.pop(n) for n in names if n in env}
    if values:
        try:
            fd = _secret_file(encode(values))
        except (SecretsError, OSError) as e:
            _say(f"cannot keep the job's secrets: {e}")
            return 126
        r, w = os.pipe()
        keeper = os.fork()
        if keeper == 0:
            os.close(w)
            _keep(fd, r)
        os.close(r)
        os.close(fd)
        os.set_inheritable(w, True)  # PROGRAM (horovodrun) holds it for its whole life
        env[ENV_FD] = f"/proc/{keeper}/fd/{fd}"
    try:
        os.execvpe(program[0], program, env)  # noqa: S606 - an argv list, no shell
    except OSError as e:
        _say(f"cannot run {program[0]}: {e}")
    return 126


def read_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """The secrets a rank gets: from stdin when `ENV_STDIN` is 1, else from
    the file `ENV_FD` names. Raises SecretsError."""
    if env.get(ENV_STDIN) == "1":
        chunks, size = [], 0
        while chunk := os.read(0, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_BYTES:
                raise SecretsError(f"more than {MAX_BYTES} bytes of secrets on stdin")
        return decode(b"".join(chunks), "stdin (sent by llmconsole's ssh)")
    path = env.get(ENV_FD)
    if not path:
        raise SecretsError(f"neither {ENV_STDIN} nor {ENV_FD} is set: start the job through "
                           "llmconsole (secret_exec.py hold)")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise SecretsError(f"cannot read the job's secrets from {path} ({e.strerror}): the "
                           "job's launcher has ended, or this rank runs on another node "
                           "without llmconsole's ssh") from None
    return decode(data, path)


def rank(program: list[str]) -> int:
    env = dict(os.environ)
    try:
        values = read_secrets(env)
    except SecretsError as e:
        _say(str(e))
        return 126
    if env.pop(ENV_STDIN, None) == "1":
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    env.pop(ENV_FD, None)
    env.update(values)
    try:
        os.execvpe(program[0], program, env)  # noqa: S606 - an argv list, no shell
    except OSError as e:
        _say(f"cannot run {program[0]}: {e}")
    return 126


def main(argv: list[str]) -> int:
    mode, rest = (argv[0], argv[1:]) if argv else ("", [])
    names: list[str] = []
    if mode == "hold" and len(rest) >= 2 and rest[0] == "--names":
        names = [n for n in rest[1].split(",") if n]
        rest = rest[2:]
    if mode not in ("hold", "rank") or rest[:1] != ["--"] or len(rest) < 2:
        _say(USAGE)
        return 2
    return hold(names, rest[1:]) if mode == "hold" else rank(rest[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
