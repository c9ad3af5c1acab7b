"""Engine benchmarks through the real daemon and the API client: submit
throughput, quiet and with the engine busy (100 running jobs streaming
1,000 log lines a second in all), and submit-to-process-start latency of a
trivial job on the local node."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import Figure
from engine.client import EngineClient
from engine.errors import Unavailable

REPO = Path(__file__).resolve().parents[1]


def _spec(name: str, argv: list[str]) -> dict[str, object]:
    return {"name": name, "kind": "command", "argv": argv, "launcher": "local",
            "resources": {"nodes": 1, "gpus_per_node": 0, "cpus": 1, "memory_gb": 0.0},
            "env": {}, "retries": 0, "priority": 0, "workdir": None, "profile": "bench"}


class Daemon:
    """An engine of its own in a temporary home; `cluster_toml`, the text of
    a cluster profile (default: the head node alone)."""

    def __init__(self, cluster_toml: str | None = None) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="llcb-", dir="/tmp"))
        env = {**os.environ, "LLMCONSOLE_HOME": str(self.home), "PYTHONPATH": str(REPO)}
        env.pop("LLMCONSOLE_SOCKET", None)
        env.pop("LLMCONSOLE_CLUSTER", None)
        argv = [sys.executable, "-m", "engine", "engine", "serve"]
        if cluster_toml is not None:
            (self.home / "bench-cluster.toml").write_text(cluster_toml)
            argv += ["--cluster", str(self.home / "bench-cluster.toml")]
        self.proc = subprocess.Popen(argv,
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(self.home / "serve.log", "wb"))  # noqa: SIM115
        self.client = EngineClient(self.home / "engine.sock")
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.health()
                break
            except Unavailable:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("bench engine did not start") from None
                time.sleep(0.05)

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        marker = str(self.home).encode()
        for pid_dir in Path("/proc").iterdir():
            if pid_dir.name.isdigit():
                try:
                    if marker in (pid_dir / "environ").read_bytes():
                        os.kill(int(pid_dir.name), 9)
                except OSError:
                    pass
        shutil.rmtree(self.home, ignore_errors=True)


def submit_rate(count: int = 10_000, batch: int = 1, rounds: int = 4) -> Figure:
    """Jobs submitted per second, held behind a job that never ends: this
    measures the API and the store, not how fast 10,000 processes start.
    The jobs go in `rounds` equal rounds on one engine; the figure is the
    median round and every round is printed, because on this shared VM
    runs of the same code differ by up to 40 % for reasons outside it."""
    daemon = Daemon()
    rates = []
    try:
        client = daemon.client
        gate = client.submit(_spec("gate", ["sleep", "600"]))
        spec = _spec("bench", ["true"])
        items = [(spec, [gate["id"]])] * batch
        per_round = count // rounds
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(per_round // batch):
                if batch == 1:
                    client.submit(spec, after=[gate["id"]])
                else:
                    client.submit_many(items)
            rates.append(per_round / (time.perf_counter() - start))
        held = client.jobs(states=["held"])
        if len(held) != per_round * rounds:
            raise RuntimeError(f"submitted {per_round * rounds}, engine holds {len(held)}")
    finally:
        daemon.close()
    how = "one request each" if batch == 1 else f"batches of {batch}"
    print(f"  submits, {how}: rounds of {per_round:,} at "
          + ", ".join(f"{r:,.0f}" for r in rates) + " jobs/s", file=sys.stderr)
    return Figure(f"API submits, {how} ({count:,} jobs, median of {rounds} rounds)",
                  statistics.median(rates), "jobs/s", 1000.0, True)


# 100 jobs of 10 short lines a second each: 1,000 lines/s into the engine.
# While the file PAUSE (argv[1]) exists they print nothing (and keep waking).
BUSY_JOBS = 100
BUSY_LINES_PER_S = 10
_TALKER = ("import os, sys, time\n"
           "n = 0\n"
           "while True:\n"
           f"    time.sleep({1 / BUSY_LINES_PER_S})\n"
           "    if os.path.exists(sys.argv[1]):\n"
           "        continue\n"
           "    n += 1\n"
           "    sys.stdout.write(f'step {n} loss 2.{n % 97:02d}\\n')\n"
           "    sys.stdout.flush()\n")
_BUSY_CLUSTER = f"""kind = "cluster"
description = "the head node, with a slot for each of {BUSY_JOBS} busy jobs and the gate"

[[nodes]]
name = "local"
slots = {BUSY_JOBS + 8}
"""


def _single_submits(client: EngineClient, gate: int, seconds: float) -> float:
    """Single submits per second, held behind `gate`, for `seconds`."""
    spec = _spec("bench", ["true"])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            client.submit(spec, after=[gate])
        count += 50
    return count / (time.perf_counter() - start)


def busy_submit_rate(seconds: float = 5.0, rounds: int = 3) -> list[Figure]:
    """Single API submits per second on one engine: idle (no job running),
    then with `BUSY_JOBS` jobs running, in rounds that alternate between
    the jobs printing `BUSY_LINES_PER_S` short lines a second each (busy:
    their logs go through the agent, ingest, the log copies and the event
    hub) and the same jobs silent (paused: what the stream itself costs, on a
    VM whose load drifts between rounds). The figures are medians; the ratio
    is busy over idle (target >= 0.5)."""
    daemon = Daemon(_BUSY_CLUSTER)
    pause = daemon.home / "pause"
    try:
        client = daemon.client
        gate = client.submit(_spec("gate", ["sleep", "600"]))["id"]
        idle = [_single_submits(client, gate, seconds) for _ in range(rounds)]
        talkers = [client.submit(_spec(f"talker-{i}", [sys.executable, "-c", _TALKER,
                                                       str(pause)]))["id"]
                   for i in range(BUSY_JOBS)]
        deadline = time.monotonic() + 120
        while len(client.jobs(states=["running"])) < BUSY_JOBS + 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the busy jobs did not all start within 120 s")
            time.sleep(0.2)
        time.sleep(2.0)  # every talker past its start-up, printing
        busy, paused, per_job = [], [], []
        for _ in range(rounds):
            pause.unlink(missing_ok=True)
            time.sleep(0.3)
            lines, started = _log_lines(client, talkers[0]), time.perf_counter()
            busy.append(_single_submits(client, gate, seconds))
            per_job.append((_log_lines(client, talkers[0]) - lines)
                           / (time.perf_counter() - started))
            pause.touch()
            time.sleep(0.3)
            paused.append(_single_submits(client, gate, seconds))
        still = len(client.jobs(states=["running"]))
        if still < BUSY_JOBS + 1:
            raise RuntimeError(f"only {still - 1} of the {BUSY_JOBS} busy jobs kept running")
    finally:
        daemon.close()
    i, b, p = statistics.median(idle), statistics.median(busy), statistics.median(paused)

    def rates(rs: list[float]) -> str:
        return ", ".join(f"{r:,.0f}" for r in rs)

    print(f"  single submits: idle {rates(idle)}; busy {rates(busy)}; the same jobs silent "
          f"{rates(paused)} jobs/s ({BUSY_JOBS} jobs, {statistics.median(per_job):.1f} "
          f"lines/s each reached the engine while busy; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", file=sys.stderr)
    return [Figure("API single submits, idle engine (median round)", i, "jobs/s", 500.0, True),
            Figure(f"API single submits, {BUSY_JOBS} jobs streaming "
                   f"{BUSY_JOBS * BUSY_LINES_PER_S:,} lines/s (median round)", b, "jobs/s",
                   i / 2, True),
            Figure(f"API single submits, the same {BUSY_JOBS} jobs silent (median round)", p,
                   "jobs/s", i / 2, True),
            Figure("API single submits, busy / idle", b / i, "ratio", 0.5, True)]


def _log_lines(client: EngineClient, job_id: int) -> int:
    """How many lines of the job's log the engine holds."""
    return sum(1 for _ in client.logs(job_id).raw())


def start_latency(runs: int = 30) -> Figure:
    daemon = Daemon()
    try:
        client = daemon.client
        samples = []
        spec = _spec("probe", ["date", "+%s.%N"])
        for _ in range(runs):
            t0 = time.time()
            job = client.submit(spec)
            lines = list(client.logs(job["id"], follow=True))
            samples.append((float(lines[0]) - t0) * 1000)
    finally:
        daemon.close()
    return Figure("submit to process start, trivial job, local node (median)",
                  statistics.median(samples), "ms", 250.0, False)


def run() -> list[Figure]:
    return [submit_rate(), submit_rate(batch=100), *busy_submit_rate(), start_latency()]


if __name__ == "__main__":
    from bench.harness import table

    print(table(run()))
