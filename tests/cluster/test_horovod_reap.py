"""`reap` on a node that runs no part of an attempt, through a real agent
behind the SSH transport on a test host: every process carrying both of
the launching node's markers (the ranks horovodrun starts there) gets
SIGTERM, and SIGKILL after the grace; a process of another engine's
attempt with the same id, another attempt of the same root, and the
launching node's supervisor when it runs on this same host are left
alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.hosts import SshHosts
from engine.agent.protocol import Reap
from tests.integration.agent_driver import Driver, gone, wait_gone

SLEEPER = "import time\nwhile True: time.sleep(1)"
STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SLEEPER


@pytest.fixture()
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def rank(procs: list[subprocess.Popen[bytes]], code: str, attempt: str, run_dir: Path
         ) -> int:
    """A process marked as horovodrun's ranks are: the launching node's markers."""
    env = {"PATH": "/usr/bin:/bin", "LLMCONSOLE_ATTEMPT": attempt,
           "LLMCONSOLE_RUN_DIR": str(run_dir)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL)
    procs.append(proc)
    return proc.pid


async def test_reap_ends_the_launching_nodes_ranks_here_and_nothing_else(
        ssh_hosts: SshHosts, tmp_path: Path, spawned: list[subprocess.Popen[bytes]]) -> None:
    launching = tmp_path / "node1" / "runs" / "7.1"  # the first node's run directory
    launching.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "node1")  # the engine may name it otherwise
    ranks = [rank(spawned, SLEEPER, "7.1", launching),
             rank(spawned, STUBBORN, "7.1", launching)]  # needs the SIGKILL
    others = [rank(spawned, SLEEPER, "7.1", tmp_path / "elsewhere" / "runs" / "7.1"),
              rank(spawned, SLEEPER, "7.2", launching.with_name("7.2"))]
    supervisor = rank(spawned, SLEEPER, "7.1", launching)
    (launching / "pid").write_text(json.dumps({"supervisor": supervisor,
                                               "host": os.uname().nodename}))
    agent = await Driver(tmp_path / "node2", grace=5.0, ssh=ssh_hosts, host="node2").start()
    try:
        reap = Reap("7.1", str(tmp_path / "link" / "runs" / "7.1"), grace=0.5)
        await agent.ch.send(reap.to_wire())
        assert await wait_gone(ranks, timeout=30), [p for p in ranks if not gone(p)]
        # everything it matched was signalled at once: the rest was never matched
        assert not [p for p in [*others, supervisor] if gone(p)]
        assert not agent.of("7.1", "error")
    finally:
        await agent.close()
    os.kill(supervisor, signal.SIGTERM)
