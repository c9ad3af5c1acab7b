"""The engine-crash campaign: a real daemon is killed with SIGKILL at seeded
random moments while jobs are held, queued, starting and running, and
restarted each time; at the end nothing may be lost or launched twice, and
every job's logs and metrics must hold each line and step exactly once.

`run(seed, jobs, kills)` returns a `CrashResult`. The run, given a seed:

- An engine in a throw-away home (`chaos.engine_handle`) over a head node
  of `SLOTS` CPU slots. One *holder* job runs longest; about a quarter of
  the others wait for it (`after`: held until it succeeds), the rest ask
  for 1 or 2 CPUs, so the slots fill and the rest queue.
- Every job is `chaos/crash_job.py`: it records "start <job> <attempt>
  <pid>" in a shared starts file, then prints `lines` numbered lines and
  writes as many numbered metric steps, `interval` seconds apart.
- Submits are spread over a short span; the kills fall at seeded moments
  among the submits and while the jobs run. After each kill the daemon is
  started again (`engine serve`, as `engine start` runs it) and the time
  from that restart to the API answering (`GET /v1/health`) is kept.
- Once every job has ended: each submitted job exists and succeeded in one
  attempt (else it counts as lost), each (job, attempt) started once
  (`duplicates`: starts beyond the first), the engine's copy of each job's
  output has "line <job> k" for k = 1..lines once and in order, its stored
  metrics each step once (`gaps`: numbers missing, `repeats`: numbers seen
  again or out of order, for logs and metrics apart), and no process of
  the job script is left (`leftovers`).

Only this machine is involved: a Unix socket and local processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from chaos.engine_handle import EngineHandle, kill_marked, new_engine
from engine.client import EngineClient
from engine.errors import EngineError
from engine.model import JobSpec, Resources

JOB_SCRIPT = Path(__file__).with_name("crash_job.py")
SLOTS = 6  # CPU slots of the campaign's head node: cheap sleepers, many at once
ENDED = frozenset({"succeeded", "failed", "cancelled", "lost"})
ANSWER_TIMEOUT_S = 60.0  # a restarted daemon answering, on a loaded 2-core machine
EXIT_TIMEOUT_S = 10.0  # a SIGKILLed daemon is gone well within this
POLL_S = 0.02  # how often a restarted daemon is asked whether it answers


@dataclass
class CrashResult:
    """What one campaign saw; every count but `jobs` and `kills` has target 0."""

    seed: int
    jobs: int
    kills: int
    lost: list[int] = field(default_factory=list)  # job ids missing or not succeeded once
    duplicates: int = 0  # launches of a (job, attempt) beyond its first
    log_gaps: int = 0
    log_repeats: int = 0
    metric_gaps: int = 0
    metric_repeats: int = 0
    leftovers: list[int] = field(default_factory=list)  # pids of the job script still alive
    restart_s: list[float] = field(default_factory=list)  # restart -> API answering, per kill
    states_at_kills: Counter[str] = field(default_factory=Counter)  # job states when killed
    problems: list[str] = field(default_factory=list)  # one line per job that went wrong
    wall_s: float = 0.0

    @property
    def faults(self) -> dict[str, int]:
        return {"engine kill -9": self.kills}

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.log_gaps or self.log_repeats
                    or self.metric_gaps or self.metric_repeats or self.leftovers)


# ------------------------------------------------------------------ pure checks
def count_starts(lines: Iterable[str]) -> Counter[tuple[int, int]]:
    """(job, attempt) -> how many times the starts file says it started."""
    seen: Counter[tuple[int, int]] = Counter()
    for line in lines:
        words = line.split()
        if len(words) == 4 and words[0] == "start":
            seen[(int(words[1]), int(words[2]))] += 1
    return seen


def sequence_faults(numbers: Sequence[int], last: int) -> tuple[int, int]:
    """(gaps, repeats) of `numbers` against 1..last once each, in order:
    gaps are the numbers never seen, repeats every number seen again or
    arriving out of order."""
    gaps = len(set(range(1, last + 1)) - set(numbers))
    repeats = sum(1 for i, n in enumerate(numbers) if i and n <= numbers[i - 1])
    return gaps, repeats


def numbered_lines(lines: Iterable[str], job: int) -> list[int]:
    """The k of each "line <job> <k>" of a job's output, in order."""
    prefix = f"line {job} "
    return [int(line[len(prefix):]) for line in lines if line.startswith(prefix)]


def plan(rng: random.Random, jobs: int, kills: int, submit_span_s: float,
         horizon_s: float) -> list[tuple[float, str, int]]:
    """The timeline: (seconds from start, "submit"|"kill", index), sorted.
    Submits are spread over `submit_span_s`; a third of the kills fall
    among them, the rest while the jobs run, up to `horizon_s`."""
    events = [(rng.uniform(0.0, submit_span_s), "submit", i) for i in range(jobs)]
    events.sort()
    events = [(t if i else 0.0, kind, i) for t, kind, i in events]  # the holder goes first
    during = kills // 3
    events += [(rng.uniform(0.1, submit_span_s), "kill", k) for k in range(during)]
    events += [(rng.uniform(submit_span_s, horizon_s), "kill", k)
               for k in range(during, kills)]
    return sorted(events, key=lambda e: (e[0], e[1] == "kill"))


# ------------------------------------------------------------------- mechanism
class CrashingEngine:
    """An engine daemon this process starts, kills with SIGKILL and starts
    again, measuring each restart until the API answers."""

    def __init__(self, handle: EngineHandle, cluster: Path) -> None:
        self.handle = handle
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: EngineClient | None = None

    @property
    def socket(self) -> Path:
        return self.handle.home / "engine.sock"

    def start(self) -> float:
        """Start the daemon; return the seconds until it answered."""
        begun = time.monotonic()
        self.proc = self.handle.spawn("--cluster", str(self.cluster))
        deadline = begun + ANSWER_TIMEOUT_S
        while True:
            client = EngineClient(self.socket, timeout=10)
            try:
                client.health()
            except (EngineError, OSError):
                client.close()
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = (self.handle.home / "engine.log").read_text(errors="replace")
                    raise RuntimeError(f"the engine did not answer after a restart "
                                       f"(exit {self.proc.poll()}): {tail[-2000:]}") from None
                time.sleep(POLL_S)
                continue
            self.client = client
            return time.monotonic() - begun

    def kill(self) -> None:
        """SIGKILL the daemon and reap it: no clean shutdown of any kind."""
        assert self.proc is not None
        if self.client is not None:
            self.client.close()
            self.client = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(EXIT_TIMEOUT_S)

    @property
    def api(self) -> EngineClient:
        """The client of the daemon now running (a new one after each restart)."""
        if self.client is None:
            raise RuntimeError("the engine is not running")
        return self.client


def _spec(index: int, starts: Path, lines: int, interval: float, cpus: int) -> dict[str, Any]:
    argv = (sys.executable, "-u", str(JOB_SCRIPT), str(starts), str(lines), str(interval))
    return JobSpec(name=f"chaos-{index}", kind="command", argv=argv,
                   resources=Resources(cpus=cpus)).to_dict()


def _job_script_pids(marker: str) -> list[int]:
    """Live processes (not zombies) of the job script run with `marker`."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(p.info["cmdline"] or ())
        if (str(JOB_SCRIPT) in cmd and marker in cmd
                and p.info["status"] != psutil.STATUS_ZOMBIE):
            found.append(p.pid)
    return found


def run(seed: int = 13, jobs: int = 20, kills: int = 3, lines: int = 20,
        interval: float = 0.15, submit_span_s: float = 3.0, horizon_s: float | None = None,
        end_timeout_s: float = 300.0, progress: Callable[[str], None] = lambda _: None
        ) -> CrashResult:
    """One seeded campaign (see the module docstring); the engine, its home
    and every process it started are gone when it returns."""
    rng = random.Random(seed)
    if horizon_s is None:  # roughly while the last jobs still run
        horizon_s = submit_span_s + max(4.0, jobs * 1.5 / SLOTS * lines * interval)
    result = CrashResult(seed=seed, jobs=jobs, kills=kills)
    began = time.monotonic()
    handle = new_engine()
    starts = handle.home / "starts"
    cluster = handle.home / "cluster.toml"
    cluster.write_text(f'kind = "cluster"\nname = "chaos"\n\n[[nodes]]\nname = "head"\n'
                       f"slots = {SLOTS}\n")
    engine = CrashingEngine(handle, cluster)
    ids: list[int] = []
    try:
        engine.start()
        for at, kind, index in plan(rng, jobs, kills, submit_span_s, horizon_s):
            time.sleep(max(0.0, at - (time.monotonic() - began)))
            if kind == "submit":
                held = index > 0 and rng.random() < 0.25
                length = lines * 3 if index == 0 else lines  # the holder runs longest
                spec = _spec(index, starts, length, interval, cpus=rng.choice((1, 1, 2)))
                job = engine.api.submit(spec, after=[ids[0]] if held else [])
                ids.append(int(job["id"]))
                continue
            now = engine.api.jobs(states=["held", "queued", "starting", "running"])
            result.states_at_kills.update(j["state"] for j in now)
            engine.kill()
            result.restart_s.append(engine.start())
            progress(f"kill {len(result.restart_s)}/{kills} at {at:.1f} s "
                     f"({len(ids)} submitted, {len(now)} active): "
                     f"answering again after {result.restart_s[-1]:.2f} s")
        _wait_ended(engine, ids, end_timeout_s, progress)
        _check(engine, ids, starts, lines, result)
        result.leftovers = _job_script_pids(str(starts))
    finally:
        handle.close()
        kill_marked(str(handle.home))
        shutil.rmtree(handle.home, ignore_errors=True)
    result.wall_s = time.monotonic() - began
    return result


def _wait_ended(engine: CrashingEngine, ids: list[int], timeout: float,
                progress: Callable[[str], None]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = Counter(j["state"] for j in engine.api.jobs()
                         if j["id"] in set(ids))
        if sum(n for s, n in states.items() if s in ENDED) >= len(ids):
            return
        time.sleep(0.5)
    progress(f"not every job ended within {timeout:g} s: {dict(states)}")


def _check(engine: CrashingEngine, ids: list[int], starts: Path, lines: int,
           result: CrashResult) -> None:
    launched = count_starts(starts.read_text().splitlines() if starts.exists() else [])
    result.duplicates = sum(n - 1 for n in launched.values() if n > 1)
    for key, n in sorted(launched.items()):
        if n > 1:
            result.problems.append(f"job {key[0]} attempt {key[1]} started {n} times")
    settle = time.monotonic() + 10.0  # metric points reach the store in a flush
    for index, job_id in enumerate(ids):
        last = lines * 3 if index == 0 else lines
        try:
            job = engine.api.job(job_id)
        except EngineError as e:
            result.lost.append(job_id)
            result.problems.append(f"job {job_id}: {e}")
            continue
        if job["state"] != "succeeded" or len(job.get("attempts") or ()) != 1:
            result.lost.append(job_id)
            result.problems.append(f"job {job_id} ended {job['state']} after "
                                   f"{len(job.get('attempts') or ())} attempts")
        if not launched.get((job_id, 1)):
            result.problems.append(f"job {job_id} never recorded its start")
        found = output_faults(engine.api, job_id, last, settle)
        result.log_gaps += found.log_gaps
        result.log_repeats += found.log_repeats
        result.metric_gaps += found.metric_gaps
        result.metric_repeats += found.metric_repeats
        if found.total:
            result.problems.append(f"job {job_id}: {found}")


@dataclass(frozen=True)
class OutputFaults:
    """What is wrong with one attempt's stored output and loss steps."""

    log_gaps: int
    log_repeats: int
    metric_gaps: int
    metric_repeats: int

    @property
    def total(self) -> int:
        return self.log_gaps + self.log_repeats + self.metric_gaps + self.metric_repeats

    def __str__(self) -> str:
        return (f"log {self.log_gaps} missing, {self.log_repeats} repeated or out of order; "
                f"metrics {self.metric_gaps} missing, {self.metric_repeats} repeated or out "
                f"of order")


def output_faults(client: EngineClient, job_id: int, last: int, settle_until: float,
                  attempt: int | None = None) -> OutputFaults:
    """Check the engine's copy of a crash job's output ("line <job> k") and
    its stored loss steps against 1..last, once each and in order. Metric
    points reach the store in a flush: fewer than `last` are asked for again
    until the monotonic time `settle_until`."""
    out = numbered_lines(list(client.logs(job_id, attempt=attempt)), job_id)
    log_gaps, log_repeats = sequence_faults(out, last)
    while True:
        steps = [int(p["step"]) for p in client.metrics(job_id, attempt=attempt,
                                                        names=["loss"])]
        if len(steps) >= last or time.monotonic() > settle_until:
            break
        time.sleep(0.2)
    return OutputFaults(log_gaps, log_repeats, *sequence_faults(steps, last))


def main() -> int:
    """`python -m chaos.engine_crash [SEED]`: one small campaign, as JSON."""
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 13
    r = run(seed, progress=print)
    print(json.dumps({**{k: v for k, v in vars(r).items()}, "ok": r.ok}, default=str,
                     indent=1))
    return 0 if r.ok else 1


if __name__ == "__main__":
    sys.exit(main())
