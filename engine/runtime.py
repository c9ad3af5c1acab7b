"""The one place that wires store, scheduler, node agents and API together.

Contract:
- Every state change goes through the store first (compare-and-set), then to
  memory and to subscribers. A crash at any point leaves the store right and
  the next start reconciles it with what the agents report.
- Node agents are long-lived channels (`engine.transport`). A channel that
  ends marks its node down; the runtime reconnects with backoff and
  re-attaches every run it knew. Attempts on a node down for longer than
  `lost_after` seconds become `lost` (and are retried if their profile says).
- An attempt is started at most once: `start` is idempotent on the agent by
  attempt id, so a resend after a reconnect never runs a job twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import pwd
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from engine import scheduler
from engine.errors import BadRequest, Conflict, Forbidden, NotFound
from engine.hub import EventHub
from engine.launch import job_environment, launch_argv
from engine.lifecycle import InvalidTransition, JobState
from engine.model import (
    LIMITS,
    Attempt,
    BatchRef,
    ClusterSpec,
    Job,
    JobSpec,
    NodeSpec,
    Placement,
    attempt_key,
    output_dir,
)
from engine.store import MetricPoint, StaleState, Store, TelemetryRow, UnknownJob
from engine.transport.base import AgentChannel

log = logging.getLogger("llmconsole.engine")

ChannelFactory = Callable[[NodeSpec], AgentChannel]


@dataclass(frozen=True)
class Caller:
    """Who is asking, from the socket's peer credentials."""

    uid: int
    name: str

    @classmethod
    def from_uid(cls, uid: int) -> Caller:
        return cls(uid, user_name(uid))


@functools.lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


@dataclass
class NodeState:
    spec: NodeSpec
    channel: AgentChannel | None = None
    up: bool = False
    gpus: int = 0
    slots: int = 1
    memory_gb: float | None = None
    gpu_names: list[str] = field(default_factory=list)
    telemetry: dict[str, Any] | None = None
    error: str | None = None
    down_since: float | None = None
    seen: bool = False  # has said hello at least once: its capacity is known

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Running:
    """An attempt holding resources: what the runtime needs without a query."""

    job_id: int
    number: int
    spec: JobSpec
    placements: tuple[Placement, ...]
    log_offset: int = -1  # start of the last output line received
    log_lines: int = 0  # lines in the engine's copy of the output
    skip_lines: int = 0  # lines already in the copy that a re-attach will replay
    metric_offset: int = -1  # start of the last metrics.jsonl line received
    log_file: TextIO | None = None
    start_error: str | None = None  # the agent could not start it: why
    cancelled_by: str | None = None

    @property
    def key(self) -> str:
        return attempt_key(self.job_id, self.number)

    @property
    def node(self) -> str:
        return self.placements[0].node


class Runtime:
    def __init__(
        self,
        store: Store,
        cluster: ClusterSpec,
        home: Path,
        channel_factory: ChannelFactory,
        *,
        base_env: Mapping[str, str] | None = None,
        engine_uid: int | None = None,
        lost_after: float = 60.0,
        stop_grace: float = 10.0,
        telemetry_keep_s: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.home = home
        self.logs_dir = home / "logs"
        self.channel_factory = channel_factory
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.engine_uid = os.getuid() if engine_uid is None else engine_uid
        self.lost_after = lost_after
        self.stop_grace = stop_grace
        self.telemetry_keep_s = telemetry_keep_s  # node telemetry history kept this long
        self.clock = clock
        self.hub = EventHub()
        self.nodes: dict[str, NodeState] = {n.name: NodeState(n) for n in cluster.nodes}
        self.running: dict[str, Running] = {}
        self._kick = asyncio.Event()
        self._deps_dirty = True
        self._tasks: list[asyncio.Task[None]] = []
        self._metric_buffer: list[MetricPoint] = []
        self._telemetry_buffer: list[TelemetryRow] = []
        self._offsets_dirty: set[str] = set()
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()
        self.started_at = clock()

    # ----------------------------------------------------------------- life
    async def start(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for attempt in self.store.active_attempts():
            job = self.store.get_job(attempt.job_id)
            run = Running(job.id, attempt.number, job.spec, attempt.placements)
            self._load_offsets(run)
            self.running[run.key] = run
        loop = asyncio.get_running_loop()
        for node in self.nodes.values():
            self._tasks.append(loop.create_task(self._node_loop(node), name=f"node {node.name}"))
        self._tasks.append(loop.create_task(self._schedule_loop(), name="scheduler"))
        self._tasks.append(loop.create_task(self._flush_loop(), name="flush"))
        self._tasks.append(loop.create_task(self._watchdog_loop(), name="watchdog"))
        self.kick()

    async def stop(self) -> None:
        """Stop the engine; job processes keep running on their nodes."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for node in self.nodes.values():
            if node.channel is not None:
                with contextlib.suppress(Exception):
                    await node.channel.close()
        self._flush()
        for run in self.running.values():
            if run.log_file:
                run.log_file.close()

    async def wait_nodes_up(self, timeout: float = 15.0) -> bool:
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            if all(n.up for n in self.nodes.values()):
                return True
            await asyncio.sleep(0.02)
        return False

    def kick(self) -> None:
        """Ask for a scheduling pass soon (passes coalesce)."""
        self._kick.set()

    # ------------------------------------------------------------------ API
    def submit(self, spec: JobSpec, caller: Caller, after: Sequence[int | BatchRef] = ()
               ) -> Job:
        return self.submit_many([(spec, after)], caller)[0]

    def submit_many(
        self, items: Sequence[tuple[JobSpec, Sequence[int | BatchRef]]], caller: Caller
    ) -> list[Job]:
        """Jobs in one transaction: all are queued, or none (in a batch, the
        error names the first bad one by its index)."""
        for index, (spec, _after) in enumerate(items):
            reason = scheduler.unplaceable_reason(_pending(0, spec),
                                                  self._capacities(idle=True))
            if reason is not None and self._capacity_known():
                which = f"jobs[{index}]" if len(items) > 1 else "job"
                raise BadRequest(f"{which} {spec.name!r} can never run on cluster "
                                 f"{self.cluster.name!r}: {reason}")
        try:
            jobs = self.store.submit_many([(spec, caller.uid, after) for spec, after in items],
                                          actor=caller.name, now=self.clock())
        except UnknownJob as err:
            raise NotFound(f"after: {err}; see `llmconsole jobs`") from err
        parents = {p for job in jobs if job.state is JobState.HELD for p in job.after}
        if parents and any(s.is_terminal() for s in self.store.job_states(parents).values()):
            self._deps_dirty = True  # a parent has ended already: fail its children now
        for job in jobs:
            self._publish_job(job)
        if self._deps_dirty or any(job.state is JobState.QUEUED for job in jobs):
            self.kick()
        return jobs

    def _capacity_known(self) -> bool:
        return all(n.seen or (n.spec.gpus is not None and n.spec.slots is not None)
                   for n in self.nodes.values())

    def job(self, job_id: int) -> Job:
        try:
            return self.store.get_job(job_id)
        except UnknownJob as err:
            raise NotFound(f"no job {job_id}; see `llmconsole jobs`") from err

    def cancel(self, job_id: int, caller: Caller) -> Job:
        job = self.job(job_id)
        self._authorize(caller, job, "cancel")
        for _ in range(5):
            if job.state.is_terminal():
                raise Conflict(f"job {job_id} already {job.state}; nothing to cancel")
            if job.state in (JobState.HELD, JobState.QUEUED):
                try:
                    self.store.transition(job.id, job.attempt, job.state, JobState.CANCELLED,
                                          cause=f"cancelled by {caller.name}", actor=caller.name,
                                          now=self.clock(), reason=f"cancelled by {caller.name}")
                except (StaleState, InvalidTransition):
                    job = self.job(job_id)
                    continue
                self._deps_dirty = True
                self.kick()
                job = self.job(job_id)
                self._publish_job(job)
                return job
            # starting or running: ask the agent; its exit report ends the attempt
            self.store.request_cancel(job.id)
            run = self.running.get(attempt_key(job.id, job.attempt))
            if run is not None:
                run.cancelled_by = caller.name
                self._send(run.node, {"op": "stop", "attempt": run.key, "grace": self.stop_grace})
            return job
        raise Conflict(f"job {job_id} kept changing state; try again")

    def retry(self, job_id: int, caller: Caller) -> Job:
        job = self.job(job_id)
        self._authorize(caller, job, "retry")
        if not job.state.is_terminal():
            raise Conflict(f"job {job_id} is {job.state}; only an ended job can be retried "
                           f"(cancel it first)")
        if job.state is JobState.SUCCEEDED:
            raise Conflict(f"job {job_id} succeeded; submit its profile again to rerun it")
        try:
            self.store.new_attempt(job.id, cause=f"retry by {caller.name}", actor=caller.name,
                                   now=self.clock())
        except InvalidTransition as err:
            raise Conflict(str(err)) from err
        job = self.job(job_id)
        self._publish_job(job)
        self.kick()
        return job

    def set_priority(self, job_id: int, priority: int, caller: Caller) -> Job:
        """Reorder a waiting job: higher priority starts first."""
        low, high = LIMITS["priority"]
        if isinstance(priority, bool) or not isinstance(priority, int) \
                or not low <= priority <= high:
            raise BadRequest(f"priority must be a whole number from {low} to {high}, "
                             f"not {priority!r}")
        job = self.job(job_id)
        self._authorize(caller, job, "reprioritize")
        before = job.spec.priority
        cause = f"priority {before} -> {priority} by {caller.name}"
        if not self.store.set_priority(job.id, priority, cause=cause, actor=caller.name,
                                       now=self.clock()):
            job = self.job(job_id)
            raise Conflict(f"job {job_id} is {job.state}; priority only orders jobs that are "
                           "waiting to start (held or queued)")
        job = self.job(job_id)
        self._publish_job(job)
        self.kick()
        return job

    def log_path(self, job_id: int, number: int) -> Path:
        return self.logs_dir / attempt_key(job_id, number) / "output.log"

    def node_views(self) -> list[dict[str, Any]]:
        owners: dict[tuple[str, int], int] = {}
        slots_used: dict[str, int] = {}
        jobs_on: dict[str, list[int]] = {}
        for run in self.running.values():
            for p in run.placements:
                for g in p.gpus:
                    owners[(p.node, g)] = run.job_id
                slots_used[p.node] = slots_used.get(p.node, 0) + p.cpus
                jobs_on.setdefault(p.node, []).append(run.job_id)
        views = []
        for node in self.nodes.values():
            tele = node.telemetry or {}
            gpu_tele = {g.get("index"): g for g in tele.get("gpus", [])}
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
                "error": node.error,
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

    def job_view(self, job: Job) -> dict[str, Any]:
        run = self.running.get(attempt_key(job.id, job.attempt))
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
            "exit_code": job.exit_code,
            "placements": [_placement_view(p) for p in run.placements] if run else [],
            "resources": job.spec.to_dict()["resources"],
            "output": output_dir(job.spec),
        }

    # ----------------------------------------------------------- scheduling
    async def _schedule_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                self.schedule_pass()
            except Exception:
                log.exception("scheduling pass failed")
            await asyncio.sleep(0)

    def schedule_pass(self) -> int:
        if self._deps_dirty:
            self._deps_dirty = False
            self._resolve_dependencies()
        pending = self.store.pending()
        if not pending:
            return 0
        by_id = {j.id: j for j in pending}
        assignments = scheduler.schedule(
            [_pending(j.id, j.spec) for j in pending], self._capacities()
        )
        for a in assignments:
            job = by_id[a.job_id]
            where = ", ".join(f"{p.node}" + (f" GPUs {list(p.gpus)}" if p.gpus else "")
                              for p in a.placements)
            try:
                attempt = self.store.transition(
                    job.id, job.attempt, JobState.QUEUED, JobState.STARTING,
                    cause=f"placed on {where}", actor="scheduler", now=self.clock(),
                    placements=a.placements,
                )
            except (StaleState, InvalidTransition):
                continue
            run = Running(job.id, attempt.number, job.spec, attempt.placements)
            self.running[run.key] = run
            self._launch(run)
            self._announce(job.id)
        return len(assignments)

    def _resolve_dependencies(self) -> None:
        held = self.store.held()
        if not held:
            return
        parents = {p for j in held for p in j.after}
        decision = scheduler.resolve_dependencies(
            [scheduler.HeldJob(j.id, j.after) for j in held], self.store.job_states(parents)
        )
        by_id = {j.id: j for j in held}
        for job_id in decision.release:
            self._move(by_id[job_id], JobState.HELD, JobState.QUEUED,
                       cause="dependencies succeeded", actor="scheduler")
        for job_id, reason in decision.fail:
            self._move(by_id[job_id], JobState.HELD, JobState.FAILED, cause=reason,
                       actor="scheduler", reason=reason)
        if decision.fail:
            self._deps_dirty = True  # grandchildren may fail in turn

    def _move(self, job: Job, expected: JobState, to: JobState, *, cause: str, actor: str,
              reason: str | None = None) -> None:
        try:
            self.store.transition(job.id, job.attempt, expected, to, cause=cause, actor=actor,
                                  now=self.clock(), reason=reason)
        except (StaleState, InvalidTransition) as err:
            log.info("job %s: %s", job.id, err)
            return
        self._announce(job.id)

    def _capacities(self, idle: bool = False) -> list[scheduler.NodeCapacity]:
        used_gpus: dict[str, set[int]] = {}
        used_slots: dict[str, int] = {}
        used_mem: dict[str, float] = {}
        if not idle:
            for run in self.running.values():
                for p in run.placements:
                    used_gpus.setdefault(p.node, set()).update(p.gpus)
                    used_slots[p.node] = used_slots.get(p.node, 0) + p.cpus
                    used_mem[p.node] = used_mem.get(p.node, 0.0) + run.spec.resources.memory_gb
        caps = []
        for node in self.nodes.values():
            gpus, slots = node.gpus, node.slots
            taken = used_gpus.get(node.name, set())
            mem = node.memory_gb
            caps.append(scheduler.NodeCapacity(
                name=node.name,
                gpus=gpus,
                free_gpus=tuple(i for i in range(gpus) if i not in taken),
                slots=slots,
                free_slots=max(0, slots - used_slots.get(node.name, 0)),
                memory_gb=mem,
                free_memory_gb=None if mem is None else mem - used_mem.get(node.name, 0.0),
                up=node.up or idle,
            ))
        return caps

    # ------------------------------------------------------------- launching
    def _launch(self, run: Running) -> None:
        message = {
            "op": "start",
            "attempt": run.key,
            "argv": launch_argv(run.spec, run.placements,
                                {n.name: n.spec for n in self.nodes.values()}),
            "env": job_environment(self.base_env, run.spec),
            "cwd": run.spec.workdir,
            "gpus": list(run.placements[0].gpus),
        }
        self._send(run.node, message)

    def _send(self, node_name: str, message: dict[str, Any]) -> None:
        node = self.nodes.get(node_name)
        if node is None or node.channel is None or not node.up:
            return  # resent by _reconcile when the node comes back
        channel = node.channel

        async def send() -> None:
            try:
                await channel.send(message)
            except Exception as err:  # the reader notices the channel ending
                log.warning("node %s: could not send %s: %s", node_name, message.get("op"), err)

        task = asyncio.get_running_loop().create_task(send())
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)

    # ---------------------------------------------------------------- nodes
    async def _node_loop(self, node: NodeState) -> None:
        backoff = 0.5
        while not self._stopping:
            try:
                channel = self.channel_factory(node.spec)
                node.channel = channel
                await channel.start()
            except Exception as err:
                self._node_down(node, f"agent did not start: {err}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            hello = getattr(channel, "hello", {}) or {}
            self._node_up(node, hello)
            try:
                self._reconcile(node, hello.get("runs", []))
                async for event in channel.events():
                    try:
                        self._on_event(node, event)
                    except Exception:
                        log.exception("node %s: event %s failed", node.name, event.get("ev"))
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("node %s: channel failed: %s", node.name, err)
            self._node_down(node, "agent connection ended")
            await asyncio.sleep(backoff)

    def _node_up(self, node: NodeState, hello: dict[str, Any]) -> None:
        reported = hello.get("gpus") or []
        node.gpus = node.spec.gpus if node.spec.gpus is not None else len(reported)
        node.gpu_names = [str(g.get("name", "")) for g in reported]
        node.slots = node.spec.slots if node.spec.slots is not None else int(
            hello.get("cpus") or 1)
        node.memory_gb = node.spec.memory_gb
        node.up, node.error, node.down_since, node.seen = True, None, None, True
        log.info("node %s up: %d GPUs, %d slots", node.name, node.gpus, node.slots)
        self.hub.publish({"type": "node", "node": node.name, "up": True})
        self.kick()

    def _node_down(self, node: NodeState, why: str) -> None:
        if node.up or node.error is None:
            log.warning("node %s down: %s", node.name, why)
        if node.down_since is None:
            node.down_since = self.clock()
        node.up, node.error = False, why
        self.hub.publish({"type": "node", "node": node.name, "up": False, "error": why})

    def _reconcile(self, node: NodeState, runs: list[dict[str, Any]]) -> None:
        """Match what the store says runs on `node` with what its agent has."""
        on_node = {r.get("attempt"): r for r in runs}
        for run in list(self.running.values()):
            if run.node != node.name:
                continue
            found = on_node.pop(run.key, None)
            if found is not None:
                self._send(node.name, {"op": "attach", "attempt": run.key, "offsets": {
                    "output": max(run.log_offset, 0), "metrics": max(run.metric_offset, 0)}})
                if self.store.get_attempt(run.job_id, run.number).cancel_requested:
                    self._send(node.name, {"op": "stop", "attempt": run.key,
                                           "grace": self.stop_grace})
                continue
            attempt = self.store.get_attempt(run.job_id, run.number)
            if attempt.state is JobState.STARTING:
                self._launch(run)  # the start never reached the agent; idempotent anyway
            else:
                self._end(run, JobState.LOST, cause=f"run directory missing on node {node.name}",
                          reason=f"node {node.name} has no record of the process")
        for key, found in on_node.items():
            if found.get("alive") and isinstance(key, str):
                # a process the store says has ended (e.g. lost while the node was away)
                self._send(node.name, {"op": "stop", "attempt": key, "grace": self.stop_grace})

    async def _watchdog_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.clock()
            for node in self.nodes.values():
                if node.up or node.down_since is None or now - node.down_since < self.lost_after:
                    continue
                for run in [r for r in self.running.values() if r.node == node.name]:
                    self._end(run, JobState.LOST, cause=f"node {node.name} unreachable",
                              reason=f"node {node.name} unreachable for "
                                     f"{now - node.down_since:.0f}s: {node.error}")

    # --------------------------------------------------------------- events
    def _on_event(self, node: NodeState, event: dict[str, Any]) -> None:
        kind = event.get("ev")
        if kind == "telemetry":
            self._on_telemetry(node, event)
            return
        key = event.get("attempt")
        run = self.running.get(key) if isinstance(key, str) else None
        if kind == "log" and run is not None:
            self._on_log(run, event)
        elif kind == "metric" and run is not None:
            self._on_metric(run, event)
        elif kind == "started" and run is not None:
            self._on_started(run, event)
        elif kind == "exited" and run is not None:
            self._on_exited(run, event)
        elif kind == "lost" and run is not None:
            self._end(run, JobState.LOST, cause=f"lost on node {node.name}",
                      reason=str(event.get("reason") or "process vanished"))
        elif kind == "error":
            log.warning("node %s: agent error%s: %s", node.name,
                        f" for {key}" if key else "", event.get("message"))
            if run is not None and event.get("op") == "start":
                run.start_error = str(event.get("message") or "the agent could not start it")
                # a start the agent refused outright is followed by no exit report
                asyncio.get_running_loop().call_later(2.0, self._start_refused, run)

    def _start_refused(self, run: Running) -> None:
        if self.running.get(run.key) is not run:
            return  # its exit was reported after all
        if self.store.get_attempt(run.job_id, run.number).state is JobState.STARTING:
            self._end(run, JobState.FAILED, cause="the agent could not start it",
                      reason=run.start_error, from_state=JobState.STARTING)

    def _on_telemetry(self, node: NodeState, event: dict[str, Any]) -> None:
        node.telemetry = event
        load = event.get("load") or [None]
        self._telemetry_buffer.append(TelemetryRow(
            node=node.name, time=float(event.get("time") or self.clock()),
            cpu_percent=event.get("cpu_percent"), memory_percent=event.get("memory_percent"),
            load1=load[0] if load else None, gpus=list(event.get("gpus") or []),
        ))
        self.hub.publish({"type": "telemetry", **event})

    def _on_started(self, run: Running, event: dict[str, Any]) -> None:
        attempt = self.store.get_attempt(run.job_id, run.number)
        if attempt.state is not JobState.STARTING:
            return  # a re-sent "started" after a re-attach
        self._transition(run, JobState.STARTING, JobState.RUNNING,
                         cause=f"process {event.get('pid')} started on {run.node}",
                         actor=f"agent@{run.node}", pid=_int(event.get("pid")))

    def _on_log(self, run: Running, event: dict[str, Any]) -> None:
        offset = _int(event.get("offset"))
        if offset is not None and offset <= run.log_offset:
            return  # already have it (re-attach replays from the last offset)
        if offset is not None:
            run.log_offset = offset
            self._offsets_dirty.add(run.key)
        if run.skip_lines > 0:  # written before a crash, after the last saved offset
            run.skip_lines -= 1
            return
        self._append_log(run, str(event.get("line", "")))

    def _append_log(self, run: Running, line: str) -> None:
        if run.log_file is None:
            path = self.log_path(run.job_id, run.number)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            run.log_file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        run.log_file.write(line + "\n")
        run.log_file.flush()
        run.log_lines += 1
        self.hub.publish({"type": "log", "job": run.job_id, "attempt": run.number,
                          "line": line})

    def _on_metric(self, run: Running, event: dict[str, Any]) -> None:
        offset = _int(event.get("offset"))
        if offset is not None and offset <= run.metric_offset:
            return
        if offset is not None:
            run.metric_offset = offset
            self._offsets_dirty.add(run.key)
        record = event.get("record")
        if not isinstance(record, dict):
            return
        step = _int(record.get("step"))
        if step is None:
            return
        now = self.clock()
        t = record.get("time")
        when = float(t) if isinstance(t, (int, float)) else now
        values: dict[str, float] = {}
        for name, value in record.items():
            if name in ("step", "time") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                values[name] = float(value)
                self._metric_buffer.append(
                    MetricPoint(run.job_id, run.number, step, name, float(value), when))
        if values:
            self.hub.publish({"type": "metric", "job": run.job_id, "attempt": run.number,
                              "step": step, "time": when, "values": values})

    def _on_exited(self, run: Running, event: dict[str, Any]) -> None:
        code, sig = _int(event.get("code")), _int(event.get("signal"))
        attempt = self.store.get_attempt(run.job_id, run.number)
        if attempt.state.is_terminal():
            self._forget(run)
            return
        if attempt.cancel_requested:
            state, reason = JobState.CANCELLED, f"cancelled by {run.cancelled_by or 'a user'}"
        elif run.start_error is not None:
            state, reason = JobState.FAILED, run.start_error
        elif code == 0:
            state, reason = JobState.SUCCEEDED, None
        elif sig is not None:
            state, reason = JobState.FAILED, f"killed by signal {sig}"
        else:
            state, reason = JobState.FAILED, f"exit code {code}"
        current = attempt.state
        if current is JobState.STARTING and run.start_error is None:
            # it ran, but its "started" report was missed (an agent restart)
            self._transition(run, JobState.STARTING, JobState.RUNNING,
                             cause="process seen at exit", actor=f"agent@{run.node}")
            current = JobState.RUNNING
        self._end(run, state, cause=reason or "exit code 0", reason=reason, exit_code=code,
                  from_state=current)

    def _end(self, run: Running, state: JobState, *, cause: str, reason: str | None,
             exit_code: int | None = None, from_state: JobState | None = None) -> None:
        current = from_state or self.store.get_attempt(run.job_id, run.number).state
        if current.is_terminal():
            self._forget(run)
            return
        ok = self._transition(run, current, state, cause=cause, actor=f"agent@{run.node}",
                              reason=reason, exit_code=exit_code)
        self._forget(run)
        if not ok:
            return
        if state in (JobState.FAILED, JobState.LOST) and run.number <= run.spec.retries:
            self.store.new_attempt(run.job_id, cause=f"automatic retry {run.number} of "
                                   f"{run.spec.retries} ({reason})", actor="engine",
                                   now=self.clock())
            self._announce(run.job_id)
        self._deps_dirty = True
        self.kick()

    def _transition(self, run: Running, expected: JobState, to: JobState, *, cause: str,
                    actor: str, **fields: Any) -> bool:
        try:
            self.store.transition(run.job_id, run.number, expected, to, cause=cause,
                                  actor=actor, now=self.clock(), **fields)
        except (StaleState, InvalidTransition) as err:
            log.info("%s: %s", run.key, err)
            return False
        self._announce(run.job_id)
        return True

    def _forget(self, run: Running) -> None:
        self.running.pop(run.key, None)
        if run.log_file is not None:
            run.log_file.close()
            run.log_file = None
        self._flush()
        self.hub.publish({"type": "attempt-ended", "job": run.job_id, "attempt": run.number})

    # ---------------------------------------------------------- persistence
    async def _flush_loop(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(0.5)
            try:
                self._flush()
                now = self.clock()
                if now - last_prune > 3600:
                    last_prune = now
                    self.store.prune_telemetry(now - self.telemetry_keep_s)
            except Exception:
                log.exception("flush failed")

    def _flush(self) -> None:
        if self._metric_buffer:
            points, self._metric_buffer = self._metric_buffer, []
            self.store.record_metrics(points)
        if self._telemetry_buffer:
            rows, self._telemetry_buffer = self._telemetry_buffer, []
            self.store.record_telemetry(rows)
        for key in list(self._offsets_dirty):
            run = self.running.get(key)
            if run is not None:
                self._save_offsets(run)
        self._offsets_dirty.clear()

    def _offsets_path(self, run: Running) -> Path:
        return self.logs_dir / run.key / "offsets.json"

    def _save_offsets(self, run: Running) -> None:
        path = self._offsets_path(run)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"output": run.log_offset, "output_lines": run.log_lines,
                                   "metrics": run.metric_offset}))
        os.replace(tmp, path)

    def _load_offsets(self, run: Running) -> None:
        """After an engine restart: where to resume. Metric points and their
        offset are saved together; output lines are written at once, so the
        lines written after the last saved offset are skipped on replay."""
        try:
            data = json.loads(self._offsets_path(run).read_text())
        except (OSError, ValueError):
            data = {}
        try:
            with open(self.log_path(run.job_id, run.number), "rb") as f:
                in_copy = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except OSError:
            in_copy = 0
        run.log_offset = int(data.get("output", -1))
        run.metric_offset = int(data.get("metrics", -1))
        run.log_lines = in_copy
        run.skip_lines = max(0, in_copy - int(data.get("output_lines", 0)))

    # -------------------------------------------------------------- helpers
    def _authorize(self, caller: Caller, job: Job, verb: str) -> None:
        if caller.uid in (job.owner_uid, self.engine_uid) or caller.name in self.cluster.admins:
            return
        raise Forbidden(f"job {job.id} belongs to {user_name(job.owner_uid)}; only its owner "
                        f"or an admin of cluster {self.cluster.name!r} may {verb} it")

    def _announce(self, job_id: int) -> None:
        """Publish a job's new state; read from the store only if anyone listens."""
        if self.hub.subscribers:
            self._publish_job(self.store.get_job(job_id))

    def _publish_job(self, job: Job) -> None:
        if self.hub.subscribers:
            self.hub.publish({"type": "job", "job": self.job_view(job)})


def _pending(job_id: int, spec: JobSpec) -> scheduler.PendingJob:
    r = spec.resources
    return scheduler.PendingJob(job_id=job_id, priority=spec.priority, seq=job_id, nodes=r.nodes,
                                gpus_per_node=r.gpus_per_node, cpus=r.cpus,
                                memory_gb=r.memory_gb)


def _placement_view(p: Placement) -> dict[str, Any]:
    return {"node": p.node, "gpus": list(p.gpus), "cpus": p.cpus}


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def attempt_view(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "state": a.state.value,
        "placements": [_placement_view(p) for p in a.placements],
        "pid": a.pid,
        "exit_code": a.exit_code,
        "reason": a.reason,
        "created_at": a.created_at,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
        "cancel_requested": a.cancel_requested,
    }
