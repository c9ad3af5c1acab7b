"""A job asks for nodes by label or name (`resources.nodes_with`), through
the real CLI and a real engine serving a cluster profile that `cluster
import` wrote: a job asking for the head node by name, and by a label added
to the profile, runs there; one asking for a label no node has is refused
at submit, one line naming the label and the nodes, and nothing is queued."""

from __future__ import annotations

import subprocess
import sys

from chaos.engine_handle import EngineHandle
from tests.integration.test_engine import command_profile


def test_jobs_run_on_the_node_they_name_and_a_missing_label_is_refused(
        engine: EngineHandle) -> None:
    cluster = engine.home / "lab.toml"
    subprocess.run([sys.executable, "-m", "engine", "cluster", "import", "-", "--output",
                    str(cluster)], input="head slots=2\n", text=True, env=engine.env,
                   check=True, capture_output=True, timeout=60)
    cluster.write_text(cluster.read_text().replace('name = "head"\n',
                                                   'name = "head"\nlabels = ["x86", "cpu"]\n'))
    engine.serve("--cluster", str(cluster))
    engine.write_profile("where", command_profile([sys.executable, "-c", "print('here')"]))

    by_name = engine.submit("where", "--set", 'resources.nodes_with=["head"]')
    by_labels = engine.submit("where", "--set", 'resources.nodes_with=["x86", "cpu", "head"]')
    for job_id in (by_name, by_labels):
        job = engine.wait_state(job_id, {"succeeded", "failed"})
        assert job["state"] == "succeeded", job
        assert [p["node"] for p in job["attempts"][-1]["placements"]] == ["head"]
        assert job["spec"]["resources"]["nodes_with"] in (["head"], ["x86", "cpu", "head"])

    proc = engine.cli("submit", "where", "--set", 'resources.nodes_with=["a100"]', check=False)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr
    assert "can never run on cluster 'lab'" in lines[0]
    assert "no node has label a100 (nodes: head)" in lines[0]
    bad = engine.cli("submit", "where", "--set", "resources.nodes_with=a100", check=False)
    assert bad.returncode == 1 and "resources.nodes_with" in bad.stderr
    assert 'resources.nodes_with=["a100"]' in bad.stderr  # the fix, as it is typed
    assert sorted(j["id"] for j in engine.json("jobs", "--all")) == sorted([by_name, by_labels])
