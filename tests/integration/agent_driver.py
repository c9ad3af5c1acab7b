"""Driving a real node agent in tests: `Driver` (a channel to a `python -m
engine.agent` process plus every event it sent, with waiting helpers) and
process helpers. Shared by test_agent.py and test_owner.py. A Driver reaches
its agent through the local transport, or through the SSH transport on a
test host (chaos/hosts.py) when given `ssh`: the same agent, the
same root (every test host shares this machine's filesystem)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from chaos.hosts import SshHosts
from engine.agent.protocol import ProtocolError, Unknown, parse_event
from engine.transport import LocalAgentChannel, SubprocessChannel
from engine.transport.ssh import SshAgentChannel

PY = sys.executable
JOB_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
Event = dict[str, Any]


class Driver:
    """A channel plus everything it has said, with waiting helpers."""

    def __init__(self, root: Path, interval: float = 0.2, grace: float | None = None,
                 prefix: Sequence[str] = (), ssh: SshHosts | None = None,
                 host: str = "node1") -> None:
        """`prefix` runs the agent under another command (e.g. setpriv);
        `ssh` reaches it on test host `host` instead, over SSH."""
        extra = ["--grace", str(grace)] if grace is not None else []
        self.ch: SubprocessChannel
        if ssh is None:
            self.ch = LocalAgentChannel("n1", root, interval=interval, extra_args=extra)
            self.ch.argv = [*prefix, *self.ch.argv]
        else:
            assert not prefix, "prefix runs a local agent under another command"
            self.ch = SshAgentChannel(ssh.node_spec(host, root=root, node="n1"), root.parent,
                                      interval, known_hosts=str(ssh.known_hosts),
                                      extra_args=extra, ssh_config=str(ssh.ssh_config))
        self.transport = "local" if ssh is None else "ssh"
        self.root = root
        self.events: list[Event] = []
        self.times: list[float] = []
        self._cond = asyncio.Condition()
        self._pump: asyncio.Task[None] | None = None
        self.ended = asyncio.Event()
        self.malformed: list[str] = []

    async def start(self) -> Driver:
        await self.ch.start()
        self._pump = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for ev in self.ch.events():
            try:  # every event the agent writes is one of the protocol's types
                if isinstance(parse_event(ev), Unknown):
                    self.malformed.append(f"unknown event {ev}")
            except ProtocolError as e:
                self.malformed.append(f"{e}: {ev}")
            async with self._cond:
                self.events.append(ev)
                self.times.append(time.monotonic())
                self._cond.notify_all()
        self.ended.set()
        async with self._cond:
            self._cond.notify_all()

    async def until(self, pred: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        async def scan() -> Event:
            async with self._cond:
                while True:
                    for ev in self.events:
                        if pred(ev):
                            return ev
                    if self.ended.is_set():
                        raise AssertionError(f"agent ended; events: {self.events[-20:]}")
                    await self._cond.wait()
        try:
            return await asyncio.wait_for(scan(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"no matching event in {timeout} s; last events: "
                                 f"{self.events[-20:]}") from None

    async def exited(self, attempt: str, timeout: float = 10.0) -> Event:
        return await self.until(lambda e: e["ev"] == "exited" and e["attempt"] == attempt,
                                timeout)

    def of(self, attempt: str, kind: str) -> list[Event]:
        return [e for e in self.events if e.get("ev") == kind and e.get("attempt") == attempt]

    def lines(self, attempt: str) -> list[str]:
        return [e["line"] for e in self.of(attempt, "log")]

    async def start_job(self, attempt: str, code: str, *args: str, gpus: list[int] | None = None,
                        env: dict[str, str] | None = None, cwd: str | None = None,
                        uid: int | None = None) -> None:
        msg: dict[str, Any] = {"op": "start", "attempt": attempt,
                               "argv": [PY, "-c", code, *args],
                               "env": JOB_ENV if env is None else env, "cwd": cwd,
                               "gpus": gpus or []}
        if uid is not None:
            msg["uid"] = uid
        await self.ch.send(msg)

    async def start_argv(self, attempt: str, argv: list[str], uid: int | None = None,
                         cwd: str | None = None) -> None:
        msg: dict[str, Any] = {"op": "start", "attempt": attempt, "argv": argv,
                               "env": JOB_ENV, "cwd": cwd, "gpus": []}
        if uid is not None:
            msg["uid"] = uid
        await self.ch.send(msg)

    def agent_pid(self) -> int:
        """The agent process: the channel's child locally; over SSH the
        process the node's sshd started with this root (on this machine)."""
        if isinstance(self.ch, LocalAgentChannel):
            assert self.ch.pid is not None
            return self.ch.pid
        wanted = ["-m", "engine.agent", "--node", "n1", "--root", str(self.root)]
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if cmd[1:7] == wanted:
                parent = p.parent()
                if parent is not None and parent.name().startswith("sshd"):
                    return int(p.pid)
        raise AssertionError(f"no agent of {self.root} behind an sshd")

    def kill_agent(self) -> None:
        """SIGKILL the agent process itself (over SSH: on the node)."""
        os.kill(self.agent_pid(), signal.SIGKILL)

    async def close(self) -> None:
        await self.ch.close()
        if self._pump is not None:
            await asyncio.wait_for(self._pump, 5)
        assert not self.malformed, self.malformed[:5]


def marked_processes(root: Path) -> list[int]:
    marker = f"LLMCONSOLE_RUN_DIR={root}".encode()
    found = []
    for pid in psutil.pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if any(e.startswith(marker) for e in f.read().split(b"\0")):
                    found.append(pid)
        except OSError:
            continue
    return found



def gone(pid: int) -> bool:
    """Dead: no such process, or a zombie (this box's PID 1 never reaps)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(gone(p) for p in pids):
            return True
        await asyncio.sleep(0.02)
    return False


def run_dir(root: Path, attempt: str) -> Path:
    return root / "runs" / attempt
