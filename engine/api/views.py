"""The JSON shapes the API answers with, built from what the runtime holds.
Pure: values in, dicts out."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from engine.identity import user_name
from engine.ingest import Running
from engine.model import Attempt, Job, Placement, output_dir
from engine.nodes import NodeState
from engine.store import Progress


def placement_view(p: Placement) -> dict[str, Any]:
    return {"node": p.node, "gpus": list(p.gpus), "cpus": p.cpus}


def job_view(job: Job, run: Running | None, waiting: str | None = None,
             progress: Progress | None = None,
             times: tuple[float | None, float | None] = (None, None),
             guard: dict[str, Any] | None = None) -> dict[str, Any]:
    """`run`: the job's current attempt if it holds resources; `waiting`:
    why a held or queued job has not started, in words; `progress`: the
    current attempt's latest step, total, loss and tokens/s; `times`: when
    the current attempt started and ended (RUN time is between them);
    `guard`: what the loss guard and stall watch did (`GuardBook.view`):
    `stalled` is the current attempt's flag ({since, last_step} or None),
    `guard.restart` the words of the guard restart that made the current
    attempt ("restart 1 of 2 by loss guard: lr x0.5")."""
    return {
        "id": job.id,
        "name": job.spec.name,
        "kind": job.spec.kind,
        "profile": job.spec.profile,
        "launcher": job.spec.launcher,
        "state": job.state.value,
        "attempt": job.attempt,
        "owner_uid": job.owner_uid,
        "owner": user_name(job.owner_uid),
        "priority": job.spec.priority,
        "submitted_at": job.submitted_at,
        "updated_at": job.updated_at,
        "after": list(job.after),
        "reason": job.reason,
        "waiting": waiting,
        "exit_code": job.exit_code,
        "placements": [placement_view(p) for p in run.placements] if run else [],
        "resources": job.spec.to_dict()["resources"],
        "output": output_dir(job.spec),
        "started_at": times[0],
        "ended_at": times[1],
        "progress": None if progress is None else {
            "step": progress.step, "total": progress.total, "loss": progress.loss,
            "tokens_per_s": progress.tokens_per_s, "time": progress.time},
        "stalled": guard.get("stalled") if guard else None,
        "guard": guard,
    }


def attempt_view(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "state": a.state.value,
        "placements": [placement_view(p) for p in a.placements],
        "pid": a.pid,
        "exit_code": a.exit_code,
        "reason": a.reason,
        "created_at": a.created_at,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
        "cancel_requested": a.cancel_requested,
    }


def node_views(nodes: Iterable[NodeState], running: Iterable[Running], now: float
               ) -> list[dict[str, Any]]:
    """Every node with its state in one word (up, suspect, down, untrusted,
    incompatible, drained) and why, its GPUs (with the owning job), slots,
    round-trip time, software and last check."""
    owners: dict[tuple[str, int], int] = {}
    slots_used: dict[str, int] = {}
    jobs_on: dict[str, list[int]] = {}
    for run in running:
        for p in run.placements:
            for g in p.gpus:
                owners[(p.node, g)] = run.job_id
            slots_used[p.node] = slots_used.get(p.node, 0) + p.cpus
            jobs_on.setdefault(p.node, []).append(run.job_id)
    views = []
    for node in nodes:
        tele = node.telemetry or {}
        gpu_tele = {g.get("index"): g for g in tele.get("gpus", []) if isinstance(g, dict)}
        gpus = []
        for i in range(node.gpus):
            gpu: dict[str, Any] = dict(gpu_tele.get(i, {}))
            gpu["index"] = i
            gpu["name"] = node.gpu_names[i] if i < len(node.gpu_names) else gpu.get("name")
            gpu["job"] = owners.get((node.name, i))
            gpus.append(gpu)
        views.append({
            "name": node.name,
            "host": node.spec.host,
            "up": node.up,
            "state": node.condition(now).value,
            "state_reason": node.state_reason(now),
            "error": node.error,
            "rtt_ms": None if node.rtt_ms is None else round(node.rtt_ms, 2),
            "labels": list(node.spec.labels),
            "drained": node.drained is not None,
            "drain_reason": node.drained or None,
            "software": dict(node.software),
            "check": node.check,
            "gpus": gpus,
            "slots": node.slots,
            "slots_used": slots_used.get(node.name, 0),
            "memory_gb": node.memory_gb,
            "jobs": sorted(set(jobs_on.get(node.name, []))),
            "cpu_percent": tele.get("cpu_percent"),
            "memory_percent": tele.get("memory_percent"),
            "load": tele.get("load"),
            "telemetry_time": tele.get("time"),
        })
    return views
