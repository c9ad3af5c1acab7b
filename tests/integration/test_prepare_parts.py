"""A prepare job on two nodes, in-process with a real store and two real
local agents (each "node" with its own run root, one shared output folder):
each node runs its part with its own ``--part K/2``, both parts' lines reach
the job's log, the attempt ends when both have; one part failing fails the
attempt with that part's reason and the other part is stopped."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from engine.lifecycle import JobState
from engine.model import ClusterSpec, JobSpec, NodeSpec, Resources
from engine.runtime import Caller, Runtime
from engine.store import Store
from tests.integration.polling import wait_for
from tests.integration.test_multinode import TwoNodes, kill_leftover_runs

ME = Caller.from_uid(os.getuid())

# A stand-in for the prepare workload: it reads its --part as the workload
# does, writes its share into the shared --output folder, and fails when its
# part is the one named by FAIL_PART (after recording its pid, and once the
# other part has recorded its own: under load a part that fails at once could
# otherwise be stopped before the other part has started).
PART_SCRIPT = """\
import json, os, sys, time
argv = sys.argv[1:]
out = argv[argv.index("--output") + 1]
part = argv[argv.index("--part") + 1]
k, n = (int(x) for x in part.split("/"))
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, f"pid-{k}"), "w") as f:
    f.write(str(os.getpid()))
print(f"part {k} of {n} on {os.environ['LLMCONSOLE_RUN_DIR']}", flush=True)
if os.environ.get("FAIL_PART") == str(k):
    deadline = time.monotonic() + 60
    while not all(os.path.exists(os.path.join(out, f"pid-{j}")) for j in range(n)):
        if time.monotonic() > deadline:
            sys.exit(4)
        time.sleep(0.05)
    sys.exit(3)
if os.environ.get("FAIL_PART"):
    time.sleep(120)
with open(os.path.join(out, f"part-{k}.json"), "w") as f:
    json.dump({"part": k, "of": n}, f)
"""


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    store = Store(tmp_path / "engine.db")
    cluster = ClusterSpec("two", (NodeSpec("n1", gpus=0, slots=2),
                                  NodeSpec("n2", gpus=0, slots=2)))
    rt = Runtime(store, cluster, tmp_path, TwoNodes(tmp_path), lost_after=1.0, stop_grace=1.0)
    await rt.start()
    assert await rt.wait_nodes_up(20)
    yield rt
    await rt.stop()
    kill_leftover_runs(tmp_path)
    store.close()


def prepare_on_two(tmp_path: Path, out: Path, fail_part: int | None = None) -> JobSpec:
    script = tmp_path / "part.py"
    script.write_text(PART_SCRIPT)
    env = (("FAIL_PART", str(fail_part)),) if fail_part is not None else ()
    return JobSpec(name="prep", kind="prepare", resources=Resources(nodes=2, cpus=1), env=env,
                   argv=(sys.executable, str(script), "--input", "x", "--output", str(out)))


async def test_each_node_runs_its_part_and_the_attempt_ends_when_both_have(
        runtime: Runtime, tmp_path: Path) -> None:
    out = tmp_path / "shared" / "prep"
    job = runtime.submit(prepare_on_two(tmp_path, out), ME)
    await wait_for(lambda: runtime.store.get_job(job.id).state.is_terminal(), timeout=120)
    done = runtime.store.get_job(job.id)
    log = runtime.log_path(job.id, 1).read_text()
    assert done.state is JobState.SUCCEEDED, (done.reason, log[-2000:])
    lines = sorted(line for line in log.splitlines() if line.startswith("part "))
    assert lines == [f"part 0 of 2 on {tmp_path / 'n1' / 'runs' / '1.1'}",
                     f"part 1 of 2 on {tmp_path / 'n2' / 'runs' / '1.1'}"]
    for k in (0, 1):  # both parts wrote into the one shared folder
        assert json.loads((out / f"part-{k}.json").read_text()) == {"part": k, "of": 2}
    for node in ("n1", "n2"):
        exit_file = tmp_path / node / "runs" / "1.1" / "exit.json"
        assert json.loads(exit_file.read_text()).get("code") == 0
    assert not runtime.running


async def test_a_failing_part_fails_the_attempt_with_its_reason_and_stops_the_other(
        runtime: Runtime, tmp_path: Path) -> None:
    out = tmp_path / "shared" / "prep"
    job = runtime.submit(prepare_on_two(tmp_path, out, fail_part=1), ME)
    await wait_for(lambda: runtime.store.get_job(job.id).state.is_terminal(), timeout=120)
    done = runtime.store.get_job(job.id)
    assert done.state is JobState.FAILED
    assert done.reason == "on node n2: exit code 3"
    survivor = int((out / "pid-0").read_text())
    await wait_for(lambda: not psutil.pid_exists(survivor)
                   or psutil.Process(survivor).status() == psutil.STATUS_ZOMBIE, timeout=30)
    assert not (out / "part-0.json").exists()  # stopped mid-way, never finished
    assert not runtime.running
