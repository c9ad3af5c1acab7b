"""The runtime in-process, with a real store, a real local agent and real job
processes: what happens when a node stops answering, and the batch submit's
all-or-none promise."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from engine.errors import BadRequest, Forbidden
from engine.lifecycle import JobState
from engine.model import ClusterSpec, JobSpec, NodeSpec, Resources
from engine.runtime import Caller, Runtime
from engine.store import Store
from engine.transport.base import AgentChannel
from engine.transport.local import LocalAgentChannel
from tests.integration.polling import wait_for

ME = Caller.from_uid(os.getuid())


class FlakyNode:
    """Real local agents, until `fail` is set: then the node cannot be reached."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.fail = False
        self.channels: list[LocalAgentChannel] = []

    def __call__(self, node: NodeSpec) -> AgentChannel:
        if self.fail:
            raise ConnectionRefusedError(f"ssh: connect to host {node.name}: refused")
        channel = LocalAgentChannel(node.name, self.home, interval=0.2)
        self.channels.append(channel)
        return channel


def sleeper(name: str = "sleeper", retries: int = 0) -> JobSpec:
    return JobSpec(name=name, kind="command", retries=retries,
                   argv=(sys.executable, "-c", "import time; time.sleep(60)"))


@pytest.fixture
async def runtime(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store(tmp_path / "engine.db")
    nodes = FlakyNode(tmp_path)
    rt = Runtime(store, ClusterSpec("test", (NodeSpec("local"),)), tmp_path, nodes,
                 lost_after=1.0, stop_grace=1.0)
    rt.flaky = nodes  # type: ignore[attr-defined]
    await rt.start()
    assert await rt.wait_nodes_up(20)
    yield rt
    await rt.stop()
    for run_dir in (tmp_path / "runs").glob("*"):
        pid_file = run_dir / "pid"
        if pid_file.exists():
            import json

            pgid = json.loads(pid_file.read_text()).get("pgid")
            if pgid:
                try:
                    os.killpg(int(pgid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    store.close()


async def test_jobs_on_an_unreachable_node_are_lost_then_retried(runtime: Runtime) -> None:
    job = runtime.submit(sleeper(retries=1), ME)
    await wait_for(lambda: runtime.store.get_job(job.id).state is JobState.RUNNING)

    runtime.flaky.fail = True  # type: ignore[attr-defined]
    channel = runtime.nodes["local"].channel
    assert channel is not None
    await channel.close()  # the connection to the node drops, and cannot be made again

    await wait_for(lambda: runtime.store.get_attempt(job.id, 1).state is JobState.LOST)
    lost = runtime.store.get_attempt(job.id, 1)
    assert lost.reason is not None and "local unreachable" in lost.reason
    assert "refused" in lost.reason  # the cause from the transport is kept
    after = runtime.store.get_job(job.id)
    assert after.attempt == 2 and after.state is JobState.QUEUED  # retries = 1
    assert runtime.node_views()[0]["up"] is False

    old_pid = lost.pid
    assert old_pid is not None and _alive(old_pid)  # the node was cut off, not the job
    runtime.flaky.fail = False  # type: ignore[attr-defined]
    await wait_for(lambda: runtime.store.get_job(job.id).state is JobState.RUNNING)
    runs = [r for r in runtime.running.values() if r.job_id == job.id]
    assert [r.number for r in runs] == [2]
    # the lost attempt's process, still alive on the node, is stopped on reconnect
    await wait_for(lambda: not _alive(old_pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (ProcessLookupError, OSError):
        return False


async def test_a_batch_is_all_or_none(runtime: Runtime) -> None:
    huge = JobSpec(name="huge", kind="command", argv=("true",),
                   resources=Resources(gpus_per_node=8))
    with pytest.raises(BadRequest) as err:
        runtime.submit_many([(sleeper("a"), ()), (huge, ())], ME)
    assert "jobs[1] 'huge'" in err.value.message
    assert runtime.store.list_jobs() == []

    jobs = runtime.submit_many([(sleeper("a"), ()), (sleeper("b"), ())], ME)
    assert [j.spec.name for j in jobs] == ["a", "b"]
    assert len(runtime.store.list_jobs()) == 2


async def test_only_the_owner_or_an_admin_may_cancel(runtime: Runtime) -> None:
    job = runtime.submit(sleeper(), Caller(4242, "mallory-owner"))
    stranger = Caller(4343, "eve")
    with pytest.raises(Forbidden, match="only its owner or an admin"):
        runtime.cancel(job.id, stranger)
    assert runtime.store.get_job(job.id).state is not JobState.CANCELLED
    runtime.cancel(job.id, ME)  # the engine's own user administers it
    await wait_for(lambda: runtime.store.get_job(job.id).state is JobState.CANCELLED)
