"""horovodrun across two sshd test hosts, through the real engine and CLI:
`pretrain-tiny` (shrunk to the micro model and a few steps, one rank per
node) trains across node1 and node2 with every ssh of the run strict about
host keys, the engine's secret on no command line and in no log; a cancel
mid-run leaves no process of the attempt on any node.

The engine runs from its own home with a cluster of the two hosts only,
each with its root under that home; its ssh (and so the job's, through
engine/sshwrap) reads the hosts' ssh config, never ~/.ssh."""

from __future__ import annotations

import json
import os
import shlex
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from chaos.engine_handle import EngineHandle, engine_on_hosts
from chaos.hosts import SshHosts, marked
from engine.launch import ALLOWED_ENV, ALLOWED_PREFIXES

SECRET = "s3cr3t-FOO_TOKEN-horovod-51c9"
UP_TIMEOUT_S = 60.0  # both hosts connected, on a loaded 2-core machine
RUN_TIMEOUT_S = 240.0  # the tokenizer, horovodrun's ssh checks and 30 steps on 2 cores
#: pretrain-tiny with the micro model on a slice of the demo corpus (the
#: numbers of tests/integration/test_resume.py), one horovod rank per node.
SMALL = ["model=micro", "max_docs=400", "block_size=64", "vocab_size=512", "batch_size=8",
         "eval_batches=2", "warmup_steps=5", "log_every=1", "keep_checkpoints=1"]
# Horovod's info log has each rank say "[R]: Horovod initialized" (the workload
# prints on rank 0 only), so the log shows a line of every rank.
ACROSS = ["--set", "resources.nodes=2", "--set", "resources.cpus=1",
          "--set", "env.HOROVOD_LOG_LEVEL=info"]


def sets(*items: str) -> list[str]:
    return [w for item in (*SMALL, *items) for w in ("--set", f"args.{item}")]


@pytest.fixture(scope="module")
def cluster(ssh_hosts: SshHosts) -> Iterator[EngineHandle]:
    """An engine over node1 and node2 (no head node), FOO_TOKEN in its
    environment; both nodes up."""
    with engine_on_hosts(ssh_hosts, UP_TIMEOUT_S, env={"FOO_TOKEN": SECRET}) as engine:
        yield engine


def wait_ended(engine: EngineHandle, job_id: int, timeout: float = RUN_TIMEOUT_S
               ) -> dict[str, Any]:
    return engine.wait_state(job_id, {"succeeded", "failed", "cancelled", "lost"}, timeout)


class ProcessWatch:
    """Looks at the whole process table every 50 ms while a run goes on:
    every `ssh` process (argv[0] named ssh) of this engine (its command
    line or environment names the engine home: the agents' links, and the
    job's ssh) with its arguments and whether it carries the attempt's
    marker, and any command line holding SECRET. (Other tests may run ssh
    on this machine at the same time.)"""

    def __init__(self, home: Path, attempt: str) -> None:
        self.home = str(home).encode()
        self.marker = f"LLMCONSOLE_ATTEMPT={attempt}".encode()
        self.ssh: dict[int, tuple[list[str], bool]] = {}
        self.leaks: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in psutil.pids():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        raw = f.read()
                    if SECRET.encode() in raw:
                        self.leaks.append(raw.decode(errors="replace"))
                    argv = [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]
                    if argv and os.path.basename(argv[0]) == "ssh" and pid not in self.ssh:
                        with open(f"/proc/{pid}/environ", "rb") as f:
                            env = f.read()
                        if self.home in raw or self.home in env:
                            self.ssh[pid] = (argv, self.marker in env.split(b"\0"))
                except OSError:
                    continue
            self._stop.wait(0.05)


def env_names(remote_command: str) -> set[str]:
    """The variables horovodrun writes before a rank's program in the
    command it gives ssh: `cd DIR > /dev/null 2>&1 ; env A=1 B=2 PROGRAM ...`."""
    words = shlex.split(remote_command)
    names = set()
    for word in words[words.index("env") + 1:]:
        name, eq, _value = word.partition("=")
        if not eq or not name.replace("_", "").isalnum():
            break
        names.add(name)
    return names


def test_pretrain_tiny_trains_across_two_hosts_with_strict_ssh_and_no_secret_anywhere(
        cluster: EngineHandle, ssh_hosts: SshHosts) -> None:
    submitted = cluster.json("submit", "pretrain-tiny", *ACROSS,
                             *sets("max_steps=30", "eval_every=30", "checkpoint_every=30"))
    job_id, output = int(submitted["id"]), Path(submitted["output"])
    with ProcessWatch(cluster.home, f"{job_id}.1") as watch:
        job = wait_ended(cluster, job_id)
    log = cluster.cli("logs", str(job_id)).stdout
    assert job["state"] == "succeeded", (job, log[-3000:])
    assert [p["node"] for p in job["attempts"][0]["placements"]] == ["node1", "node2"]

    # every rank's lines, tagged by horovodrun, in the job's log
    for rank in (0, 1):
        assert [line for line in log.splitlines() if line.startswith(f"[{rank}]<stdout>:")
                and f"[{rank}]: Horovod initialized" in line], log[-2000:]
    points = cluster.json("metrics", str(job_id), "--name", "loss")
    losses = [p["value"] for p in sorted(points, key=lambda p: p["step"])]
    assert len(losses) == 30 and sum(losses[-5:]) < sum(losses[:5]), losses
    results = json.loads((output / "results.json").read_text())
    assert results["world_size"] == 2 and results["replicas_identical"] is True, results

    # horovodrun's ssh went through engine/sshwrap: each one strict, none lax
    horovods = [argv for argv, ours in watch.ssh.values() if ours]
    assert horovods, f"no ssh of the attempt seen among {len(watch.ssh)} ssh processes"
    for argv, _ours in watch.ssh.values():
        assert "StrictHostKeyChecking=yes" in argv, argv
        assert not [a for a in argv if a.lower().replace(" ", "=").endswith(
            "stricthostkeychecking=no")], argv
    for argv in horovods:
        assert "PasswordAuthentication=no" not in argv and "-A" not in argv, argv
    # node2 (127.0.0.3) is reached over ssh with its port, user and identity from the profile
    to_node2 = [argv for argv in horovods if argv[argv.index("--") + 1] == "127.0.0.3"]
    assert to_node2, horovods
    assert f"IdentityFile={ssh_hosts.identity}" in to_node2[0], to_node2[0]
    assert f"Port={ssh_hosts.port}" in to_node2[0], to_node2[0]

    # what horovodrun copied onto the ranks' command lines: the allow-listed job
    # environment, the profile's [env], horovod's own and llmconsole's markers only
    ranks = [argv[-1] for argv in horovods if " env " in argv[-1]]
    assert len(ranks) == 2, horovods
    for command in ranks:
        names = env_names(command)
        assert {"LLMCONSOLE_ATTEMPT", "LLMCONSOLE_RUN_DIR", "HOROVOD_RANK"} <= names, names
        assert not {n for n in names if n not in ALLOWED_ENV | {"PYTHONUNBUFFERED"}
                    and not n.startswith((*ALLOWED_PREFIXES, "LLMCONSOLE_"))}, names
        assert "FOO_TOKEN" not in names and "LLMCONSOLE_SSH_HOSTS" in names

    # the engine's FOO_TOKEN: on no command line during the run, in no log after it
    assert not watch.leaks, watch.leaks[:3]
    assert SECRET not in log
    for path in cluster.home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_cancel_mid_run_leaves_nothing_of_the_attempt_on_any_node(
        cluster: EngineHandle) -> None:
    submitted = cluster.json("submit", "pretrain-tiny", *ACROSS,
                             *sets("max_steps=5000", "eval_every=5000",
                                   "checkpoint_every=5000"))
    job_id, attempt = int(submitted["id"]), f"{submitted['id']}.1"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not cluster.json("metrics", str(job_id), "--name", "loss"):  # both ranks training
        job = cluster.job(job_id)
        assert job["state"] in ("queued", "starting", "running") and \
            time.monotonic() < deadline, (job, cluster.cli("logs", str(job_id)).stdout[-2000:])
        time.sleep(0.1)
    running = marked(attempt, cluster.home)
    assert any("engine.workloads.train" in c for c in running), running
    cluster.cli("cancel", str(job_id))
    job = wait_ended(cluster, job_id, timeout=60)
    assert job["state"] == "cancelled", job
    # the agents signal what is left (the grace, then SIGKILL): nothing stays
    deadline = time.monotonic() + 30
    while (left := marked(attempt, cluster.home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left
