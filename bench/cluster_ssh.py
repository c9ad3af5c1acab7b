"""The cluster over SSH, on sshd test hosts on loopback (chaos/hosts.py):
the agent's CPU at 1 Hz telemetry behind ssh, a warm round trip over a
node's channel and the cold connect, and through a real engine: a 2-node
horovodrun pretrain-tiny from submit to every rank running, its tokens/s
against the same two workers on one node (a ratio measured in one run),
and a node crash to the node down and to the retry running, with the
engine's defaults (lost_after 60 s).

Every "node" is this machine, so the tokens/s ratio shows what the launch
across hosts and Gloo over TCP cost, not a network."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.harness import Figure, machine, table
from chaos.engine_handle import EngineHandle, new_engine
from chaos.hosts import SshHosts, processes_naming
from engine.agent.protocol import Simple
from engine.transport.ssh import SshAgentChannel

AGENT_WARMUP_S = 3.0
AGENT_WINDOW_S = 15.0
RTT_PINGS = 50
COLD_CONNECTS = 3
RUN_TIMEOUT_S = 300.0
STEPS = 40
# pretrain-tiny shrunk as in tests/cluster/test_horovod_cluster.py
SMALL = ["model=micro", "max_docs=400", "block_size=64", "vocab_size=512", "batch_size=8",
         "eval_batches=2", "warmup_steps=5", "log_every=1", "keep_checkpoints=1",
         f"max_steps={STEPS}", f"eval_every={STEPS}", "checkpoint_every=10"]


def _sets(*extra: str) -> list[str]:
    # One thread per rank: every "node" is this machine, and a rank alone on its
    # node would take all its cores, so two "nodes" would run 4 threads on 2.
    extra = ("env.OMP_NUM_THREADS=1", *extra)
    words = [w for item in SMALL for w in ("--set", f"args.{item}")]
    return [*words, *[w for item in extra for w in ("--set", item)]]


# ---- one channel ------------------------------------------------------------


async def _channel_figures(hosts: SshHosts, home: Path) -> dict[str, float]:
    spec = hosts.node_spec("node1")
    colds = []
    for _ in range(COLD_CONNECTS):
        channel = SshAgentChannel(spec, home, 1.0, ssh_config=str(hosts.ssh_config))
        started = time.perf_counter()
        await channel.start()
        colds.append(time.perf_counter() - started)
        await channel.close()
    channel = SshAgentChannel(spec, home, 1.0, ssh_config=str(hosts.ssh_config))
    await channel.start()
    pongs: dict[int, asyncio.Future[float]] = {}

    async def read() -> None:
        async for event in channel.events():
            if event.get("ev") == "pong":
                waiting = pongs.pop(event.get("id", -1), None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(time.perf_counter())

    reader = asyncio.create_task(read())
    try:
        await asyncio.sleep(AGENT_WARMUP_S)
        [agent_pid] = [p for p in processes_naming(str(channel.root))
                       if psutil.Process(p).cmdline()[1:3] == ["-m", "engine.agent"]]
        agent = psutil.Process(agent_pid)
        before, started = agent.cpu_times(), time.perf_counter()
        await asyncio.sleep(AGENT_WINDOW_S)
        after, elapsed = agent.cpu_times(), time.perf_counter() - started
        busy = (after.user + after.system) - (before.user + before.system)
        loop = asyncio.get_running_loop()
        rtts = []
        for ping_id in range(RTT_PINGS):
            pongs[ping_id] = loop.create_future()
            sent = time.perf_counter()
            await channel.send(Simple("ping", ping_id))
            rtts.append(await asyncio.wait_for(pongs[ping_id], 10.0) - sent)
            await asyncio.sleep(0.02)
    finally:
        await channel.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return {"cpu": 100.0 * busy / elapsed, "rtt": statistics.median(rtts) * 1000.0,
            "cold": statistics.median(colds)}


# ---- through the engine -----------------------------------------------------


def _wait(engine: EngineHandle, job_id: int, states: set[str]) -> dict[str, Any]:
    return engine.wait_state(job_id, states, timeout=RUN_TIMEOUT_S)


def _ranks(attempt: str) -> int:
    """Training processes of the attempt alive now, on any node."""
    marker = f"LLMCONSOLE_ATTEMPT={attempt}".encode()
    count = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "engine.workloads.train" not in " ".join(p.info["cmdline"] or []) or \
                    "horovodrun" in " ".join(p.info["cmdline"] or []):
                continue
            with open(f"/proc/{p.pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    count += 1
        except OSError:
            continue
    return count


def _tokens_per_s(engine: EngineHandle, job_id: int) -> float:
    points = engine.json("metrics", str(job_id), "--name", "tokens_per_s")
    values = [p["value"] for p in sorted(points, key=lambda p: p["step"])][5:]
    return statistics.median(values) if values else 0.0


def _engine_figures(hosts: SshHosts) -> dict[str, float]:
    engine = new_engine()
    roots = engine.home / "roots"
    profile = hosts.cluster_profile(engine.home / "cluster.toml", roots=roots,
                                    labels={"node1": ["node"], "node2": ["node"]})
    engine.env.update(hosts.env())
    try:
        engine.serve("--cluster", str(profile))
        deadline = time.monotonic() + 60
        while {n["state"] for n in engine.json("nodes")} != {"up"}:
            assert time.monotonic() < deadline, engine.cli("nodes").stdout
            time.sleep(0.2)
        across = ["resources.nodes=2", "resources.cpus=1", 'resources.nodes_with=["node"]']
        # two workers on node1 and node2 (labelled "node"), from submit to both training
        submitted = time.perf_counter()
        two = engine.json("submit", "pretrain-tiny", *_sets(*across))
        attempt = f"{two['id']}.1"
        while _ranks(attempt) < 2:
            assert time.perf_counter() - submitted < RUN_TIMEOUT_S
            time.sleep(0.02)
        to_running = time.perf_counter() - submitted
        for job in (two, engine.json("submit", "pretrain-tiny", *_sets(
                "resources.nodes=1", "resources.cpus=2", 'resources.nodes_with=["node1"]'))):
            ended = _wait(engine, int(job["id"]), {"succeeded", "failed"})
            assert ended["state"] == "succeeded", (
                ended, engine.cli("logs", str(job["id"])).stdout[-2000:])
        one = job
        ratio = _tokens_per_s(engine, int(two["id"])) / max(
            _tokens_per_s(engine, int(one["id"])), 1e-9)

        # a node crash mid-run, with the engine's defaults
        crash_job = engine.json("submit", "pretrain-tiny", *_sets(
            *across[:2], "retries=1", "args.max_steps=2000", "args.eval_every=2000"))
        crash_id = int(crash_job["id"])
        while not engine.json("metrics", str(crash_id), "--name", "loss"):
            time.sleep(0.1)
        victim = next(p["node"] for p in engine.job(crash_id)["attempts"][0]["placements"]
                      if p["node"] != "head")
        hosts.crash(victim)
        crashed = time.perf_counter()
        down = retried = None
        while retried is None and time.perf_counter() - crashed < RUN_TIMEOUT_S:
            now = time.perf_counter() - crashed
            if down is None and any(n["name"] == victim and n["state"] == "down"
                                    for n in engine.json("nodes")):
                down = now
            job = engine.job(crash_id)
            if job["attempt"] == 2 and job["state"] == "running":
                retried = now
            time.sleep(0.1)
        engine.cli("cancel", str(crash_id), check=False)
        hosts.start_host(victim)
    finally:
        engine.close()
        for pid in processes_naming(str(roots)):
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        shutil.rmtree(engine.home, ignore_errors=True)
    return {"to_running": to_running, "ratio": ratio, "down": down or float("inf"),
            "retried": retried or float("inf")}


def run() -> list[Figure]:
    with SshHosts.start(2) as hosts, tempfile.TemporaryDirectory(prefix="llc-b-") as home:
        channel = asyncio.run(_channel_figures(hosts, Path(home)))
        through = _engine_figures(hosts)
    return [
        Figure("agent CPU at 1 Hz telemetry, over SSH", channel["cpu"], "% core", 1, False),
        Figure("warm round trip over a node's SSH channel (median)", channel["rtt"], "ms", 50,
               False),
        Figure("cold SSH connect to the agent's hello (median)", channel["cold"], "s", 2,
               False),
        Figure("2-node horovodrun: submit to every rank running", through["to_running"], "s",
               10, False),
        Figure("2-node horovodrun tokens/s / same 2 workers on one node", through["ratio"],
               "ratio", 0.8, True),
        Figure("node crash to node down", through["down"], "s", 15, False),
        Figure("node crash to the retry running (defaults)", through["retried"], "s", 15,
               False),
    ]


if __name__ == "__main__":
    print(f"machine: {machine()}")
    print(table(run()))
