"""A real engine daemon over a cluster of the head node and sshd test hosts
on loopback, driven through the real CLI: every node up, a job asked for
one host runs there (under that host's root) with its hostile argv intact,
the engine's secrets reach no node, and an untrusted host runs nothing
until `llmconsole nodes trust` — then the engine connects at its next try."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from chaos.engine_handle import EngineHandle
from chaos.hosts import SshHosts, processes_naming
from tests.cluster.test_ssh_transport import agent_pids, hostile_strings

UP_TIMEOUT_S = 60.0  # backoff after failed tries reaches 8-16 s; a loaded machine adds more
SECRET = "s3cr3t-FOO_TOKEN-engine-7d1e"


def kill_naming(path: Path) -> None:
    """What the engine left of its remote agents and jobs (nothing, normally)."""
    for pid in processes_naming(str(path)):
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


def nodes_by_name(engine: EngineHandle) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in engine.json("nodes")}


def wait_nodes(engine: EngineHandle, want: dict[str, str], timeout: float = UP_TIMEOUT_S
               ) -> dict[str, dict[str, Any]]:
    """Poll `llmconsole nodes` until each named node is in its state."""
    deadline = time.monotonic() + timeout
    nodes: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        nodes = nodes_by_name(engine)
        if all(nodes.get(n, {}).get("state") == s for n, s in want.items()):
            return nodes
        time.sleep(0.2)
    raise AssertionError(f"nodes not {want} after {timeout:g} s: "
                         f"{ {n: (v['state'], v.get('state_reason')) for n, v in nodes.items()} }")


def where_profile(engine: EngineHandle, node: str, args: list[str]) -> None:
    code = ("import json, os, sys; print(os.environ['LLMCONSOLE_RUN_DIR']); "
            "print(json.dumps(sys.argv[1:]))")
    engine.write_profile(f"on-{node}", "\n".join([
        'kind = "command"', f"name = {json.dumps('on ' + node)}",
        f"command = {json.dumps([sys.executable, '-c', code, *args])}",
        "[resources]", f"nodes_with = {json.dumps([node])}", ""]))


def job_lines(engine: EngineHandle, job_id: int) -> list[str]:
    return engine.cli("logs", str(job_id)).stdout.splitlines()


def test_an_engine_with_the_head_node_and_two_test_hosts(
        engine: EngineHandle, ssh_hosts: SshHosts, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    profile = ssh_hosts.cluster_profile(tmp_path / "cluster.toml", roots=roots)
    engine.env.update(ssh_hosts.env())
    engine.env["FOO_TOKEN"] = SECRET
    engine.serve("--cluster", str(profile))
    try:
        nodes = wait_nodes(engine, {"head": "up", "node1": "up", "node2": "up"})
        assert sorted(nodes) == ["head", "node1", "node2"]
        listed = engine.cli("nodes").stdout
        assert all(name in listed for name in ("head", "node1", "node2"))
        checked = json.loads(engine.cli("nodes", "check", "--json", check=False).stdout)
        assert sorted(r["node"] for r in checked) == ["head", "node1", "node2"]
        by_node = {r["node"]: {c["check"]: c for c in r["checks"]} for r in checked}
        for name in ("node1", "node2"):  # reached over ssh: timed, and the peers answer
            assert by_node[name]["ssh"]["ok"], by_node[name]
            assert by_node[name]["ssh"]["detail"].startswith("a short command in")
            assert by_node[name]["peers"]["ok"], by_node[name]["peers"]
        assert "ssh" not in by_node["head"]

        canary = tmp_path / "canary"
        strings = hostile_strings(canary)
        where_profile(engine, "node2", strings)
        job_id = engine.submit("on-node2")
        job = engine.wait_state(job_id, {"succeeded", "failed"}, timeout=60)
        assert job["state"] == "succeeded", job
        run_dir, argv = job_lines(engine, job_id)
        assert Path(run_dir).is_relative_to(roots / "node2"), run_dir
        assert json.loads(argv) == strings and not canary.exists()

        # the engine's FOO_TOKEN: in no remote agent's environment, on no command
        # line, in no log
        for name in ("node1", "node2"):
            [agent] = agent_pids(roots / name)
            with open(f"/proc/{agent}/environ", "rb") as f:
                assert SECRET.encode() not in f.read()
        for pid in psutil.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    assert SECRET.encode() not in f.read(), pid
            except OSError:
                continue
        for log in [engine.home / "engine.log", *engine.home.glob("logs/**/*"),
                    *roots.glob("**/*")]:
            if log.is_file():
                assert SECRET.encode() not in log.read_bytes(), log
    finally:
        engine.close()
        kill_naming(roots)


def test_an_untrusted_host_runs_nothing_until_nodes_trust(
        engine: EngineHandle, ssh_hosts: SshHosts, tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    config = ssh_hosts.write_ssh_config(tmp_path / "ssh_config", known_hosts)
    profile = ssh_hosts.cluster_profile(tmp_path / "cluster.toml", names=["node1"],
                                        known_hosts=known_hosts, roots=roots)
    engine.env.update(ssh_hosts.env(config))
    engine.serve("--cluster", str(profile))
    try:
        nodes = wait_nodes(engine, {"head": "up", "node1": "untrusted"})
        reason = nodes["node1"]["state_reason"] or ""
        assert f"offers ED25519 key {ssh_hosts.fingerprint('node1')}" in reason
        assert "llmconsole nodes trust node1" in reason and "\n" not in reason
        where_profile(engine, "node1", ["hello"])
        job_id = engine.submit("on-node1")
        assert engine.job(job_id)["state"] == "queued"
        assert not (roots / "node1").exists() and not agent_pids(roots / "node1")

        engine.cli("nodes", "trust", "node1", "--yes", "--cluster", str(profile))
        assert known_hosts.read_text() == ssh_hosts.known_line("node1")
        wait_nodes(engine, {"node1": "up"})
        job = engine.wait_state(job_id, {"succeeded", "failed"}, timeout=60)
        assert job["state"] == "succeeded", job
        run_dir, argv = job_lines(engine, job_id)
        assert Path(run_dir).is_relative_to(roots / "node1") and json.loads(argv) == ["hello"]
    finally:
        engine.close()
        kill_naming(roots)


def test_horovodrun_on_one_remote_node_runs_there_without_ssh(
        engine: EngineHandle, ssh_hosts: SshHosts, tmp_path: Path) -> None:
    from engine.client import EngineClient

    roots = tmp_path / "roots"
    profile = ssh_hosts.cluster_profile(tmp_path / "cluster.toml", roots=roots)
    engine.env.update(ssh_hosts.env())
    engine.serve("--cluster", str(profile))
    try:
        wait_nodes(engine, {"head": "up", "node1": "up", "node2": "up"})
        code = ("import os; print('rank', os.environ['HOROVOD_RANK'], "
                "os.environ['LLMCONSOLE_RUN_DIR'])")
        spec = {"name": "two ranks on node2", "kind": "train", "launcher": "horovodrun",
                "argv": [sys.executable, "-c", code],
                "resources": {"nodes": 1, "cpus": 2, "nodes_with": ["node2"]}}
        with EngineClient(engine.home / "engine.sock") as client:
            job_id = int(client.submit(spec)["id"])
        job = engine.wait_state(job_id, {"succeeded", "failed"}, timeout=120)
        lines = job_lines(engine, job_id)
        assert job["state"] == "succeeded", (job, lines[-20:])
        ranks = sorted(line.split(":rank ")[1] for line in lines if ":rank " in line)
        run_dir = str(roots / "node2" / "runs" / f"{job_id}.1")
        assert ranks == [f"0 {run_dir}", f"1 {run_dir}"], lines  # both, launched on node2
    finally:
        engine.close()
        kill_naming(roots)
