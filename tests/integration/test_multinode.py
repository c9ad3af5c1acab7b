"""An allocation across nodes, in-process with a real store and two real
local agents (each "node" with its own run root): torchrun is started on
every node and the attempt ends when all of them have; a dead second node
loses the attempt, not only a dead first one."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.lifecycle import JobState
from engine.model import ClusterSpec, JobSpec, NodeSpec, Resources
from engine.runtime import Caller, Runtime
from engine.store import Store
from engine.transport.base import AgentChannel
from engine.transport.local import LocalAgentChannel
from tests.integration.polling import wait_for

ME = Caller.from_uid(os.getuid())


def kill_leftover_runs(root: Path) -> None:
    """Kill the process group of every run the two nodes under `root` left."""
    for run_dir in root.glob("n*/runs/*"):
        pid_file = run_dir / "pid"
        if pid_file.exists():
            pgid = json.loads(pid_file.read_text()).get("pgid")
            try:
                os.killpg(int(pgid), signal.SIGKILL)
            except (ProcessLookupError, TypeError):
                pass


class TwoNodes:
    """Real local agents, one root each; a node in `down` cannot be reached."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.down: set[str] = set()

    def __call__(self, node: NodeSpec) -> AgentChannel:
        if node.name in self.down:
            raise ConnectionRefusedError(f"ssh: connect to host {node.name}: refused")
        return LocalAgentChannel(node.name, self.home / node.name, interval=0.2)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    store = Store(tmp_path / "engine.db")
    nodes = TwoNodes(tmp_path)
    cluster = ClusterSpec("two", (NodeSpec("n1", gpus=0, slots=1),
                                  NodeSpec("n2", gpus=0, slots=1)))
    rt = Runtime(store, cluster, tmp_path, nodes, lost_after=1.0, stop_grace=1.0)
    rt.two = nodes  # type: ignore[attr-defined]
    await rt.start()
    assert await rt.wait_nodes_up(20)
    yield rt
    await rt.stop()
    kill_leftover_runs(tmp_path)
    store.close()


def across_two(script: Path, name: str = "multi") -> JobSpec:
    return JobSpec(name=name, kind="train", launcher="torchrun",
                   resources=Resources(nodes=2, cpus=1), argv=(sys.executable, str(script)))


async def test_torchrun_across_nodes_runs_on_each_and_ends_when_all_have(
        runtime: Runtime, tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text("import os\nprint('rank', os.environ['RANK'], 'of', "
                      "os.environ['WORLD_SIZE'], flush=True)\n")
    job = runtime.submit(across_two(script), ME)
    await wait_for(lambda: runtime.store.get_job(job.id).state.is_terminal(), timeout=120)
    done = runtime.store.get_job(job.id)
    log = runtime.log_path(job.id, 1).read_text()
    assert done.state is JobState.SUCCEEDED, (done.reason, log[-2000:])
    assert "rank 0 of 2" in log and "rank 1 of 2" in log  # one from each node's torchrun
    for node in ("n1", "n2"):  # each node's agent ran its part in its own run root
        assert (tmp_path / node / "runs" / "1.1" / "exit.json").exists()


async def test_a_failing_part_fails_the_attempt_and_stops_the_others(
        runtime: Runtime, tmp_path: Path) -> None:
    script = tmp_path / "fail.py"  # run by torchrun's --no-python path, so executable
    script.write_text(f"#!{sys.executable}\nimport os, sys, time\n"
                      f"if os.environ['LLMCONSOLE_RUN_DIR'].startswith({str(tmp_path / 'n2')!r}):\n"
                      "    sys.exit(7)\n"
                      "time.sleep(120)\n")
    os.chmod(script, 0o755)
    spec = JobSpec(name="mixed", kind="train", launcher="torchrun",
                   resources=Resources(nodes=2, cpus=1), argv=(str(script),))
    submitted = runtime.submit(spec, ME)
    await wait_for(lambda: runtime.store.get_job(submitted.id).state.is_terminal(), timeout=120)
    done = runtime.store.get_job(submitted.id)
    assert done.state is JobState.FAILED
    assert done.reason is not None and "on node n2" in done.reason
    assert not runtime.running  # nothing is left holding the nodes


async def test_a_dead_second_node_loses_the_attempt(runtime: Runtime, tmp_path: Path) -> None:
    script = tmp_path / "sleep.py"
    script.write_text("import time\ntime.sleep(120)\n")
    job = runtime.submit(across_two(script, "sleepy"), ME)
    await wait_for(lambda: runtime.store.get_job(job.id).state is JobState.RUNNING)
    runtime.two.down.add("n2")  # type: ignore[attr-defined]
    channel = runtime.nodes["n2"].channel
    assert channel is not None
    await channel.close()
    await wait_for(lambda: runtime.store.get_job(job.id).state is JobState.LOST)
    lost = runtime.store.get_job(job.id)
    assert lost.reason is not None and "node n2 unreachable" in lost.reason
    assert "refused" in lost.reason
