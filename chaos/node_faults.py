"""Agent, node and link faults on real sshd test hosts (chaos/hosts.py),
through a real engine: each fault is a function that injects it once into a
running job and returns its figures (a `FaultResult`).

- `kill_agent`: SIGKILL a node's agent while its job runs. Promise: the
  engine reconnects, the job keeps running and re-attaches, its log and
  metrics continue without gap or repeat, nothing starts twice.
  `detect_s`: kill -> the node seen not up; `recover_s`: kill -> up again
  with the job's output growing.
- `crash_node`: the host's sshd, sessions and every process of the node's
  root killed. Promise: the attempt is lost (after --lost-after) and
  retried on the other node; the host coming back runs nothing of the lost
  attempt. `detect_s`: crash -> node down; `recover_s`: crash -> the retry
  running elsewhere.
- `freeze_link`: SIGSTOP the sshd session serving the node's agent for
  longer than the engine's silence limit, then SIGCONT. Promise: the node
  goes suspect, then down, then up; the job ends succeeded, with at most
  one lost attempt and nothing launched twice. `detect_s`: freeze -> down;
  `recover_s`: down -> up again, over a new session (the old one still
  frozen).
- `kill_rank`: SIGKILL rank 1 of a horovodrun job across both nodes.
  Promise: the whole attempt ends (failed, with its reason) and no rank is
  left on any node. `detect_s`: kill -> the job ended; `left`: processes
  of the attempt still alive 30 s after it ended.

`Cluster` (a context manager) is the engine over node1 and node2 (no head
node, so every job runs behind SSH), each node with its own root and a
label naming it, --lost-after `LOST_AFTER_S`. Every job is
chaos/crash_job.py. Loopback only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from chaos.engine_crash import ENDED, JOB_SCRIPT, count_starts, numbered_lines, output_faults
from chaos.engine_handle import EngineHandle, engine_on_hosts
from chaos.hosts import SshHosts, marked
from engine import health
from engine.client import EngineClient
from engine.model import JobSpec, Resources

LOST_AFTER_S = 5.0  # the engine's --lost-after (60 s by default): a crash is lost fast
UP_TIMEOUT_S = 90.0  # a node (re)connected, on a loaded 2-core machine
END_TIMEOUT_S = 240.0  # a job through its fault to its end
LEFT_TIMEOUT_S = 30.0  # what the agents reap is gone within this
POLL_S = 0.05
INTERVAL_S = 0.2  # between a crash job's lines


@dataclass
class FaultResult:
    """One injected fault: how fast it was seen and recovered, and what was
    broken (every count has target 0)."""

    kind: str
    detect_s: float | None = None
    recover_s: float | None = None
    lost: int = 0  # jobs that did not end as promised
    duplicates: int = 0  # launches of a (job, attempt) beyond its first
    gaps: int = 0  # log lines or metric steps missing, repeated or out of order
    left: int = 0  # processes of the job left behind
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.gaps or self.left or self.problems)


class Cluster:
    """An engine over two sshd test hosts; see the module docstring."""

    def __init__(self, hosts: SshHosts, engine: EngineHandle) -> None:
        self.hosts = hosts
        self.engine = engine
        self.roots = engine.home / "roots"
        self.client = EngineClient(engine.home / "engine.sock", timeout=30)

    @classmethod
    @contextlib.contextmanager
    def start(cls) -> Iterator[Cluster]:
        with SshHosts.start(2) as hosts, engine_on_hosts(
                hosts, UP_TIMEOUT_S, labels={h.name: [h.name] for h in hosts.hosts},
                serve_args=("--lost-after", str(LOST_AFTER_S))) as engine:
            yield cls(hosts, engine)

    # ---------------------------------------------------------------- reads
    def node_states(self) -> dict[str, str]:
        return {n["name"]: n["state"] for n in self.client.nodes()}

    def wait_nodes(self, want: dict[str, str], timeout: float = UP_TIMEOUT_S,
                   since: float | None = None) -> float:
        """Wait until every named node is in its wanted state; return the
        seconds since `since` (default: since the call)."""
        begun = time.monotonic() if since is None else since
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.node_states()
            if all(states.get(k) == v for k, v in want.items()):
                return time.monotonic() - begun
            time.sleep(POLL_S)
        raise TimeoutError(f"nodes not {want} within {timeout:g} s: {states}")

    def wait_job(self, job_id: int, check: Callable[[dict[str, Any]], bool],
                 timeout: float = END_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.client.job(job_id)
            if check(job):
                return job
            time.sleep(POLL_S)
        raise TimeoutError(f"job {job_id} not as wanted within {timeout:g} s: "
                           f"{job.get('state')} {job.get('attempts')}")

    def log_lines(self, job_id: int, attempt: int | None = None) -> list[str]:
        return list(self.client.logs(job_id, attempt=attempt))

    # ---------------------------------------------------------------- jobs
    def submit(self, name: str, starts: Path, lines: int, *, node: str | None = None,
               retries: int = 0, launcher: str = "local", nodes: int = 1) -> int:
        argv = (sys.executable, "-u", str(JOB_SCRIPT), str(starts), str(lines),
                str(INTERVAL_S))
        spec = JobSpec(name=name, kind="train" if launcher != "local" else "command",
                       argv=argv, launcher=launcher, retries=retries,
                       resources=Resources(nodes=nodes, cpus=1,
                                           nodes_with=(node,) if node else ()))
        return int(self.client.submit(spec.to_dict())["id"])

    def wait_running(self, job_id: int, lines: int = 3) -> dict[str, Any]:
        """The job running, with at least `lines` lines of output stored."""
        def going(job: dict[str, Any]) -> bool:
            if job["state"] in ENDED:
                raise RuntimeError(f"job {job_id} ended {job['state']} before its fault: "
                                   f"{job.get('attempts')}")
            return job["state"] == "running" and \
                len(numbered_lines(self.log_lines(job_id), job_id)) >= lines
        return self.wait_job(job_id, going, timeout=UP_TIMEOUT_S)

    def agent_pid(self, node: str) -> int:
        session = psutil.Process(self.hosts.session_pid(node, node))
        for child in session.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if "engine.agent" in " ".join(child.cmdline()):
                    return child.pid
        raise RuntimeError(f"no agent under the sshd session of {node}")


def check_output(cluster: Cluster, job_id: int, lines: int, result: FaultResult,
                 attempt: int | None = None) -> None:
    """The job's stored output and loss steps: 1..lines, once each, in order."""
    found = output_faults(cluster.client, job_id, lines, time.monotonic() + 10.0, attempt)
    result.gaps += found.total
    if found.total:
        result.problems.append(f"job {job_id}: {found}")


def check_starts(starts: Path, result: FaultResult, per_attempt: int = 1) -> None:
    launched = count_starts(starts.read_text().splitlines() if starts.exists() else [])
    result.duplicates += sum(n - per_attempt for n in launched.values() if n > per_attempt)


def wait_left(attempt: str, timeout: float = LEFT_TIMEOUT_S) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := marked(attempt)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# -------------------------------------------------------------------- faults
def kill_agent(cluster: Cluster, node: str = "node1") -> FaultResult:
    result = FaultResult("agent kill -9")
    starts = cluster.engine.home / "starts-agent"
    lines = 60
    job_id = cluster.submit("chaos-agent", starts, lines, node=node)
    cluster.wait_running(job_id)
    before = len(cluster.log_lines(job_id))
    os.kill(cluster.agent_pid(node), signal.SIGKILL)
    killed = time.monotonic()
    with contextlib.suppress(TimeoutError):  # it may be back before a poll sees it go
        result.detect_s = cluster.wait_nodes({node: "down"}, timeout=health.DEAD_AFTER_S + 10)
    cluster.wait_nodes({node: "up"})
    cluster.wait_job(job_id, lambda j: j["state"] in ENDED
                     or len(cluster.log_lines(job_id)) > before + 1)
    result.recover_s = time.monotonic() - killed
    job = cluster.wait_job(job_id, lambda j: j["state"] in ENDED)
    if job["state"] != "succeeded" or len(job["attempts"]) != 1:
        result.lost += 1
        result.problems.append(f"job {job_id} ended {job['state']} in "
                               f"{len(job['attempts'])} attempts")
    check_output(cluster, job_id, lines, result)
    check_starts(starts, result)
    result.left = len(wait_left(f"{job_id}.1"))
    return result


def crash_node(cluster: Cluster) -> FaultResult:
    result = FaultResult("node crash")
    starts = cluster.engine.home / "starts-crash"
    lines = 50
    job_id = cluster.submit("chaos-crash", starts, lines, retries=1)
    job = cluster.wait_running(job_id)
    victim = job["attempts"][0]["placements"][0]["node"]
    survivor = next(n for n in ("node1", "node2") if n != victim)
    cluster.hosts.crash(victim, cluster.roots / victim)
    crashed = time.monotonic()
    result.detect_s = cluster.wait_nodes({victim: "down"}, timeout=health.DEAD_AFTER_S + 10,
                                         since=crashed)
    job = cluster.wait_job(job_id, lambda j: j["state"] in ENDED or (
        len(j["attempts"]) > 1 and j["attempts"][-1]["state"] == "running"))
    result.recover_s = time.monotonic() - crashed
    job = cluster.wait_job(job_id, lambda j: j["state"] in ENDED)
    attempts = job["attempts"]
    if job["state"] != "succeeded" or [a["state"] for a in attempts] != ["lost", "succeeded"]:
        result.lost += 1
        result.problems.append(f"job {job_id} ended {job['state']}: "
                               f"{[(a['state'], a.get('reason')) for a in attempts]}")
    elif [p["node"] for p in attempts[1]["placements"]] != [survivor]:
        result.problems.append(f"job {job_id} retried on {attempts[1]['placements']}, "
                               f"not on {survivor}")
    check_output(cluster, job_id, lines, result, attempt=len(attempts))
    check_starts(starts, result)
    cluster.hosts.start_host(victim)  # it comes back: nothing of the lost attempt may run
    cluster.wait_nodes({victim: "up"})
    result.left = len(wait_left(f"{job_id}.1")) + len(wait_left(f"{job_id}.2"))
    return result


def freeze_link(cluster: Cluster, node: str = "node2") -> FaultResult:
    result = FaultResult("link frozen")
    starts = cluster.engine.home / "starts-freeze"
    frozen_s = health.DEAD_AFTER_S + 4.0  # longer than the engine's silence limit
    lines = int((frozen_s + 15.0) / INTERVAL_S)
    job_id = cluster.submit("chaos-freeze", starts, lines, node=node, retries=1)
    cluster.wait_running(job_id)
    session = cluster.hosts.hang(node, node)
    frozen = time.monotonic()
    try:
        cluster.wait_nodes({node: "suspect"}, timeout=health.DEAD_AFTER_S + 10)
        result.detect_s = cluster.wait_nodes({node: "down"}, timeout=health.DEAD_AFTER_S + 10,
                                             since=frozen)
        # the engine closes the silent channel and dials again: sshd answers
        # a new session while the old one is still frozen
        result.recover_s = cluster.wait_nodes({node: "up"})
        time.sleep(max(0.0, frozen + frozen_s - time.monotonic()))
    finally:
        cluster.hosts.resume(session)
    cluster.wait_nodes({node: "up"})  # the thawed old session ends; the node stays up
    job = cluster.wait_job(job_id, lambda j: j["state"] in ENDED)
    attempts = job["attempts"]
    lost = [a for a in attempts if a["state"] == "lost"]
    if job["state"] != "succeeded" or len(lost) > 1:
        result.lost += 1
        result.problems.append(f"job {job_id} ended {job['state']}: "
                               f"{[(a['state'], a.get('reason')) for a in attempts]}")
    check_output(cluster, job_id, lines, result, attempt=len(attempts))
    check_starts(starts, result)
    result.left = sum(len(wait_left(f"{job_id}.{a['number']}")) for a in attempts)
    return result


def kill_rank(cluster: Cluster) -> FaultResult:
    result = FaultResult("rank kill -9")
    starts = cluster.engine.home / "starts-rank"
    job_id = cluster.submit("chaos-ranks", starts, 10_000, launcher="horovodrun", nodes=2)
    attempt = f"{job_id}.1"
    deadline = time.monotonic() + END_TIMEOUT_S
    rank = None
    while rank is None:  # both ranks recorded their start
        launched = starts.read_text().splitlines() if starts.exists() else []
        if len(launched) >= 2:
            rank = _rank_pid(attempt, 1)
        if time.monotonic() > deadline or cluster.client.job(job_id)["state"] in ENDED:
            raise RuntimeError(f"the horovod job {job_id} never ran both ranks: "
                               f"{cluster.client.job(job_id)}")
        time.sleep(POLL_S)
    os.kill(rank, signal.SIGKILL)
    killed = time.monotonic()
    job = cluster.wait_job(job_id, lambda j: j["state"] in ENDED, timeout=UP_TIMEOUT_S)
    result.detect_s = time.monotonic() - killed
    if job["state"] != "failed":
        result.lost += 1
        result.problems.append(f"job {job_id} ended {job['state']}, not failed")
    check_starts(starts, result, per_attempt=2)  # one start per rank
    left = wait_left(attempt)
    result.left = len(left)
    if left:
        result.problems.append(f"left of {attempt}: {left[:3]}")
    return result


def _rank_pid(attempt: str, rank: int) -> int | None:
    """The crash job of `attempt` that horovodrun started as rank `rank`."""
    want = {f"LLMCONSOLE_ATTEMPT={attempt}".encode(), f"HOROVOD_RANK={rank}".encode()}
    for p in psutil.process_iter(["cmdline"]):
        if str(JOB_SCRIPT) not in " ".join(p.info["cmdline"] or ()):
            continue
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:
            continue
        if want <= env:
            return p.pid
    return None


FAULTS: tuple[Callable[[Cluster], FaultResult], ...] = (kill_agent, crash_node, freeze_link,
                                                         kill_rank)


def run(progress: Callable[[str], None] = lambda _: None) -> list[FaultResult]:
    """Every fault once, in order, on one cluster; a fault that could not be
    injected is a result with its problem, and the next one still runs."""
    results = []
    with Cluster.start() as cluster:
        for fault in FAULTS:
            began = time.monotonic()
            try:
                r = fault(cluster)
            except (RuntimeError, TimeoutError, OSError) as e:
                r = FaultResult(fault.__name__.replace("_", " "), problems=[str(e)])
            results.append(r)
            took = time.monotonic() - began
            progress(f"{r.kind}: detected in {_s(r.detect_s)}, recovered in "
                     f"{_s(r.recover_s)} ({took:.0f} s)"
                     + ("" if r.ok else ": " + "; ".join(r.problems)))
    return results


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    for r in run(progress=print):
        print(r)
