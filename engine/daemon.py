"""The engine daemon: one per engine home, started in the background by the
CLI when none runs (like tmux) or in the foreground by `llmconsole engine
serve`. It holds an exclusive lock on <home>/engine.lock, serves the API on
the Unix socket (mode 0600 unless a shared engine asks for a group), and on
SIGTERM stops serving while the job processes keep running on their nodes."""

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
from collections.abc import Callable
from pathlib import Path

from engine import paths
from engine.errors import Unavailable, UserError
from engine.model import ClusterSpec, NodeSpec
from engine.transport.base import AgentChannel
from engine.transport.local import LocalAgentChannel

log = logging.getLogger("llmconsole.daemon")


class DaemonError(UserError):
    pass


def channel_factory(home: Path, telemetry_interval: float) -> Callable[[NodeSpec], AgentChannel]:

    def make(node: NodeSpec) -> AgentChannel:
        if node.is_local:
            return LocalAgentChannel(node.name, home, interval=telemetry_interval)
        raise DaemonError(f"node {node.name} ({node.host}) needs the SSH transport, "
                          f"which this engine does not have yet")

    return make


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
    from engine.runtime import Runtime
    from engine.store import Store

    root = paths.ensure_home(home)
    sock = socket_path or paths.socket_path()
    lock = open(root / "engine.lock", "a+")  # noqa: SIM115 — held for the daemon's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DaemonError(f"an engine already runs for {root} "
                          f"(see `llmconsole engine status`)") from None
    store = Store(root / "engine.db")
    runtime = Runtime(store, cluster, root, channel_factory(root, telemetry_interval),
                      lost_after=lost_after)
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
    if socket_group is not None:
        os.chown(sock, -1, grp.getgrnam(socket_group).gr_gid)
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


def start_background(cluster_profile: str | None = None, wait: float = 20.0) -> int:
    """Start a daemon detached from this terminal; return its pid once its
    socket answers."""
    from engine.client import EngineClient

    root = paths.ensure_home()
    logfile = open(root / "engine.log", "ab")  # noqa: SIM115
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
                              f"{_log_tail(root / 'engine.log')}")
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


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
