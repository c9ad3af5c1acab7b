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
  for a key bound to nothing (the test driver's own cost, ~90 ms here);
- charts streaming: a running job's detail on its Charts tab (2,000 points
  of history) while its metrics stream at 20 steps a second, each with 4
  values (loss, held-out loss, lr, tokens/s): the process's CPU over 10 s,
  as % of a core;
- compare redraw: the compare overlay of 8 runs of 10,000 points each, the
  median time of a redraw and its paint (less an empty frame), after a data
  change and after toggling x (step/time) or the smoothing.
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


STREAM_RATE, STREAM_SECONDS, HISTORY = 20, 10.0, 2000
RUNS, RUN_POINTS = 8, 10_000


def _metric(job: int, step: int, when: float) -> dict[str, Any]:
    values = {"loss": 4.0 / (1 + step / 500), "lr": 1e-3, "tokens_per_s": 5000.0 + step % 50}
    if step % 10 == 0:
        values["eval_loss"] = 4.2 / (1 + step / 500)
    return {"type": "metric", "job": job, "attempt": 1, "step": step, "values": values,
            "time": when}


def _points(job: int, count: int, start: float) -> list[dict[str, Any]]:
    """A job's metric history as the API lists it: one point per value."""
    return [{"job": job, "attempt": 1, "step": e["step"], "name": name, "value": value,
             "time": e["time"]}
            for e in (_metric(job, s, start + s * 0.5) for s in range(1, count + 1))
            for name, value in e["values"].items()]


async def _measure_charts() -> float:
    """% of a core over STREAM_SECONDS with the Charts tab open while streaming."""
    from console.app import LlmConsole
    from console.bridge import FixedBridge, Snapshot

    now = time.time()
    job = {**_job(1, now), "state": "running"}
    bridge = FixedBridge([Snapshot([_node(0)], [job])], details={1: job},
                         metrics={1: _points(1, HISTORY, now - HISTORY)})
    app = LlmConsole(bridge=bridge)
    async with app.run_test(size=(160, 48)) as pilot:
        app.drain()
        await pilot.pause()
        await pilot.press("d")
        await pilot.pause()
        await pilot.press("2")
        await pilot.pause(0.5)  # the backfill fetched and drawn
        proc = psutil.Process()
        before, t = proc.cpu_times(), time.perf_counter()
        step = HISTORY
        while time.perf_counter() - t < STREAM_SECONDS:
            step += 1
            bridge.items.append(_metric(1, step, time.time()))
            await asyncio.sleep(1 / STREAM_RATE)
        after = proc.cpu_times()
        busy = (after.user + after.system) - (before.user + before.system)
        cpu = 100 * busy / (time.perf_counter() - t)
        app.drain()  # what came after the last drain of the timer
        series = app.state.series[1]
        assert series.step == step, "the streamed points did not reach the screen"
    return cpu


async def _measure_compare() -> dict[str, float]:
    """Median redraw (and paint) of the compare overlay, after a data change
    and after a view change (x axis, smoothing)."""
    from console.app import LlmConsole
    from console.bridge import FixedBridge, Snapshot
    from console.compare import CompareScreen, curves

    now = time.time()
    jobs = [{**_job(i, now), "state": "succeeded"} for i in range(1, RUNS + 1)]
    points = {i: _points(i, RUN_POINTS, now - 3600 + i) for i in range(1, RUNS + 1)}
    bridge = FixedBridge([Snapshot([_node(0)], jobs)], metrics=points)
    app = LlmConsole(bridge=bridge)
    out: dict[str, float] = {}
    async with app.run_test(size=(160, 48)) as pilot:
        app.drain()
        await pilot.pause()
        screen = CompareScreen(jobs, bridge.metrics)
        await app.push_screen(screen)
        while len(screen.runs) < RUNS:
            await pilot.pause(0.1)
        await pilot.pause()

        async def timed(change: Any, times: int = 7) -> float:
            spent = []
            for _ in range(times):
                t = time.perf_counter()
                change()
                await pilot.pause()
                spent.append(time.perf_counter() - t)
            return statistics.median(spent)

        empty = await timed(lambda: None)

        fresh = iter([(1 + k % RUNS, curves(_points(1 + k % RUNS, RUN_POINTS + k,
                                                    now - 3600 + 1 + k % RUNS)))
                      for k in range(7)])

        def new_data() -> None:  # one run's points fetched again, one point longer
            screen._loaded(*next(fresh), "")

        out["data"] = max(0.0, await timed(new_data) - empty)
        out["x"] = max(0.0, await timed(screen.action_toggle_x) - empty)
        out["smoothing"] = max(0.0, await timed(
            lambda: screen.action_smoothing(1 if screen.view.smoothing < 0.9 else -1)) - empty)
    return out


def run() -> list[Figure]:
    m = asyncio.run(_measure())
    charts = asyncio.run(_measure_charts())
    overlay = asyncio.run(_measure_compare())
    runs = f"{RUNS} runs x {RUN_POINTS:,} points"
    where = f"{JOBS:,} jobs, {NODES}x{GPUS} GPUs"
    return [
        Figure(f"screen: first full paint ({where})", m["paint"] * 1000, "ms", 1000, False),
        Figure("screen: refresh tick, 1 s of telemetry", m["tick"] * 1000, "ms", 50, False),
        Figure("screen: CPU while idle with live telemetry", m["cpu"], "% core", 5, False),
        Figure("screen: resident memory", m["rss"], "MB", 250, False),
        Figure("screen: key to screen, jobs cursor", m["key"] * 1000, "ms", 50, False),
        Figure(f"screen: CPU, Charts tab open, metrics streaming ({STREAM_RATE} steps/s x 4)",
               charts, "% core", 5, False),
        Figure(f"screen: compare overlay redraw after new data ({runs})",
               overlay["data"] * 1000, "ms", 50, False),
        Figure("screen: compare overlay redraw after toggling x (step/time)",
               overlay["x"] * 1000, "ms", 50, False),
        Figure("screen: compare overlay redraw after changing the smoothing",
               overlay["smoothing"] * 1000, "ms", 50, False),
    ]


if __name__ == "__main__":
    from bench.harness import table

    print(table(run()))
