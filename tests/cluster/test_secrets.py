"""A job's secret across two sshd test hosts, through the real engine and
CLI: a horovodrun job on node1 and node2 with HF_TOKEN=<random> in its
profile's [env]. Every rank sees the value (it prints its hash); the value
is on no process's command line while the job runs (the whole process
table, every 20 ms), and after it in no engine event, no API view, no log
and no file under the engine home, which holds both nodes' roots (their
spec.json files included), except the engine's database (0600: the stored
spec, see engine/secrets.py) and the profile itself. The ranks on the
other side of ssh get the value from their session's stdin
(engine/sshwrap, engine/secret_exec.py), and nothing of the attempt is
left once it ends."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chaos.engine_handle import EngineHandle, engine_on_hosts
from chaos.hosts import SshHosts, marked
from engine.client import EngineClient
from engine.profiles import load_job_profile

SECRET = "hf_" + os.urandom(12).hex()
UP_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 180.0  # horovodrun's ssh checks and task servers on a loaded 2-core machine
#: Each rank: its rank, the hash of the secret, then a pause so that the
#: process table is watched while every rank is up.
RANK = """\
import hashlib, os, time
value = os.environ["HF_TOKEN"]
print("rank", os.environ["HOROVOD_RANK"], hashlib.sha256(value.encode()).hexdigest(),
      "SEED=" + os.environ["SEED"], flush=True)
time.sleep(1.5)
"""


@pytest.fixture(scope="module")
def engine(ssh_hosts: SshHosts) -> Iterator[EngineHandle]:
    """An engine over node1 and node2 (no head node), both up, each node's
    root under the engine home."""
    with engine_on_hosts(ssh_hosts, UP_TIMEOUT_S) as handle:
        yield handle


class Watch:
    """In threads while the job runs: every command line in the process
    table holding the secret (and how many ranks were seen, so the watch is
    known to have looked while they ran), and every event the engine pushes,
    as the raw JSON it sends."""

    def __init__(self, engine: EngineHandle, rank_script: Path) -> None:
        self.engine, self.rank_script = engine, str(rank_script)
        self.leaks: list[str] = []
        self.ranks_seen: set[int] = set()
        self.events: list[str] = []
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._threads = [threading.Thread(target=self._processes, daemon=True),
                         threading.Thread(target=self._events, daemon=True)]

    def __enter__(self) -> Watch:
        for t in self._threads:
            t.start()
        assert self._listening.wait(20)  # the event stream is open before the job exists
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._threads[0].join()

    def _processes(self) -> None:
        while not self._stop.is_set():
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                try:
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        raw = f.read()
                except OSError:
                    continue
                if SECRET.encode() in raw:
                    self.leaks.append(raw.replace(b"\0", b" ").decode(errors="replace"))
                if raw.split(b"\0")[-2:-1] == [self.rank_script.encode()]:
                    self.ranks_seen.add(int(name))
            self._stop.wait(0.02)

    def _events(self) -> None:
        for event in EngineClient(self.engine.home / "engine.sock").events():
            if event.get("type") == "hello":
                self._listening.set()
            self.events.append(json.dumps(event))
            if self._stop.is_set():
                return


def test_a_secret_reaches_both_ranks_across_two_hosts_and_nowhere_else(
        engine: EngineHandle) -> None:
    script = engine.home / "rank.py"
    script.write_text(RANK)
    # the secret is in the profile's [env]; the ranks run a small script in
    # place of the train workload (the API takes a train job's argv as given)
    profile = engine.write_profile("secret-job", "\n".join([
        'kind = "train"', 'launcher = "horovodrun"',
        "[resources]", "nodes = 2", "cpus = 1",
        "[env]", f'HF_TOKEN = "{SECRET}"', 'SEED = "7"', ""]))
    spec = dataclasses.replace(load_job_profile(str(profile)),
                               argv=(sys.executable, "-u", str(script)))
    assert dict(spec.env)["HF_TOKEN"] == SECRET
    started = time.monotonic()
    with Watch(engine, script) as watch:
        job_id = int(EngineClient(engine.home / "engine.sock").submit(spec.to_dict())["id"])
        job = engine.wait_state(job_id, {"succeeded", "failed", "cancelled", "lost"},
                                RUN_TIMEOUT_S)
        time.sleep(0.5)  # the last events of the job reach the stream
    log = engine.cli("logs", str(job_id)).stdout
    assert job["state"] == "succeeded", (job, log[-3000:])
    assert [p["node"] for p in job["attempts"][0]["placements"]] == ["node1", "node2"]

    # every rank, one on each host, saw the value (and the profile's other variable)
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    for rank in (0, 1):
        assert f"[{rank}]<stdout>:rank {rank} {digest} SEED=7" in log, log[-3000:]
    assert len(watch.ranks_seen) >= 2, watch.ranks_seen  # the watch saw the ranks run

    # no command line held it; no event, view, log or file has it
    assert not watch.leaks, watch.leaks[:3]
    assert watch.events and not [e for e in watch.events if SECRET in e]
    shown = engine.cli("show", str(job_id), "--json").stdout
    assert SECRET not in shown and json.loads(shown)["spec"]["env"] == ["HF_TOKEN", "SEED"]
    assert SECRET not in engine.cli("show", str(job_id)).stdout
    assert SECRET not in engine.cli("jobs", "--json").stdout
    assert SECRET not in log
    spec_files = list(engine.home.rglob("spec.json"))
    assert spec_files, "no spec.json under the node roots"
    for spec_file in spec_files:
        assert "HF_TOKEN" in json.loads(spec_file.read_text())["env_names"], spec_file
    database = {p for p in engine.home.iterdir() if p.name.startswith("engine.db")}
    assert database, list(engine.home.iterdir())
    for path in database:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    scanned = 0
    for path in engine.home.rglob("*"):
        if path.is_file() and not path.is_symlink() and path not in database | {profile}:
            assert SECRET.encode() not in path.read_bytes(), path
            scanned += 1
    assert scanned > 10 and (engine.home / "engine.log").exists()

    # nothing of the attempt is left: no keeper, no rank
    deadline = time.monotonic() + 20
    while (left := marked(f"{job_id}.1", engine.home)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left
    assert time.monotonic() - started < RUN_TIMEOUT_S
