"""The screen under load: 10,000 jobs and 64 nodes x 8 GPUs in the state,
telemetry from every node once a second. Headless (Textual's test driver
at 160x48), fed by a bridge that serves generated data, so it measures the
screen and not the engine.

- first full paint: from starting the app to the snapshot drawn;
- refresh tick: draining one second of telemetry (64 events, 512 GPUs) and
  repainting, less the same for a tick with nothing to drain (the test
  driver's own wait for a frame);
- idle CPU: the process's CPU time over 5 s of 1 Hz telemetry, as % of a core;
- resident memory after that;
- key to screen: moving the jobs cursor, key press to repaint, less the same
  for a key bound to nothing (the test driver's own cost, ~90 ms here).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import psutil

from bench.harness import Figure

JOBS, NODES, GPUS = 10_000, 64, 8


def _job(i: int, now: float) -> dict[str, Any]:
    return {"id": i, "name": f"job-{i}", "kind": "train",
            "state": "running" if i % 7 == 0 else "queued", "owner": "ann", "attempt": 1,
            "priority": 0, "submitted_at": now - i, "updated_at": now, "after": [],
            "reason": None, "exit_code": None, "placements": [], "profile": None,
            "resources": {"nodes": 1, "gpus_per_node": 1, "cpus": 1, "memory_gb": 0.0},
            "output": None}


def _node(n: int) -> dict[str, Any]:
    return {"name": f"node{n:02d}", "up": True, "slots": 64, "slots_used": 8, "jobs": [],
            "gpus": [{"index": g, "util_percent": 50.0, "memory_used_mb": 1000,
                      "memory_total_mb": 81920, "temperature_c": 50, "job": n * GPUS + g}
                     for g in range(GPUS)]}


def _telemetry(tick: int) -> list[dict[str, Any]]:
    return [{"type": "telemetry", "node": f"node{n:02d}", "cpu_percent": 10.0,
             "gpus": [{"index": g, "util_percent": float((tick * 7 + n + g) % 100),
                       "memory_used_mb": 1000 + tick} for g in range(GPUS)]}
            for n in range(NODES)]


def _bridge() -> Any:
    from console.bridge import FixedBridge, Snapshot

    now = time.time()
    return FixedBridge([Snapshot([_node(n) for n in range(NODES)],
                                 [_job(i, now) for i in range(1, JOBS + 1)])])


async def _measure() -> dict[str, float]:
    from console.app import LlmConsole

    bridge = _bridge()
    app = LlmConsole(bridge=bridge)
    started = time.perf_counter()
    out: dict[str, float] = {}
    async with app.run_test(size=(160, 48)) as pilot:
        app.drain()
        await pilot.pause()
        out["paint"] = time.perf_counter() - started
        async def tick_time(feed: bool) -> float:
            times = []
            for tick in range(7):
                bridge.items = _telemetry(tick) if feed else []
                t = time.perf_counter()
                app.drain()
                await pilot.pause()
                times.append(time.perf_counter() - t)
            return statistics.median(times)

        empty = await tick_time(False)
        out["tick"] = max(0.0, await tick_time(True) - empty)

        async def key_time(key: str) -> float:
            times = []
            for _ in range(11):
                t = time.perf_counter()
                await pilot.press(key)
                await pilot.pause()
                times.append(time.perf_counter() - t)
            return statistics.median(times)

        noop = await key_time("x")
        out["key"] = max(0.0, await key_time("down") - noop)
        proc = psutil.Process()
        before, t = proc.cpu_times(), time.perf_counter()
        for tick in range(5):
            bridge.items = _telemetry(100 + tick)
            await asyncio.sleep(1.0)
        after = proc.cpu_times()
        busy = (after.user + after.system) - (before.user + before.system)
        out["cpu"] = 100 * busy / (time.perf_counter() - t)
        out["rss"] = proc.memory_info().rss / 2**20
    return out


def run() -> list[Figure]:
    m = asyncio.run(_measure())
    where = f"{JOBS:,} jobs, {NODES}x{GPUS} GPUs"
    return [
        Figure(f"screen: first full paint ({where})", m["paint"] * 1000, "ms", 1000, False),
        Figure("screen: refresh tick, 1 s of telemetry", m["tick"] * 1000, "ms", 50, False),
        Figure("screen: CPU while idle with live telemetry", m["cpu"], "% core", 5, False),
        Figure("screen: resident memory", m["rss"], "MB", 250, False),
        Figure("screen: key to screen, jobs cursor", m["key"] * 1000, "ms", 50, False),
    ]


if __name__ == "__main__":
    from bench.harness import table

    print(table(run()))
