"""Node health from heartbeats, in-process with a real store and a real
local agent: a hung agent (SIGSTOP) whose channel stays open goes suspect,
then down, and comes back; a drained node takes no new work."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.errors import Forbidden
from engine.lifecycle import JobState
from engine.model import ClusterSpec, JobSpec, NodeSpec
from engine.runtime import Caller, Runtime
from engine.store import Store
from engine.transport.base import AgentChannel
from engine.transport.local import LocalAgentChannel
from tests.integration.polling import wait_for

ME = Caller.from_uid(os.getuid())
SUSPECT_AFTER, DEAD_AFTER = 2.0, 4.0


class Agents:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.channels: list[LocalAgentChannel] = []

    def __call__(self, node: NodeSpec) -> AgentChannel:
        channel = LocalAgentChannel(node.name, self.home, interval=0.2)
        self.channels.append(channel)
        return channel


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    store = Store(tmp_path / "engine.db")
    agents = Agents(tmp_path)
    rt = Runtime(store, ClusterSpec("one", (NodeSpec("local"),)), tmp_path, agents,
                 lost_after=60.0, stop_grace=1.0, suspect_after=SUSPECT_AFTER,
                 dead_after=DEAD_AFTER)
    rt.agents = agents  # type: ignore[attr-defined]
    await rt.start()
    assert await rt.wait_nodes_up(20)
    yield rt
    for channel in agents.channels:
        if channel.pid is not None:
            try:
                os.kill(channel.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    await rt.stop()
    store.close()


def state(rt: Runtime) -> str:
    return str(rt.node_views()[0]["state"])


async def test_a_hung_agent_goes_suspect_then_down_then_comes_back(runtime: Runtime) -> None:
    channel = runtime.agents.channels[-1]  # type: ignore[attr-defined]
    assert channel.pid is not None and state(runtime) == "up"
    os.kill(channel.pid, signal.SIGSTOP)  # the process lives, the link is open, nothing comes
    stopped = time.monotonic()
    await wait_for(lambda: state(runtime) == "suspect", timeout=SUSPECT_AFTER + 5)
    assert time.monotonic() - stopped >= SUSPECT_AFTER - 0.5
    view = runtime.node_views()[0]
    assert view["state_reason"].startswith("silent for")
    await wait_for(lambda: state(runtime) == "down", timeout=DEAD_AFTER + 5)
    assert "no heartbeat for" in runtime.node_views()[0]["state_reason"]
    # the hung agent is replaced: a new one says hello
    await wait_for(lambda: state(runtime) == "up", timeout=30)
    assert runtime.agents.channels[-1] is not channel  # type: ignore[attr-defined]
    await wait_for(lambda: runtime.node_views()[0]["rtt_ms"] is not None, timeout=20)


async def test_a_drained_node_takes_no_new_work_until_undrained(runtime: Runtime,
                                                                tmp_path: Path) -> None:
    with pytest.raises(Forbidden, match="may drain a node"):
        runtime.drain("local", "", Caller(4242, "eve"))
    view = runtime.drain("local", "new disks", ME)
    assert view["state"] == "drained" and view["state_reason"] == "drained: new disks"
    job = runtime.submit(JobSpec(name="waits", kind="command",
                                 argv=(sys.executable, "-c", "print('ran')")), ME)
    runtime.schedule_pass()
    assert runtime.store.get_job(job.id).state is JobState.QUEUED
    assert '"local": "new disks"' in (tmp_path / "drained.json").read_text()  # survives restarts
    runtime.undrain("local", ME)
    await wait_for(lambda: runtime.store.get_job(job.id).state is JobState.SUCCEEDED)
    assert state(runtime) == "up"
