"""Benchmark of one scheduling pass: 10,000 pending jobs (a fixed random mix,
seed 0) on an idle cluster of 64 nodes x 8 GPUs; reports the median of 30
timed `schedule()` calls. Run as `python -m bench.scheduling` to print it."""

from __future__ import annotations

import random
import statistics
import time

from bench.harness import Figure, table
from engine.scheduler import NodeCapacity, PendingJob, schedule

NODE_COUNT = 64
GPUS_PER_NODE = 8
SLOTS_PER_NODE = 64
PENDING_COUNT = 10_000
REPEATS = 30
TARGET_MS = 20.0
FIGURE_NAME = "scheduling pass, 10k pending on 64x8 GPUs"


def idle_cluster() -> list[NodeCapacity]:
    """64 up nodes of 8 GPUs and 64 slots, everything free, memory unlimited."""
    return [
        NodeCapacity(
            name=f"node{index:02d}",
            gpus=GPUS_PER_NODE,
            free_gpus=tuple(range(GPUS_PER_NODE)),
            slots=SLOTS_PER_NODE,
            free_slots=SLOTS_PER_NODE,
        )
        for index in range(NODE_COUNT)
    ]


def pending_mix(count: int = PENDING_COUNT, seed: int = 0) -> list[PendingJob]:
    """Mostly 1-GPU jobs, some 2/4/8-GPU ones, a few 2-4 node gangs of 4 or 8
    GPUs per node; priorities 0-3; CPU slots scale with the GPUs."""
    rng = random.Random(seed)
    jobs = []
    for job_id in range(count):
        draw = rng.random()
        nodes = 1
        if draw < 0.70:
            gpus_per_node = 1
        elif draw < 0.82:
            gpus_per_node = 2
        elif draw < 0.91:
            gpus_per_node = 4
        elif draw < 0.97:
            gpus_per_node = 8
        else:
            nodes = rng.randint(2, 4)
            gpus_per_node = rng.choice((4, 8))
        cpus = gpus_per_node * rng.choice((1, 2, 4))
        memory_gb = float(rng.choice((0, 16, 32, 64)))
        jobs.append(
            PendingJob(
                job_id=job_id,
                priority=rng.randint(0, 3),
                seq=job_id,
                nodes=nodes,
                gpus_per_node=gpus_per_node,
                cpus=cpus,
                memory_gb=memory_gb,
            )
        )
    return jobs


def run() -> list[Figure]:
    nodes = idle_cluster()
    pending = pending_mix()
    schedule(pending, nodes)  # warm-up, untimed
    timings_ms = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        schedule(pending, nodes)
        timings_ms.append((time.perf_counter() - started) * 1000.0)
    median_ms = statistics.median(timings_ms)
    return [Figure(FIGURE_NAME, median_ms, "ms", TARGET_MS, False)]


if __name__ == "__main__":
    print(table(run()))
