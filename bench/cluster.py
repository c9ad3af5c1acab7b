"""Cluster benchmarks: what telemetry costs on a node and in the engine, and
the round trip to a node's agent.

- agent CPU at 1 Hz telemetry, local: a real `python -m engine.agent` on a
  LocalAgentChannel, idle but for its 1 Hz telemetry (psutil, and NVML when
  the machine has it); its process's CPU time over AGENT_WINDOW_S, as % of
  one core. Target: under 1 %.
- engine ingest of 64 nodes x 8 GPUs at 1 Hz: the real Runtime (store,
  ingest, event hub, node loops, heartbeats) driven by 64 simulated agent
  channels, each sending a telemetry line a second (8 GPUs with power and
  a process each, as engine.agent.telemetry reports them), their phases
  spread over the second, parsed from JSON text as the subprocess channel
  does. Reported: this process's CPU over INGEST_WINDOW_S as % of one core
  (the simulated channels' own timers included, so an upper bound; target
  under 5 %), and the time from a sample's emission (its "time") to its
  arrival at an EventHub subscriber, median and 99th percentile (target
  under 200 ms).
- warm round trip, local channel: ping -> pong on the agent above, once
  its channel is up; the median of RTT_PINGS. (The SSH variant is another
  row, from the SSH transport's benchmark.) Target: under 50 ms.
- telemetry prune, a minute of 64 nodes: Store.prune_telemetry dropping the
  full-rate samples of one minute (3,840 rows) that left the full-rate
  window, from a store holding PRUNE_HELD_MIN minutes. The engine's loop
  waits for it, so its target is the event stream's, 200 ms; an hour's
  worth at once costs about 60 times as much.

Run as `python -m bench.cluster` to print the figures; about a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

from bench.harness import Figure, machine, table
from engine.agent.protocol import VERSION, Command, Simple
from engine.model import ClusterSpec, NodeSpec
from engine.runtime import Runtime
from engine.store import Store, TelemetryRow
from engine.store.db import TELEMETRY_FULL_RATE_S
from engine.transport.local import LocalAgentChannel
from engine.versions import software_versions

NODES, GPUS = 64, 8
INTERVAL_S = 1.0  # telemetry rate of every agent, as the engine runs them
AGENT_WARMUP_S = 3.0  # the agent's start-up (imports, first NVML call) is not measured
AGENT_WINDOW_S = 20.0
INGEST_WARMUP_S = 3.0  # every node up and its first samples flushed before measuring
INGEST_WINDOW_S = 20.0
RTT_PINGS = 50
RTT_GAP_S = 0.02  # between pings: each one waits for its pong, this keeps them apart
VARIANTS = 16  # distinct telemetry lines per simulated node, cycled
PRUNE_HELD_MIN = 5  # minutes of 64 nodes' samples in the store before the prune


# ---- the agent on this machine ---------------------------------------------


async def _agent_figures() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="llc-bench-agent-") as root:
        channel = LocalAgentChannel("bench", Path(root), interval=INTERVAL_S)
        await channel.start()
        pongs: dict[int, asyncio.Future[float]] = {}

        async def read() -> None:
            async for event in channel.events():
                waiting = pongs.pop(event.get("id", -1), None) if event.get("ev") == "pong" \
                    else None
                if waiting is not None and not waiting.done():
                    waiting.set_result(time.perf_counter())

        reader = asyncio.create_task(read())
        try:
            assert channel.pid is not None
            agent = psutil.Process(channel.pid)
            await asyncio.sleep(AGENT_WARMUP_S)
            before, started = agent.cpu_times(), time.perf_counter()
            await asyncio.sleep(AGENT_WINDOW_S)
            after, elapsed = agent.cpu_times(), time.perf_counter() - started
            busy = (after.user + after.system) - (before.user + before.system)
            rtts = []
            loop = asyncio.get_running_loop()
            for ping_id in range(RTT_PINGS):
                pongs[ping_id] = loop.create_future()
                sent = time.perf_counter()
                await channel.send(Simple("ping", ping_id))
                rtts.append(await asyncio.wait_for(pongs[ping_id], 5.0) - sent)
                await asyncio.sleep(RTT_GAP_S)
        finally:
            await channel.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    return {"cpu": 100.0 * busy / elapsed, "rtt": statistics.median(rtts) * 1000.0}


# ---- 64 simulated nodes into the real engine -------------------------------


def _gpu(index: int, variant: int, node: int) -> dict[str, Any]:
    util = (variant * 13 + index * 7 + node) % 101
    return {"index": index, "util_percent": util, "memory_used_mb": 60_000 + 311 * variant,
            "memory_total_mb": 143_771, "temperature_c": 45 + util // 4,
            "power_w": round(150.0 + 5.3 * util, 1), "power_limit_w": 700.0,
            "processes": [{"pid": 40_000 + node * 16 + index,
                           "used_memory_mb": 59_500 + 311 * variant,
                           "attempt": f"{node * GPUS + index + 1}.1"}]}


class SimulatedAgent:
    """An AgentChannel whose agent is simulated: a hello naming 8 GPUs and
    this engine's software, then a telemetry line every INTERVAL_S (the
    node's phase `offset_s` into the second), parsed from JSON text as the
    subprocess channel parses the agent's stdout; a ping gets its pong."""

    def __init__(self, node: str, number: int, offset_s: float) -> None:
        self.node = node
        self.hello: dict[str, Any] | None = None
        self._offset_s = offset_s
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._ticker: asyncio.Task[None] | None = None
        self._alive = False
        # Each line is split where its time goes, so emitting one costs what
        # an agent's write costs the engine: nothing but the line itself.
        self._templates = []
        for variant in range(VARIANTS):
            doc = {"ev": "telemetry", "node": node, "time": 0.0,
                   "cpu_percent": float(variant % 40), "memory_percent": 35.5,
                   "memory_used_gb": 712.25, "load": [8.5, 8.0, 7.5],
                   "gpus": [_gpu(i, variant, number) for i in range(GPUS)]}
            head, tail = json.dumps(doc, separators=(",", ":")).split('"time":0.0', 1)
            self._templates.append((head.encode() + b'"time":', tail.encode() + b"\n"))
        self._number = number

    async def start(self) -> None:
        self.hello = {"ev": "hello", "node": self.node, "pid": 10_000 + self._number,
                      "version": VERSION, "host": self.node, "cpus": 128, "memory_gb": 2015.6,
                      "gpus": [{"index": i, "name": "NVIDIA H200", "memory_total_mb": 143_771,
                                "uuid": f"GPU-{self._number:04d}-{i}"} for i in range(GPUS)],
                      "runs": [], "software": software_versions()}
        self._alive = True
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self._offset_s
        variant = 0
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += INTERVAL_S
            head, tail = self._templates[variant % VARIANTS]
            variant += 1
            self._lines.put_nowait(head + repr(time.time()).encode() + tail)

    async def send(self, message: Command | dict[str, Any]) -> None:
        wire = message if isinstance(message, dict) else message.to_wire()
        if wire.get("op") == "ping":
            self._lines.put_nowait(json.dumps({"ev": "pong", "id": wire.get("id")}).encode())

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            line = await self._lines.get()
            if line is None:
                return
            yield json.loads(line)

    async def close(self) -> None:
        self._alive = False
        if self._ticker is not None:
            self._ticker.cancel()
        self._lines.put_nowait(None)

    @property
    def alive(self) -> bool:
        return self._alive


async def _ingest_figures() -> dict[str, float]:
    specs = tuple(NodeSpec(f"node{n:02d}", gpus=GPUS, slots=128) for n in range(NODES))
    number = {s.name: n for n, s in enumerate(specs)}

    def factory(spec: NodeSpec) -> SimulatedAgent:
        n = number[spec.name]
        return SimulatedAgent(spec.name, n, offset_s=INTERVAL_S * n / NODES)

    with tempfile.TemporaryDirectory(prefix="llc-bench-ingest-") as home:
        store = Store(Path(home) / "engine.db")
        runtime = Runtime(store, ClusterSpec("bench", specs), Path(home), factory)
        latencies: list[float] = []
        measuring = False
        subscription = runtime.hub.subscribe(lambda e: e.get("type") == "telemetry")

        async def listen() -> None:
            while True:
                event = await subscription.get()
                arrived = time.time()
                if measuring and event.get("type") == "telemetry":
                    latencies.append(arrived - float(event["time"]))

        listener = asyncio.create_task(listen())
        await runtime.start()
        try:
            if not await runtime.wait_nodes_up(30.0):
                raise RuntimeError("the simulated nodes did not come up within 30 s")
            await asyncio.sleep(INGEST_WARMUP_S)
            me = psutil.Process()
            measuring = True
            before, started = me.cpu_times(), time.perf_counter()
            await asyncio.sleep(INGEST_WINDOW_S)
            after, elapsed = me.cpu_times(), time.perf_counter() - started
            measuring = False
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            subscription.close()
            await runtime.stop()
            stored = len(store.telemetry("node00"))
            store.close()
    busy = (after.user + after.system) - (before.user + before.system)
    if not latencies or stored == 0:
        raise RuntimeError("no telemetry reached the event stream or the store")
    ms = sorted(x * 1000.0 for x in latencies)
    return {"cpu": 100.0 * busy / elapsed, "median": statistics.median(ms),
            "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))], "samples": len(ms)}


def _prune_ms() -> float:
    """Milliseconds to prune one minute of NODES nodes' 1 Hz samples."""
    t0 = 1_700_000_040.0  # the start of a minute
    with tempfile.TemporaryDirectory(prefix="llc-bench-prune-") as home:
        with Store(Path(home) / "engine.db") as store:
            for second in range(PRUNE_HELD_MIN * 60):
                store.record_telemetry([TelemetryRow(
                    f"node{n:02d}", t0 + second + n / NODES, 10.0 + n % 7, 35.5, 8.5,
                    [_gpu(i, second % VARIANTS, n) for i in range(GPUS)])
                    for n in range(NODES)])
            now = t0 + TELEMETRY_FULL_RATE_S + 60.0  # the first minute leaves the window
            started = time.perf_counter()
            dropped = store.prune_telemetry(t0 - 7 * 86400.0, now=now)
            elapsed = time.perf_counter() - started
    if dropped != NODES * 60:
        raise RuntimeError(f"the prune dropped {dropped} samples, not {NODES * 60}")
    return elapsed * 1000.0


def _loop_run(coro: Any) -> Any:
    """The engine daemon's event loop: uvloop when installed, as `engine serve` has it."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run() -> list[Figure]:
    agent = _loop_run(_agent_figures())
    ingest = _loop_run(_ingest_figures())
    prune = _prune_ms()
    where = f"{NODES} nodes x {GPUS} GPUs at 1 Hz"
    return [
        Figure("agent CPU at 1 Hz telemetry, local", agent["cpu"], "% core", 1, False),
        Figure(f"engine ingest CPU, {where}", ingest["cpu"], "% core", 5, False),
        Figure("engine ingest: sample to event stream, median", ingest["median"], "ms", 200,
               False),
        Figure("engine ingest: sample to event stream, p99", ingest["p99"], "ms", 200, False),
        Figure("agent warm round trip, local channel (median)", agent["rtt"], "ms", 50, False),
        Figure(f"telemetry prune, a minute of {NODES} nodes' samples", prune, "ms", 200, False),
    ]


if __name__ == "__main__":
    print(f"machine: {machine()}")
    print(table(run()))
