"""What a job process is given: an allow-listed environment and an argv
wrapped by its launcher, never a shell string."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.launch import (
    HOST_GPUS_SCRIPT,
    SSHWRAP_SCRIPT,
    job_environment,
    launch_argv,
    launch_parts,
    placement_environment,
    ranks_per_node,
    ssh_hosts,
    sshwrap_prefix,
)
from engine.model import JobSpec, NodeSpec, Placement, Resources

BASE = {
    "PATH": "/usr/bin",
    "HOME": "/home/alice",
    "LANG": "C.UTF-8",
    "LC_ALL": "C",
    "NCCL_DEBUG": "INFO",
    "AWS_SECRET_ACCESS_KEY": "hunter2",
    "GITHUB_TOKEN": "ghp_secret",
    "SSH_AUTH_SOCK": "/tmp/agent.sock",
    "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    "LD_PRELOAD": "/evil.so",
}


def spec(**kw: object) -> JobSpec:
    base: dict[str, object] = {"name": "t", "kind": "train",
                               "argv": ("/venv/bin/python", "-m", "engine.workloads.train")}
    base.update(kw)
    return JobSpec(**base)  # type: ignore[arg-type]


def test_environment_is_an_allow_list_plus_the_profile() -> None:
    env = job_environment(BASE, spec(env=(("HF_HUB_OFFLINE", "1"),)))
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/alice"
    assert env["LC_ALL"] == "C" and env["NCCL_DEBUG"] == "INFO"
    assert env["HF_HUB_OFFLINE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    for secret in ("AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "SSH_AUTH_SOCK", "LD_PRELOAD"):
        assert secret not in env
    assert "CUDA_VISIBLE_DEVICES" not in env  # the agent sets it from the allocation


def test_local_launcher_runs_the_argv_as_is() -> None:
    s = spec(argv=("echo", "; rm -rf ~", "$(reboot)"))
    assert launch_argv(s, [Placement("n1", (), 1)], {"n1": NodeSpec("n1")}) == \
        ["echo", "; rm -rf ~", "$(reboot)"]


def test_horovodrun_gets_one_rank_per_gpu_on_every_node() -> None:
    s = spec(launcher="horovodrun", resources=Resources(nodes=2, gpus_per_node=4, cpus=8))
    nodes = {"a": NodeSpec("a", host="10.0.0.1"), "b": NodeSpec("b", host="10.0.0.2")}
    placements = [Placement("a", (0, 1, 2, 3), 8), Placement("b", (4, 5, 6, 7), 8)]
    argv = launch_argv(s, placements, nodes, python="/nonexistent/python")
    # across nodes, horovodrun starts behind llmconsole's ssh (behaviour meant to change:
    # the horovodrun part that follows is as before)
    wrap = sshwrap_prefix(placements, nodes, "/nonexistent/python")
    assert argv[:len(wrap)] == wrap and wrap[-1] == "--"
    argv = argv[len(wrap):]
    assert argv[:5] == ["horovodrun", "-np", "8", "-H", "10.0.0.1:4,10.0.0.2:4"]
    assert "--gloo" not in argv
    # each rank selects its own host's GPUs (horovodrun gives every rank one env)
    assert argv[5:10] == ["/nonexistent/python", "-I", "-S", str(HOST_GPUS_SCRIPT), "--"]
    assert argv[10:] == list(s.argv)


def test_horovodrun_on_cpus_uses_gloo_and_a_rank_per_slot(tmp_path: Path) -> None:
    (tmp_path / "horovodrun").touch()
    s = spec(launcher="horovodrun", resources=Resources(cpus=2))
    argv = launch_argv(s, [Placement("local", (), 2)], {"local": NodeSpec("local")},
                       python=str(tmp_path / "python"))
    assert argv[:6] == [str(tmp_path / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo"]
    assert ranks_per_node(s) == 2


def test_torchrun_runs_python_modules_itself() -> None:
    s = spec(launcher="torchrun", resources=Resources(cpus=2))
    argv = launch_argv(s, [Placement("local", (), 2)], {"local": NodeSpec("local")},
                       python="/nonexistent/python")
    assert argv == ["torchrun", "--nproc-per-node=2", "--standalone", "-m",
                    "engine.workloads.train"]
    plain = spec(launcher="torchrun", argv=("./train.sh", "x"))
    assert launch_argv(plain, [Placement("local", (), 1)], {"local": NodeSpec("local")},
                       python="/nonexistent/python")[-3:] == ["--no-python", "./train.sh", "x"]


TWO_NODES = {"a": NodeSpec("a", host="10.0.0.1"), "b": NodeSpec("b", host="10.0.0.2")}
SPLIT = [Placement("a", (0, 1), 2), Placement("b", (2, 3), 2)]


def test_each_host_of_a_horovodrun_job_gets_its_own_gpus() -> None:
    s = spec(launcher="horovodrun", resources=Resources(nodes=2, gpus_per_node=2, cpus=2))
    env = placement_environment(s, SPLIT, TWO_NODES)
    assert env == {"LLMCONSOLE_HOST_GPUS": "10.0.0.1=0,1;10.0.0.2=2,3"}
    [part] = launch_parts(s, SPLIT, TWO_NODES)  # horovodrun reaches node b itself
    assert part.node == "a" and part.gpus == (0, 1)
    cpu_only = spec(launcher="horovodrun", resources=Resources(nodes=2, cpus=2))
    assert placement_environment(cpu_only, [Placement("a", (), 2), Placement("b", (), 2)],
                                 TWO_NODES) == {}


def test_the_host_gpu_shim_sets_this_hosts_devices_and_refuses_unknown_hosts() -> None:
    show = [sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"]
    env = {**os.environ, "LLMCONSOLE_HOST_GPUS": "10.0.0.1=0,1;10.0.0.2=2,3",
           "HOROVOD_HOSTNAME": "10.0.0.2", "CUDA_VISIBLE_DEVICES": "0,1"}
    run = subprocess.run([sys.executable, "-I", "-S", str(HOST_GPUS_SCRIPT), "--", *show],
                         env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0 and run.stdout.strip() == "2,3"
    env["HOROVOD_HOSTNAME"] = "10.0.0.9"
    run = subprocess.run([sys.executable, "-I", "-S", str(HOST_GPUS_SCRIPT), "--", *show],
                         env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "'10.0.0.9' is not in LLMCONSOLE_HOST_GPUS" in run.stderr


def test_torchrun_across_nodes_starts_on_every_node() -> None:
    s = spec(launcher="torchrun", resources=Resources(nodes=2, gpus_per_node=2, cpus=2))
    parts = launch_parts(s, SPLIT, TWO_NODES, python="/nonexistent/python")
    assert [(p.node, p.gpus) for p in parts] == [("a", (0, 1)), ("b", (2, 3))]
    for p in parts:
        assert "--nnodes=2" in p.argv and "--rdzv-endpoint=10.0.0.1:29400" in p.argv


def test_horovodrun_across_nodes_starts_behind_llmconsoles_ssh_with_each_hosts_settings(
        ) -> None:
    s = spec(launcher="horovodrun", resources=Resources(nodes=2, cpus=1))
    nodes = {"a": NodeSpec("a", host="10.0.0.1", port=2201, user="ann", identity="~/.ssh/a"),
             "b": NodeSpec("b", host="nb", port=2202, identity="/keys/b"),
             "c": NodeSpec("c", host="10.0.0.3")}
    placements = [Placement("a", (), 1), Placement("b", (), 1), Placement("c", (), 1)]
    assert ssh_hosts(placements, nodes) == {
        "10.0.0.1": {"port": 2201, "user": "ann", "identity": "~/.ssh/a"},
        "nb": {"port": 2202, "identity": "/keys/b"}}  # c: ssh's own choices
    [part] = launch_parts(s, placements, nodes, python="/py", known_hosts="/etc/kh")
    argv = list(part.argv)
    start = argv.index("--") + 1
    assert argv[:5] == ["/py", "-I", "-S", str(SSHWRAP_SCRIPT), "launch"]
    assert json.loads(argv[argv.index("--hosts") + 1]) == ssh_hosts(placements, nodes)
    assert argv[argv.index("--known-hosts") + 1] == "/etc/kh"
    assert argv[start:start + 5] == ["horovodrun", "-np", "3", "-H",
                                     "10.0.0.1:1,nb:1,10.0.0.3:1"]
    assert argv[-3:] == list(s.argv)
    # horovodrun's own -p/-i (one value for every host) are never used
    assert "-p" not in argv[start:] and "-i" not in argv[start:]
    # one node: horovodrun never uses ssh, and starts as before
    [alone] = launch_parts(s, placements[:1], nodes, python="/py", known_hosts="/etc/kh")
    assert alone.argv[0] == "horovodrun" and "--known-hosts" not in alone.argv


def test_the_engines_ssh_config_reaches_horovodrun_jobs_only() -> None:
    base = {**BASE, "LLMCONSOLE_SSH_CONFIG": "/etc/llm/ssh_config", "FOO_TOKEN": "s3cr3t"}
    horovod = job_environment(base, spec(launcher="horovodrun"))
    assert horovod["LLMCONSOLE_SSH_CONFIG"] == "/etc/llm/ssh_config"
    assert "FOO_TOKEN" not in horovod
    assert "LLMCONSOLE_SSH_CONFIG" not in job_environment(base, spec())


def test_the_head_node_launches_when_it_is_in_the_allocation() -> None:
    nodes = {"head": NodeSpec("head"), "b": NodeSpec("b", host="10.0.0.2")}
    s = spec(launcher="horovodrun", resources=Resources(nodes=2, cpus=1))
    placed = [Placement("b", (), 1), Placement("head", (), 1)]  # the scheduler's order
    [part] = launch_parts(s, placed, nodes, python="/nonexistent/python")
    assert part.node == "head"
    hosts = part.argv[part.argv.index("-H") + 1]
    assert hosts == "localhost:1,10.0.0.2:1"  # localhost is the launching node itself


def test_horovodrun_on_one_remote_node_runs_there_without_ssh() -> None:
    nodes = {"b": NodeSpec("b", host="10.0.0.2")}
    s = spec(launcher="horovodrun", resources=Resources(nodes=1, cpus=2))
    argv = launch_argv(s, [Placement("b", (), 2)], nodes, python="/nonexistent/python")
    assert argv[:5] == ["horovodrun", "-np", "2", "-H", "localhost:2"]
