"""Engine benchmarks through the real daemon and the API client: submit
throughput, and submit-to-process-start latency of a trivial job on the
local node."""

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
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="llcb-", dir="/tmp"))
        env = {**os.environ, "LLMCONSOLE_HOME": str(self.home), "PYTHONPATH": str(REPO)}
        env.pop("LLMCONSOLE_SOCKET", None)
        env.pop("LLMCONSOLE_CLUSTER", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "engine", "engine", "serve"],
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
    return [submit_rate(), submit_rate(batch=100), start_latency()]


if __name__ == "__main__":
    from bench.harness import table

    print(table(run()))
