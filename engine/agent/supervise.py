"""The per-job supervisor: a stdlib-only script the agent starts as

    python -I -S supervise.py RUN_DIR [--cwd DIR] [--grace SECONDS] -- PROGRAM [ARG...]

in a new session (the agent uses start_new_session=True), so it outlives the
agent and any SSH connection. It imports nothing from the package and must
stay that way: it runs under `-I -S` for a fast start.

Contract, all files inside RUN_DIR:
- stdin is /dev/null; stdout and stderr of the supervisor and of the job are
  `output.log`, opened in append mode (the job's env should set
  PYTHONUNBUFFERED=1; the agent does, and so does this script by default).
- The job runs in its OWN process group (pgid == job pid), inside the
  supervisor's session but outside the supervisor's group, so that signalling
  the job's group (stop, SIGKILL after grace) never kills the supervisor and
  the exit status is always recorded.
- `pid` is written atomically once the job has started:
  {"supervisor": pid, "pgid": job pgid, "child": job pid, "started": time,
   "host": nodename}.
- `heartbeat` is created at start and its mtime touched every 2 s.
- SIGTERM, SIGINT or SIGHUP sent to the supervisor itself are forwarded to
  the job process and the supervisor keeps waiting.
- When the job process ends, anything left in its process group gets SIGTERM,
  then SIGKILL after the grace period, so a finished job holds no GPU.
- `exit.json` is written atomically last: {"code": int|null, "signal":
  int|null, "ended": time, "child": pid|null} plus "error": message when the
  program could not be started (code 127: not found; 126: any other
  exec/chdir failure), in which case a line naming the cause is also
  appended to output.log and no `pid` file is written.
Exit status of the supervisor: 0 once exit.json is written, 2 on usage error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

HEARTBEAT_S = 2.0
_child: subprocess.Popen[bytes] | None = None
_pending: list[int] = []


def _write_json_atomic(path: str, doc: dict[str, object]) -> None:
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _say(message: str) -> None:
    try:
        os.write(2, ("llmconsole: %s\n" % message).encode("utf-8", "replace"))
    except OSError:
        pass


def _parse(args: list[str]) -> tuple[str, str | None, float, list[str]] | None:
    """-> (run_dir, cwd, grace, argv) or None on a usage error."""
    if len(args) < 3:
        return None
    run_dir, rest = args[0], args[1:]
    cwd: str | None = None
    grace = 10.0
    i = 0
    while i < len(rest) and rest[i] != "--":
        if rest[i] == "--cwd" and i + 1 < len(rest):
            cwd = rest[i + 1]
        elif rest[i] == "--grace" and i + 1 < len(rest):
            try:
                grace = float(rest[i + 1])
            except ValueError:
                return None
        else:
            return None
        i += 2
    argv = rest[i + 1:]
    if i >= len(rest) or not argv:
        return None
    return run_dir, cwd, grace, argv


def _forward(signum: int, frame: object) -> None:
    if _child is None:
        _pending.append(signum)
        return
    try:
        os.kill(_child.pid, signum)
    except OSError:
        pass


def _heartbeat(path: str, done: threading.Event) -> None:
    while not done.is_set():
        try:
            os.utime(path, None)
        except OSError:
            try:
                open(path, "a").close()
            except OSError:
                pass
        done.wait(HEARTBEAT_S)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _reap_group(pgid: int, grace: float) -> None:
    """SIGTERM what is left of the job's process group, SIGKILL after grace."""
    if not _group_alive(pgid):
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if not _group_alive(pgid):
            return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def main(args: list[str]) -> int:
    global _child
    parsed = _parse(args)
    if parsed is None:
        _say("usage: supervise.py RUN_DIR [--cwd DIR] [--grace S] -- PROGRAM [ARG...]")
        return 2
    run_dir, cwd, grace, argv = parsed
    run_dir = os.path.abspath(run_dir)
    out = os.open(os.path.join(run_dir, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                  0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    os.close(null)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _forward)

    hb_path = os.path.join(run_dir, "heartbeat")
    open(hb_path, "a").close()
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    exit_path = os.path.join(run_dir, "exit.json")
    kwargs: dict[str, object] = {}
    if sys.version_info >= (3, 11):
        kwargs["process_group"] = 0
    else:  # single-threaded here, so preexec_fn is safe
        kwargs["preexec_fn"] = os.setpgrp
    try:
        child = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 close_fds=True, restore_signals=True,
                                 **kwargs)  # type: ignore[call-overload]
    except OSError as e:
        if cwd is not None and getattr(e, "filename", None) == cwd:
            code, error = 126, "cannot change to working directory %s: %s" % (cwd, e.strerror)
        elif isinstance(e, FileNotFoundError):
            code, error = 127, "program not found: %s" % argv[0]
        elif isinstance(e, PermissionError):
            code, error = 126, "permission denied: %s" % argv[0]
        else:
            code, error = 126, "cannot run %s: %s" % (argv[0], e)
        _say(error)
        _write_json_atomic(exit_path, {"code": code, "signal": None, "ended": time.time(),
                                       "child": None, "error": error})
        return 0
    except ValueError as e:  # e.g. an embedded NUL byte
        error = "cannot run %s: %s" % (argv[0], e)
        _say(error)
        _write_json_atomic(exit_path, {"code": 126, "signal": None, "ended": time.time(),
                                       "child": None, "error": error})
        return 0

    _child = child
    _write_json_atomic(os.path.join(run_dir, "pid"), {
        "supervisor": os.getpid(), "pgid": child.pid, "child": child.pid,
        "started": time.time(), "host": os.uname().nodename,
    })
    for signum in _pending:
        _forward(signum, None)
    done = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(hb_path, done), daemon=True)
    beat.start()

    returncode = child.wait()  # retried after each forwarded signal (PEP 475)
    ended = time.time()
    _reap_group(child.pid, grace)
    done.set()
    code = returncode if returncode >= 0 else None
    sig = -returncode if returncode < 0 else None
    _write_json_atomic(exit_path, {"code": code, "signal": sig, "ended": ended,
                                   "child": child.pid})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
