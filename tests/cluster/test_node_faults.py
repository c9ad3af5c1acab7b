"""Node faults through the real engine and CLI over sshd test hosts: a hung
link goes suspect, then down, within the documented times; a node that
crashes mid-training loses its attempt, the retry runs on the remaining
nodes and resumes from the checkpoint, and when the host returns nothing of
the old attempt runs there."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.engine_handle import EngineHandle, engine_on_hosts
from chaos.hosts import SshHosts, marked
from engine import health
from tests.cluster.test_horovod_cluster import ACROSS, RUN_TIMEOUT_S, sets, wait_ended

UP_TIMEOUT_S = 60.0
LOST_AFTER_S = 5.0  # the engine's --lost-after here (60 s by default)
SLACK_S = 8.0  # a loaded 2-core machine: polling, scheduling and the heartbeat tick


@pytest.fixture
def cluster(ssh_hosts: SshHosts) -> Iterator[EngineHandle]:
    """An engine over the head node, node1 and node2, each with its own root."""
    with engine_on_hosts(ssh_hosts, UP_TIMEOUT_S, head="head",
                         serve_args=("--lost-after", str(LOST_AFTER_S)),
                         env={"LLMCONSOLE_RETRY_BACKOFF_S": "0.5"}) as engine:
        yield engine


def states(engine: EngineHandle, want: dict[str, str], timeout: float = UP_TIMEOUT_S
           ) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    nodes: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        nodes = {n["name"]: n for n in engine.json("nodes")}
        if all(nodes.get(k, {}).get("state") == v for k, v in want.items()):
            return nodes
        time.sleep(0.2)
    raise AssertionError(f"not {want} within {timeout:g} s: "
                         f"{ {k: (v['state'], v['state_reason']) for k, v in nodes.items()} }")


def test_a_hung_link_goes_suspect_then_down_in_the_documented_time(
        cluster: EngineHandle, ssh_hosts: SshHosts) -> None:
    session = ssh_hosts.hang("node1", node="node1")  # the link is open, nothing comes
    hung = time.monotonic()
    try:
        suspect = states(cluster, {"node1": "suspect"},
                         timeout=health.SUSPECT_AFTER_S + SLACK_S)["node1"]
        seen_suspect = time.monotonic() - hung
        assert seen_suspect >= health.SUSPECT_AFTER_S - 1.0, seen_suspect
        assert suspect["state_reason"].startswith("silent for")
        states(cluster, {"node1": "down"}, timeout=health.DEAD_AFTER_S + SLACK_S)
        assert time.monotonic() - hung <= health.DEAD_AFTER_S + SLACK_S
        assert states(cluster, {"head": "up", "node2": "up"}, timeout=1)
    finally:
        ssh_hosts.resume(session)
    states(cluster, {"node1": "up"})  # it reconnects


def test_a_node_crash_mid_training_is_lost_retried_elsewhere_and_resumed(
        cluster: EngineHandle, ssh_hosts: SshHosts) -> None:
    submitted = cluster.json("submit", "pretrain-tiny", *ACROSS, "--set", "retries=1",
                             *sets("max_steps=30", "eval_every=30", "checkpoint_every=10"))
    job_id, output = int(submitted["id"]), Path(submitted["output"])
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not list((output / "checkpoints").glob("step-*")):
        job = cluster.job(job_id)
        assert job["state"] in ("queued", "starting", "running") and \
            time.monotonic() < deadline, (job, cluster.cli("logs", str(job_id)).stdout[-2000:])
        time.sleep(0.2)
    first = cluster.job(job_id)
    placed = [p["node"] for p in first["attempts"][0]["placements"]]
    assert "head" in placed and len(placed) == 2, placed
    victim = next(n for n in placed if n != "head")
    survivor = next(n for n in ("node1", "node2") if n != victim)

    ssh_hosts.crash(victim)  # its sshd, sessions, agent and every process of its root
    crashed = time.monotonic()
    states(cluster, {victim: "down"}, timeout=health.DEAD_AFTER_S + SLACK_S)
    assert time.monotonic() - crashed <= health.DEAD_AFTER_S + SLACK_S

    job = wait_ended(cluster, job_id, timeout=RUN_TIMEOUT_S + LOST_AFTER_S)
    log = cluster.cli("logs", str(job_id)).stdout
    assert job["state"] == "succeeded", (job, log[-3000:])
    lost, retried = job["attempts"]
    assert lost["state"] == "lost" and victim in lost["reason"], lost
    assert sorted(p["node"] for p in retried["placements"]) == sorted(["head", survivor])
    assert "resumed from" in log
    steps = [p["step"] for p in cluster.json("metrics", str(job_id), "--attempt", "2",
                                             "--name", "loss")]
    assert steps and min(steps) > 1 and max(steps) == 30, steps  # resumed, not restarted

    ssh_hosts.start_host(victim)  # it comes back: nothing of attempt 1 may run anywhere
    states(cluster, {victim: "up"})
    deadline = time.monotonic() + 30
    while (left := marked(f"{job_id}.1")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, left
