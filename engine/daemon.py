"""The engine daemon: one per engine home, started in the background by the
CLI when none runs (like tmux) or in the foreground by `llmconsole engine
serve`. It holds an exclusive lock on <home>/engine.lock, serves the API on
the Unix socket (mode 0600 unless a shared engine asks for a group), and on
SIGTERM stops serving while the job processes keep running on their nodes.

Refused in one line (`DaemonError`), before anything starts: a socket path
too long for a Unix socket, a home this user may not write, a home on a full
disk (nothing is created in it), an unknown socket group. A background
start that fails reports what that start wrote to engine.log, not the log's
older failures."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from engine import paths, scheduler
from engine.errors import Unavailable, Unreachable, UserError
from engine.model import ClusterSpec
from engine.transport.factory import channel_factory

log = logging.getLogger("llmconsole.daemon")
RETRY_BACKOFF_ENV = "LLMCONSOLE_RETRY_BACKOFF_S"


class DaemonError(UserError):
    pass


def retry_backoff_from_env(environ: Mapping[str, str] | None = None) -> float:
    """The first automatic retry's wait in seconds (each next one doubles, up
    to `scheduler.RETRY_BACKOFF_CAP_S`), from $LLMCONSOLE_RETRY_BACKOFF_S
    (default `scheduler.RETRY_BACKOFF_BASE_S`). Raises `DaemonError` naming
    the fix for a value that is not a number of seconds >= 0."""
    cap = scheduler.RETRY_BACKOFF_CAP_S
    try:
        return paths.number_from_env(
            RETRY_BACKOFF_ENV, scheduler.RETRY_BACKOFF_BASE_S, lambda v: 0 <= v <= cap,
            f"seconds from 0 to {cap:g}, such as 5 (the wait before the first automatic "
            "retry)", environ)
    except UserError as err:
        raise DaemonError(str(err)) from None


async def serve(
    cluster: ClusterSpec,
    *,
    home: Path | None = None,
    socket_path: Path | None = None,
    socket_mode: int = 0o600,
    socket_group: str | None = None,
    telemetry_interval: float = 1.0,
    lost_after: float = 60.0,
) -> None:
    from aiohttp import web

    from engine.api.server import make_app
    from engine.ingest import log_cap_from_env
    from engine.runtime import Runtime
    from engine.store import Store

    sock = socket_path or paths.socket_path()
    problem = paths.socket_path_problem(sock)
    if problem is not None:
        raise DaemonError(problem)
    gid = -1
    if socket_group is not None:
        try:
            gid = grp.getgrnam(socket_group).gr_gid
        except KeyError:
            raise DaemonError(f"--socket-group {socket_group}: no such group; name one from "
                              f"/etc/group (see `getent group`)") from None
    _refuse_full_disk(home or paths.home())
    log_cap_from_env()  # a bad LLMCONSOLE_LOG_CAP_MB: one line, before anything is created
    backoff = retry_backoff_from_env()
    root = paths.ensure_home(home)
    try:
        lock = open(root / "engine.lock", "a+")  # noqa: SIM115 — held for the daemon's life
    except PermissionError:
        raise DaemonError(f"cannot open {root / 'engine.lock'}: permission denied; set "
                          f"LLMCONSOLE_HOME to a folder of your own") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DaemonError(f"an engine already runs for {root} "
                          f"(see `llmconsole engine status`)") from None
    store = Store(root / "engine.db")
    runtime = Runtime(store, cluster, root, channel_factory(root, telemetry_interval,
                                                       known_hosts=cluster.known_hosts),
                      lost_after=lost_after, retry_backoff_s=backoff)
    await runtime.start()
    await runtime.wait_nodes_up(timeout=15.0)
    shutdown = asyncio.Event()
    app = make_app(runtime, shutdown)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()  # stale: we hold the lock, so nobody else serves it
    old_umask = os.umask(0o177)
    try:
        site = web.UnixSite(runner, str(sock))
        await site.start()
    finally:
        os.umask(old_umask)
    if gid != -1:
        os.chown(sock, -1, gid)
    os.chmod(sock, socket_mode)
    (root / "engine.pid").write_text(f"{os.getpid()}\n")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown.set)
    log.info("engine %d serving %s for cluster %s", os.getpid(), sock, cluster.name)
    try:
        await shutdown.wait()
    finally:
        log.info("engine stopping; jobs keep running on their nodes")
        await runner.cleanup()
        await runtime.stop()
        store.close()
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        with contextlib.suppress(FileNotFoundError):
            (root / "engine.pid").unlink()
        lock.close()


def _refuse_full_disk(root: Path) -> None:
    problem = paths.full_disk_problem(root)
    if problem is not None:
        raise DaemonError(problem)


def start_background(cluster_profile: str | None = None, wait: float = 20.0) -> int:
    """Start a daemon detached from this terminal; return its pid once its
    socket answers. If it exits first, the error quotes only what this start
    wrote to engine.log."""
    from engine.client import EngineClient

    problem = paths.socket_path_problem(paths.socket_path())
    if problem is not None:
        raise DaemonError(problem)
    _refuse_full_disk(paths.home())  # here too: serve's own line could not reach engine.log
    root = paths.ensure_home()
    try:
        # private: a shared engine's home is traversable by its users
        fd = os.open(root / "engine.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        logfile = os.fdopen(fd, "ab")
    except PermissionError:
        raise DaemonError(f"cannot write {root / 'engine.log'}: permission denied; set "
                          f"LLMCONSOLE_HOME to a folder of your own") from None
    start_offset = os.fstat(fd).st_size  # appended: what this start writes comes after
    argv = [sys.executable, "-m", "engine", "engine", "serve"]
    if cluster_profile:
        argv += ["--cluster", cluster_profile]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                            start_new_session=True, close_fds=True)
    logfile.close()
    deadline = time.monotonic() + wait
    client = EngineClient(timeout=2.0)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonError(f"the engine exited at start (code {proc.returncode}): "
                              f"{_log_tail(root / 'engine.log', start_offset)}")
        try:
            client.health()
            client.close()
            return proc.pid
        except Unavailable:
            time.sleep(0.05)
    raise DaemonError(f"the engine did not answer within {wait:.0f}s; "
                      f"see {root / 'engine.log'}")


def stop(wait: float = 20.0) -> bool:
    """Stop the running daemon; False if none ran."""
    from engine.client import EngineClient

    client = EngineClient(timeout=5.0)
    try:
        client.shutdown()
    except Unreachable:
        raise  # someone else's engine, or a path no engine can have: say so
    except Unavailable:
        return False
    finally:
        client.close()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            EngineClient(timeout=1.0).health()
        except Unavailable:
            return True
        time.sleep(0.05)
    pid_file = paths.pid_path()
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
    return True


def _log_tail(path: Path, offset: int = 0, lines: int = 5) -> str:
    """What was written to `path` after `offset`, on one line: its own
    `llmconsole: error:` line when there is one (that is the reason), else
    its last `lines` lines."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    written = [line.strip() for line in text.splitlines() if line.strip()]
    if not written:
        return f"it wrote nothing to {path}"
    for line in reversed(written):
        if line.startswith("llmconsole: error: "):
            return line.removeprefix("llmconsole: error: ")
    return " | ".join(written[-lines:])
