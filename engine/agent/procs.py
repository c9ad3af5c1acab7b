"""What an agent answers to `procs` (a job's Processes tab): every process
of the attempt on this node — those whose environment carries its markers
(LLMCONSOLE_ATTEMPT and the launching node's LLMCONSOLE_RUN_DIR), so the
ranks horovodrun started over SSH count too — with its rank, CPU share
(measured over CPU_WINDOW_S), resident memory, GPU memory (from the last
NVML sample) and state. Linux /proc through psutil."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil

from engine.agent import runs
from engine.agent.protocol import Procs, ProcsResult

CPU_WINDOW_S = 0.2  # psutil's CPU share needs two looks at the process
RANK_VARIABLES = ("HOROVOD_RANK", "RANK")


def _rank(proc: psutil.Process) -> int | None:
    try:
        env = proc.environ()
    except (psutil.Error, OSError):
        return None
    for name in RANK_VARIABLES:
        value = env.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def answer(cmd: Procs, gpus: list[dict[str, Any]]) -> ProcsResult:
    """`gpus`: the agent's last GPU sample (per GPU, its processes by pid)."""
    gpu_memory: dict[int, float] = {}
    for gpu in gpus:
        for p in gpu.get("processes") or []:
            if isinstance(p.get("pid"), int) and isinstance(p.get("used_memory_mb"), (int, float)):
                gpu_memory[p["pid"]] = gpu_memory.get(p["pid"], 0.0) + float(p["used_memory_mb"])
    procs = []
    for pid in runs.find_attempt_processes(cmd.attempt, Path(cmd.run_dir)):
        try:
            proc = psutil.Process(pid)
            proc.cpu_percent(None)
            procs.append(proc)
        except psutil.Error:
            continue
    time.sleep(CPU_WINDOW_S)
    out = []
    for proc in procs:
        try:
            with proc.oneshot():
                out.append({
                    "pid": proc.pid, "ppid": proc.ppid(), "name": proc.name(),
                    "rank": _rank(proc), "cpu_percent": round(proc.cpu_percent(None), 1),
                    "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                    "gpu_memory_mb": gpu_memory.get(proc.pid), "state": proc.status(),
                })
        except psutil.Error:
            continue  # it ended meanwhile
    return ProcsResult(cmd.id, tuple(sorted(out, key=lambda p: p["pid"])))
