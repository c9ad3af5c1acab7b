"""How fast the `llmconsole` command is, one process per call, against a
running engine: `submit` of a command profile (hello, with an empty spec
cache and a warm one) and of a workload (pretrain-tiny, warm), `jobs`,
`cancel` (returning once the engine has told the job to stop) and
`cancel --wait` (to the end of the job's process), each the median of 20
calls, next to the floor, `python -c pass` in the same interpreter, and the
import time of engine.cli. The target is 60 ms a call on an idle machine
(Slurm on the same VM: sbatch 5.5 ms, scancel 11 ms). This VM is shared:
the load average is printed with the figures, and so is the CPU time each
call took (user + system), which the load inflates far less than the wall
time. The calls may write bytecode (PYTHONDONTWRITEBYTECODE is dropped
from their environment, as an installed llmconsole has its .pyc files):
without it every call compiles the engine's modules again, which is most of
a call."""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.engine_api import REPO, Daemon, _spec
from bench.harness import Figure

CALLS = 20
TARGET_MS = 60.0


def _command() -> list[str]:
    """The console script users run, else `python -m engine`."""
    script = Path(sys.executable).parent / "llmconsole"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "engine"]


def _timed(argv: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU milliseconds of one call; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True)
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: "
                           f"{done.stderr.decode(errors='replace').strip()}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


def _series(name: str, call: Callable[[int], tuple[float, float]]) -> Figure:
    samples = [call(i) for i in range(CALLS)]
    wall = statistics.median(s[0] for s in samples)
    cpu = statistics.median(s[1] for s in samples)
    print(f"  {name}: median {wall:.1f} ms wall, {cpu:.1f} ms CPU "
          f"(min {min(s[0] for s in samples):.1f} ms wall)", file=sys.stderr)
    return Figure(f"CLI {name} (median of {CALLS} calls)", wall, "ms", TARGET_MS, False)


def _import_ms(env: dict[str, str]) -> float:
    """engine.cli's cumulative import time (-X importtime), median of 5."""
    times = []
    for _ in range(5):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import engine.cli"],
                             env=env, cwd=REPO, capture_output=True, text=True).stderr
        m = re.search(r"\|\s*(\d+) \| engine\.cli$", err, re.MULTILINE)
        if m is None:
            raise RuntimeError(f"no import time for engine.cli in: {err[-500:]}")
        times.append(int(m.group(1)) / 1000)
    return statistics.median(times)


def _wait_state(daemon: Daemon, job_id: int, states: Sequence[str], timeout: float = 30.0
                ) -> None:
    deadline = time.monotonic() + timeout
    while daemon.client.job(job_id)["state"] not in states:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} never reached {', '.join(states)}")
        time.sleep(0.01)


def run() -> list[Figure]:
    daemon = Daemon()
    caches = Path(tempfile.mkdtemp(prefix="llcs-", dir="/tmp"))
    env = {**os.environ, "LLMCONSOLE_HOME": str(daemon.home), "PYTHONPATH": str(REPO),
           "XDG_CACHE_HOME": str(caches / "warm")}
    for name in ("LLMCONSOLE_SOCKET", "LLMCONSOLE_CLUSTER", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    cli = _command()
    figures = []
    try:
        print(f"  load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
              f"calls run {' '.join(cli)}", file=sys.stderr)
        figures.append(_series("floor: python -c pass",
                               lambda _i: _timed([sys.executable, "-c", "pass"], env)))
        figures.append(Figure("import engine.cli (-X importtime, median of 5)",
                              _import_ms(env), "ms", TARGET_MS / 2, False))
        gate = daemon.client.submit(_spec("gate", ["sleep", "600"]))["id"]
        submit = [*cli, "submit", "hello", "--after", str(gate)]

        def cold(i: int) -> tuple[float, float]:
            return _timed(submit, {**env, "XDG_CACHE_HOME": str(caches / f"cold{i}")})

        figures.append(_series("submit, empty spec cache", cold))
        _timed(submit, env)  # fills the warm cache
        figures.append(_series("submit, warm spec cache", lambda _i: _timed(submit, env)))
        # a workload's output folder is made at each submit: its payload is not kept,
        # its validated spec is (engine.model and pipelines are imported, not pydantic)
        train = [*cli, "submit", "pretrain-tiny", "--after", str(gate)]
        _timed(train, env)
        figures.append(_series("submit of a workload (pretrain-tiny), warm spec cache",
                               lambda _i: _timed(train, env)))
        figures.append(_series("jobs", lambda _i: _timed([*cli, "jobs"], env)))
        spec = _spec("victim", ["sleep", "600"])

        def cancel(wait: bool) -> Callable[[int], tuple[float, float]]:
            def one(_i: int) -> tuple[float, float]:
                job = daemon.client.submit(spec)["id"]
                _wait_state(daemon, job, ("running",))
                took = _timed([*cli, "cancel", str(job), *(["--wait"] if wait else [])], env)
                _wait_state(daemon, job, ("cancelled",))
                return took
            return one

        figures.append(_series("cancel (returns once the stop is sent)", cancel(False)))
        figures.append(_series("cancel --wait (to the process's end)", cancel(True)))
    finally:
        daemon.close()
        subprocess.run(["rm", "-rf", str(caches)], check=False)
    return figures


if __name__ == "__main__":
    from bench.harness import table

    print(table(run()))
