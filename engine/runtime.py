"""The one place that wires store, scheduler, node agents and API together,
and the job operations (submit, cancel, retry, priority) the API calls.

Contract:
- Every state change goes through the store first (compare-and-set), then to
  memory and to subscribers. A crash at any point leaves the store right and
  the next start reconciles it with what the agents report.
- Node agents are long-lived channels (`engine.nodes`). A channel that ends
  marks its node down; it is reconnected with backoff and every run it knew
  is re-attached. Attempts holding a node that is down for longer than
  `lost_after` seconds, any node of the allocation, become `lost` (and are
  retried if their profile says) — `engine.health` decides, this applies.
- An attempt is started at most once: `start` is idempotent on the agent by
  attempt id, so a resend after a reconnect never runs a job twice.
- A job runs as its owner: every `start` carries the owner's uid, and the
  agents (root on a shared cluster) start the job with that uid, its gid
  and groups. An engine that is not root cannot do that, so it refuses other
  users' submissions.
- What the agents stream (output, metrics, telemetry) is made durable by
  `engine.ingest`; the API's JSON shapes are `engine.api.views`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine import doctor, health, scheduler
from engine.agent import protocol as wire
from engine.api import views
from engine.api.views import attempt_view
from engine.errors import BadRequest, Conflict, Forbidden, NotFound
from engine.guard_book import GuardBook, Stall
from engine.hub import EventHub
from engine.identity import Caller, user_name
from engine.ingest import Ingest, Part, Running
from engine.launch import job_environment, launch_parts, placement_environment
from engine.lifecycle import InvalidTransition, JobState
from engine.model import (
    LIMITS,
    BatchRef,
    ClusterSpec,
    Job,
    JobSpec,
    NodeSpec,
    Placement,
    attempt_key,
    node_root,
)
from engine.nodes import ChannelFactory, Nodes, NodeState
from engine.store import StaleState, Store, StoreError, UnknownJob
from engine.transport.base import AgentError
from engine.transport.ssh import ssh_command

__all__ = ["Caller", "ChannelFactory", "NodeState", "Running", "Runtime", "attempt_view",
           "user_name"]

log = logging.getLogger("llmconsole.engine")

# A cancel races with the scheduler and the agents; it re-reads the job and
# tries again this many times before saying the job kept changing.
CANCEL_TRIES = 5
# An agent that refuses a start outright sends an error and no exit report;
# its exit report, when there is one, comes within this time.
START_REFUSED_WAIT_S = 2.0
FLUSH_EVERY_S = 0.5  # metric points and offsets reach the store this often
WATCHDOG_EVERY_S = 1.0
PROCS_TIMEOUT_S = 5.0  # a node's answer to `procs` (it looks at each process for 0.2 s)
DRAINS_FILE = "drained.json"  # in the engine home: which nodes take no new work, and why
MAX_DRAIN_REASON = 200
# Old full-rate telemetry is dropped (its minute averages stay) this often:
# little each time, so the event loop never stalls (an hourly prune of 64
# nodes took about 8 s at once).
TELEMETRY_PRUNE_EVERY_S = 10.0
# A stalled attempt that its profile cancels or retries waits this long for
# its stack dumps (py-spy takes a few seconds a process) before it is stopped.
STALL_DUMP_WAIT_S = 15.0


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
        retry_backoff_s: float = scheduler.RETRY_BACKOFF_BASE_S,
        suspect_after: float = health.SUSPECT_AFTER_S,
        dead_after: float = health.DEAD_AFTER_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.home = home
        self.logs_dir = home / "logs"
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.engine_uid = os.getuid() if engine_uid is None else engine_uid
        self.lost_after = lost_after
        self.stop_grace = stop_grace
        self.telemetry_keep_s = telemetry_keep_s  # node telemetry history kept this long
        self.retry_backoff_s = retry_backoff_s  # automatic retry n waits this * 2**(n-1)
        self._backoff_wake: asyncio.TimerHandle | None = None  # a pass when a backoff ends
        self.clock = clock
        self.hub = EventHub()
        self.nodes = Nodes(list(cluster.nodes), channel_factory, self.hub, clock,
                           on_hello=self._on_hello, on_event=self._on_event,
                           suspect_after=suspect_after, dead_after=dead_after)
        self.ingest = Ingest(store, self.logs_dir, self.hub, clock,
                             node_root=lambda name: node_root(self.cluster.node(name), home))
        self._load_drains()
        # the loss guard and stall watch (engine.guard); its notes join the history
        self.guards = GuardBook(home, on_note=self._guard_note)
        self._stall_dumps: dict[str, tuple[Stall, set[str]]] = {}  # attempt -> awaited nodes
        self._guard_stopped: set[str] = set()  # attempts the guard has sent stop to
        self.running: dict[str, Running] = {}
        self._reaps_due: dict[str, dict[str, wire.Reap]] = {}  # node -> attempt -> reap
        self._waiting: dict[int, str] = {}  # queued job -> why it did not start
        self._kick = asyncio.Event()
        self._deps_dirty = True
        self._tasks: list[asyncio.Task[None]] = []
        self.started_at = clock()

    # ----------------------------------------------------------------- life
    async def start(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.logs_dir.chmod(0o700)  # private even if a shared home is traversable
        for attempt in self.store.active_attempts():
            job = self.store.get_job(attempt.job_id)
            run = self._running(job, attempt.number, attempt.placements)
            self.ingest.load_offsets(run)
            self.running[run.key] = run
            self.guards.started(job.id, attempt.number, job.spec, self.clock())
        loop = asyncio.get_running_loop()
        self.nodes.start()
        self._tasks.append(loop.create_task(self._schedule_loop(), name="scheduler"))
        self._tasks.append(loop.create_task(self._flush_loop(), name="flush"))
        self._tasks.append(loop.create_task(self._watchdog_loop(), name="watchdog"))
        self.kick()

    async def stop(self) -> None:
        """Stop the engine; job processes keep running on their nodes."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: S110 — stopping anyway
                pass
        await self.nodes.stop()
        self.ingest.flush(self.running, force=True)
        for run in self.running.values():
            self.ingest.close(run)

    async def wait_nodes_up(self, timeout: float = 15.0) -> bool:
        return await self.nodes.wait_up(timeout)

    def kick(self) -> None:
        """Ask for a scheduling pass soon (passes coalesce)."""
        self._kick.set()

    def _running(self, job: Job, number: int, placements: tuple[Placement, ...]) -> Running:
        parts = launch_parts(job.spec, placements, self.nodes.specs(),
                             known_hosts=self.cluster.known_hosts)
        return Running(job.id, number, job.spec, placements, owner_uid=job.owner_uid,
                       launch_nodes=tuple(p.node for p in parts))

    # ------------------------------------------------------------------ API
    def submit(self, spec: JobSpec, caller: Caller, after: Sequence[int | BatchRef] = ()
               ) -> Job:
        return self.submit_many([(spec, after)], caller)[0]

    def submit_many(
        self, items: Sequence[tuple[JobSpec, Sequence[int | BatchRef]]], caller: Caller
    ) -> list[Job]:
        """Jobs in one transaction: all are queued, or none (in a batch, the
        error names the first bad one by its index)."""
        self._check_can_run_as(caller)
        for index, (spec, _after) in enumerate(items):
            pending, idle = _pending(0, spec), self._capacities(idle=True)
            # labels and names come from the profile: known before any hello
            reason = scheduler.nodes_with_reason(pending, idle)
            if reason is None and self.nodes.capacity_known():
                reason = scheduler.unplaceable_reason(pending, idle)
            if reason is not None:
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

    def _check_can_run_as(self, caller: Caller) -> None:
        """Jobs run as their owner: only an engine running as root can start
        another user's job (its agents switch to the owner's uid)."""
        if caller.uid == self.engine_uid or self.engine_uid == 0:
            return
        owner = user_name(self.engine_uid)
        raise Forbidden(f"this engine runs as {owner}, not as root, so it cannot run jobs as "
                        f"{caller.name}; start your own (use your own LLMCONSOLE_HOME, then "
                        f"`llmconsole engine start`), or ask {owner} to run a shared engine "
                        f"as root")

    def job(self, job_id: int) -> Job:
        try:
            return self.store.get_job(job_id)
        except UnknownJob as err:
            raise NotFound(f"no job {job_id}; see `llmconsole jobs`") from err

    def cancel(self, job_id: int, caller: Caller) -> Job:
        job = self.job(job_id)
        self._authorize(caller, job, "cancel")
        for _ in range(CANCEL_TRIES):
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
            # starting or running: ask the agents; their exit reports end the attempt
            self.store.request_cancel(job.id)
            run = self.running.get(attempt_key(job.id, job.attempt))
            if run is not None:
                run.cancelled_by = caller.name
                self._stop_parts(run)
            return job
        raise Conflict(f"job {job_id} kept changing state; try again")

    def retry(self, job_id: int, caller: Caller) -> Job:
        """Run an ended job again as its next attempt: failed, lost and
        cancelled jobs, and succeeded ones too (a training resumes from its
        last checkpoint, so a succeeded one ends quickly unless its profile
        asks for more)."""
        job = self.job(job_id)
        self._authorize(caller, job, "retry")
        if not job.state.is_terminal():
            raise Conflict(f"job {job_id} is {job.state}; only an ended job can be retried "
                           f"(cancel it first)")
        self._check_can_run_as(Caller.from_uid(job.owner_uid))
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

    def drain(self, node_name: str, reason: str, caller: Caller) -> dict[str, Any]:
        """No new work on the node (its running attempts go on); remembered
        across engine restarts."""
        node = self._admin_node(node_name, caller, "drain")
        if not isinstance(reason, str) or len(reason) > MAX_DRAIN_REASON \
                or not reason.isprintable():
            raise BadRequest(f"reason: expected at most {MAX_DRAIN_REASON} printable characters")
        node.drained = reason
        self._save_drains()
        log.info("node %s drained by %s%s", node.name, caller.name,
                 f": {reason}" if reason else "")
        self.hub.publish({"type": "node", "node": node.name, "up": node.up,
                          "state": node.condition(self.clock()).value})
        return self._node_view(node.name)

    def undrain(self, node_name: str, caller: Caller) -> dict[str, Any]:
        node = self._admin_node(node_name, caller, "undrain")
        node.drained = None
        self._save_drains()
        log.info("node %s undrained by %s", node.name, caller.name)
        self.hub.publish({"type": "node", "node": node.name, "up": node.up,
                          "state": node.condition(self.clock()).value})
        self.kick()
        return self._node_view(node.name)

    async def check(self, node_name: str | None = None) -> list[dict[str, Any]]:
        """`nodes check`: every node (or one), each check ok or not in words;
        the result is also kept on the node (its view's `check`)."""
        if node_name is not None and self.nodes.get(node_name) is None:
            raise NotFound(f"no node {node_name!r} in cluster {self.cluster.name!r} "
                           f"(nodes: {', '.join(self.nodes.states)}); see `llmconsole nodes`")
        names = [node_name] if node_name is not None else list(self.nodes.states)
        results = await asyncio.gather(*(self._check_one(n) for n in names))
        self.hub.publish({"type": "nodes-checked", "nodes": names})
        return list(results)

    async def _check_one(self, name: str) -> dict[str, Any]:
        node = self.nodes[name]
        peers = tuple(wire.Peer(n.host, n.port, n.user, n.identity, self.cluster.known_hosts)
                      for n in self.cluster.nodes if n.host is not None and n.name != name)
        answer, ssh = await asyncio.gather(
            self.nodes.probe(name, peers, doctor.PROBE_TIMEOUT_S),
            asyncio.to_thread(self._ssh_round_trip, node.spec))
        now = self.clock()
        result = doctor.check_node(doctor.Facts(
            name=name, state=node.condition(now).value, state_reason=node.state_reason(now),
            rtt_ms=node.rtt_ms, untrusted=node.untrusted, incompatible=node.incompatible,
            software=node.software, gpus_expected=node.spec.gpus, gpus_seen=node.gpus_seen,
            probe=answer[0] if answer else None, asked_at=answer[1] if answer else None,
            answered_at=now if answer else None, ssh=ssh))
        result["time"] = now
        node.check = result
        return result

    def _ssh_round_trip(self, spec: NodeSpec) -> tuple[bool, str] | None:
        """A short command over the node's shared ssh connection, timed
        (None for the head node, which is reached without ssh)."""
        if spec.is_local:
            return None
        started = time.monotonic()
        try:
            done = ssh_command(spec, ["true"], home=self.home,
                               known_hosts=self.cluster.known_hosts)
        except AgentError as err:
            return False, str(err)
        took = (time.monotonic() - started) * 1000.0
        if done.returncode != 0:
            last = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
            return False, f"ssh {spec.host} true exited {done.returncode}: {last[:200]}"
        return True, f"a short command in {took:.0f} ms"

    def _admin_node(self, node_name: str, caller: Caller, verb: str) -> NodeState:
        node = self.nodes.get(node_name)
        if node is None:
            names = ", ".join(self.nodes.states)
            raise NotFound(f"no node {node_name!r} in cluster {self.cluster.name!r} "
                           f"(nodes: {names}); see `llmconsole nodes`")
        if caller.uid != self.engine_uid and caller.name not in self.cluster.admins:
            raise Forbidden(f"only the engine's owner ({user_name(self.engine_uid)}) or an admin "
                            f"of cluster {self.cluster.name!r} may {verb} a node")
        return node

    def _node_view(self, name: str) -> dict[str, Any]:
        return next(v for v in self.node_views() if v["name"] == name)

    def _load_drains(self) -> None:
        try:
            saved = json.loads((self.home / DRAINS_FILE).read_text())
        except (OSError, ValueError):
            return
        if isinstance(saved, dict):
            for name, reason in saved.items():
                node = self.nodes.get(name)
                if node is not None and isinstance(reason, str):
                    node.drained = reason

    def _save_drains(self) -> None:
        doc = {n.name: n.drained for n in self.nodes if n.drained is not None}
        path = self.home / DRAINS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)

    def log_path(self, job_id: int, number: int) -> Path:
        return self.ingest.log_path(job_id, number)

    def node_views(self) -> list[dict[str, Any]]:
        return views.node_views(self.nodes, self.running.values(), self.clock())

    def job_view(self, job: Job) -> dict[str, Any]:
        return self.job_views([job])[0]

    def job_views(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        """Views of many jobs with two reads of the store (progress and run
        times of their current attempts), whatever their number."""
        keys = [(j.id, j.attempt) for j in jobs]
        progress = self.store.progress(keys)
        times = self.store.run_times(keys)
        return [views.job_view(j, self.running.get(attempt_key(j.id, j.attempt)),
                               self.waiting_reason(j), progress.get((j.id, j.attempt)),
                               times.get((j.id, j.attempt), (None, None)),
                               guard=self.guards.view(j.id, j.attempt))
                for j in jobs]

    def waiting_reason(self, job: Job) -> str | None:
        """Why a waiting job has not started: its dependencies (held), or
        what the last scheduling pass found (queued)."""
        if job.state is JobState.HELD:
            return "waiting for " + ", ".join(f"job {p}" for p in job.after) + " to succeed"
        if job.state is JobState.QUEUED:
            return self._waiting.get(job.id, "waiting for the next scheduling pass")
        return None

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
            self._waiting.clear()
            return 0
        by_id = {j.id: j for j in pending}
        now, wanted = self.clock(), [_pending(j.id, j.spec, j) for j in pending]
        assignments = scheduler.schedule(wanted, self._capacities(), now=now)
        self._wake_at(scheduler.next_due(wanted, now), now)
        placed = {a.job_id for a in assignments}
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
            run = self._running(job, attempt.number, attempt.placements)
            self.running[run.key] = run
            self._launch(run)
            self._announce(job.id)
        self._explain_waits([j for j in pending if j.id not in placed])
        return len(assignments)

    def _wake_at(self, when: float | None, now: float) -> None:
        """A scheduling pass once the first retry backing off may start
        (nothing else kicks one then, e.g. after an engine restart)."""
        if when is None:
            return
        if self._backoff_wake is not None:
            self._backoff_wake.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a pass run by hand, outside the engine's loop
            return
        self._backoff_wake = loop.call_later(max(0.0, when - now) + 0.01, self.kick)

    def _explain_waits(self, waiting: Sequence[Job]) -> None:
        """Why each queued job that did not start waits, in words, from what
        is free after this pass; a job whose reason changed is published."""
        caps = self._capacities()
        now = self.clock()
        states = {n.name: n.condition(now).value for n in self.nodes}
        reasons = {j.id: scheduler.wait_reason(_pending(j.id, j.spec, j), caps, states, now)
                   for j in waiting}
        changed = [j for j in waiting if self._waiting.get(j.id) != reasons[j.id]]
        self._waiting = reasons
        for job in changed:
            self._publish_job(job)

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
        now = self.clock()
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
                labels=node.spec.labels,  # what resources.nodes_with matches, with the name
                # suspect, drained, incompatible or untrusted nodes take no new work
                up=idle or node.condition(now).takes_work(),
            ))
        return caps

    # ------------------------------------------------------------- launching
    def _launch(self, run: Running, only: str | None = None) -> None:
        """Send `start` for every part of the attempt (or only the part on
        node `only`). The agents start an attempt once, whatever is resent."""
        specs = self.nodes.specs()
        env = job_environment(self.base_env, run.spec)
        env.update(placement_environment(run.spec, run.placements, specs))
        env.update(self.guards.launch_env(run.job_id, run.number))  # a guard restart's lr, step
        for part in launch_parts(run.spec, run.placements, specs,
                                 known_hosts=self.cluster.known_hosts):
            if only is not None and part.node != only:
                continue
            self.nodes.send(part.node, wire.Start(
                attempt=run.key, argv=part.argv, env=env, cwd=run.spec.workdir,
                gpus=part.gpus, uid=run.owner_uid))

    def _stop_parts(self, run: Running) -> None:
        for part in run.parts.values():
            if not part.ended:
                self.nodes.send(part.node, wire.Stop(run.key, self.stop_grace))
        self._reap_elsewhere(run)

    async def processes(self, job_id: int) -> list[dict[str, Any]]:
        """Every process of the job's current attempt on every node of its
        allocation (the ranks horovodrun started over SSH included), each with
        its node; [] when the attempt holds no resources."""
        job = self.job(job_id)
        run = self.running.get(attempt_key(job.id, job.attempt))
        if run is None:
            return []
        run_dir = str(self._launch_run_dir(run))
        answers = await asyncio.gather(*(
            self.nodes.procs(node, run.key, run_dir, PROCS_TIMEOUT_S) for node in run.nodes))
        out, seen = [], set()
        for node, got in zip(run.nodes, answers, strict=True):
            machine = getattr(self.nodes.get(node), "machine", None) or node
            for p in got.processes if got is not None else ():
                if (machine, p.get("pid")) not in seen:  # nodes on one machine see the same
                    seen.add((machine, p.get("pid")))
                    out.append({"node": node, **p})
        return out

    def _launch_run_dir(self, run: Running) -> Path:
        """The attempt's run directory on its launching node: the value of the
        LLMCONSOLE_RUN_DIR marker its processes carry, on every node."""
        spec = self.nodes.specs()[run.node]
        root = Path(node_root(spec, self.home))
        root = root.expanduser().resolve() if spec.is_local else root
        return root / "runs" / run.key

    def _reap_elsewhere(self, run: Running) -> None:
        """Ask every node of the allocation that runs no part of the attempt
        (the hosts horovodrun reached over SSH) to end what carries the
        launching node's markers: its ranks outlive a killed horovodrun."""
        others = [n for n in run.nodes if n not in run.parts]
        if not others or run.node not in self.nodes.states:
            return
        reap = wire.Reap(run.key, str(self._launch_run_dir(run)), self.stop_grace)
        for node in others:
            state = self.nodes.get(node)
            if state is not None and not state.up:
                # sent when it says hello again: a node that was away may still run ranks
                self._reaps_due.setdefault(node, {})[run.key] = reap
            self.nodes.send(node, reap)

    # ---------------------------------------------------------------- nodes
    def _on_hello(self, node: NodeState, hello: wire.Hello) -> None:
        self._reconcile(node, hello.runs)
        for reap in self._reaps_due.pop(node.name, {}).values():
            self.nodes.send(node.name, reap)  # ranks of attempts that ended while it was away
        self.kick()

    def _reconcile(self, node: NodeState, reported_runs: Sequence[wire.RunSummary]) -> None:
        """Match what the store says runs on `node` with what its agent has."""
        mine = [r for r in self.running.values() if node.name in r.nodes]
        attempts = {r.key: self.store.get_attempt(r.job_id, r.number) for r in mine}
        known = [health.Known(r.key, attempts[r.key].state is JobState.STARTING,
                              attempts[r.key].cancel_requested, node.name in r.parts)
                 for r in mine]
        reported = [health.Reported(r.attempt, r.alive) for r in reported_runs]
        for key, action in health.reconcile(known, reported):
            run = self.running.get(key)
            part = run.part(node.name) if run is not None else None
            if action is health.Action.STOP:
                # a process the store says has ended (e.g. lost while the node was away)
                self.nodes.send(node.name, wire.Stop(key, self.stop_grace))
            elif run is None or part is None:
                continue
            elif action in (health.Action.ATTACH, health.Action.ATTACH_AND_STOP):
                self.nodes.send(node.name, wire.Attach(key, max(part.log_offset, 0),
                                                       max(part.metric_offset, 0)))
                if action is health.Action.ATTACH_AND_STOP:
                    self.nodes.send(node.name, wire.Stop(key, self.stop_grace))
            elif action is health.Action.LAUNCH:
                self._launch(run, only=node.name)  # never reached the agent; idempotent
            elif action is health.Action.LOSE:
                self._part_ended(run, part, lost=f"node {node.name} has no record of the "
                                 "process", cause=f"run directory missing on node {node.name}")

    async def _watchdog_loop(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_EVERY_S)
            attempts = [health.AttemptNodes(r.key, r.nodes) for r in self.running.values()]
            for lost in health.lost_attempts(self.nodes.statuses(), attempts, self.clock(),
                                             self.lost_after):
                run = self.running.get(lost.key)
                if run is None:
                    continue
                self._stop_parts(run)  # whatever still runs on the nodes that answer
                try:
                    self._end(run, JobState.LOST, cause=f"node {lost.node} unreachable",
                              reason=lost.reason)
                except StoreError as err:  # a full disk: it stays running, tried next beat
                    log.warning("%s: cannot record it lost yet: %s", run.key, err)
            self._record_missed_ends()
            self._watch_stalls()

    def _record_missed_ends(self) -> None:
        """Attempts whose every part has ended but whose end the store did
        not take (its disk was full): record the end now, once it can."""
        for run in [r for r in self.running.values()
                    if r.parts and all(p.ended for p in r.parts.values())]:
            try:
                self._attempt_ended(run, lost_cause=None)
            except StoreError as err:
                log.debug("%s: its end is not recorded yet: %s", run.key, err)

    def _watch_stalls(self) -> None:
        """The stall watch (`engine.guard`): flag a stalled attempt once, ask
        every node of its allocation for stack dumps, then cancel or retry it
        when its profile says so (after the dumps, or STALL_DUMP_WAIT_S)."""
        now = self.clock()
        for stall in self.guards.watch(now):
            run = self.running.get(attempt_key(stall.job_id, stall.number))
            if run is None:
                continue
            log.warning("%s: %s", run.key, stall.words)
            label = f"stalled-step-{stall.last_step if stall.last_step is not None else 0}"
            run_dir = str(self._launch_run_dir(run))  # ranks started over ssh carry it
            for node in run.nodes:
                self.nodes.send(node, wire.Dump(run.key, label, run_dir=run_dir))
            if run.spec.guard is not None and run.spec.guard.on_stall != "flag":
                self._stall_dumps[run.key] = (stall, set(run.nodes))
                asyncio.get_running_loop().call_later(STALL_DUMP_WAIT_S, self._stall_act,
                                                      run.key)
        self._guard_stop_tripped()
        for job_id in self.guards.changed:
            self._announce(job_id)
        self.guards.changed.clear()

    def _stall_act(self, key: str) -> None:
        """Cancel or retry a stalled attempt, once."""
        pending, run = self._stall_dumps.pop(key, None), self.running.get(key)
        if pending is None or run is None or run.spec.guard is None:
            return
        if run.spec.guard.on_stall == "cancel":
            self.store.request_cancel(run.job_id)
            run.cancelled_by = "stall watch"
        else:  # retry: a guard restart from the newest checkpoint
            self.guards.stall_trip(pending[0], self.clock())
            self._guard_stopped.add(run.key)
        self._stop_parts(run)

    def _guard_note(self, job_id: int, number: int, now: float, text: str) -> None:
        try:
            self.store.note(job_id, number, cause=text, actor="engine", now=now)
        except StoreError as err:  # a full disk: the note stays in guard.json
            log.warning("job %s: guard note not recorded (%s): %s", job_id, err, text)

    def _guard_stop_tripped(self) -> None:
        """An attempt the guard tripped before an engine restart (the trip is
        saved first) is stopped once its nodes are back."""
        for run in list(self.running.values()):
            if run.key in self._guard_stopped or \
                    self.guards.tripped(run.job_id, run.number) is None:
                continue
            if all(getattr(self.nodes.get(n), "up", False) for n in run.nodes):
                self._guard_stopped.add(run.key)
                self._stop_parts(run)

    # --------------------------------------------------------------- events
    def _on_event(self, node: NodeState, event: wire.Event) -> None:
        if isinstance(event, wire.Telemetry):
            node.telemetry = self.ingest.telemetry(node.name, event)
            return
        key = getattr(event, "attempt", None)
        run = self.running.get(key) if isinstance(key, str) else None
        part = run.part(node.name) if run is not None else None
        if isinstance(event, wire.Error):
            log.warning("node %s: agent error%s: %s", node.name,
                        f" for {key}" if key else "", event.message)
            if run is not None and part is not None and event.op == "start":
                run.start_error = event.message or "the agent could not start it"
                # a start the agent refused outright is followed by no exit report
                asyncio.get_running_loop().call_later(START_REFUSED_WAIT_S,
                                                      self._start_refused, run)
            return
        if run is not None and isinstance(event, wire.Dumped):
            self._on_dumped(run, node.name, event)
            return
        if run is None or part is None:
            return  # an attempt that has ended, or a node that runs no part of it
        if isinstance(event, wire.Log):
            self.ingest.log(run, part, event)
        elif isinstance(event, wire.Metric):
            fresh = event.offset > part.metric_offset  # not a replay after a re-attach
            self.ingest.metric(run, part, event)
            if fresh and self.guards.metric(run.job_id, run.number, event.record,
                                            self.clock()) is not None:
                self._guard_stopped.add(run.key)
                self._stop_parts(run)  # the loss guard tripped: its reason ends the attempt
        elif isinstance(event, wire.Started):
            self._on_started(run, node.name, event)
        elif isinstance(event, wire.Exited):
            self._part_ended(run, part, code=event.code, sig=event.signal)
        elif isinstance(event, wire.Lost):
            self._part_ended(run, part, lost=event.reason or "process vanished",
                             cause=f"lost on node {node.name}")

    def _on_dumped(self, run: Running, node: str, event: wire.Dumped) -> None:
        self.guards.dumped(run.job_id, run.number, node, tuple(event.files),
                           tuple(event.errors), self.clock())
        self._announce(run.job_id)
        pending = self._stall_dumps.get(run.key)
        if pending is not None:
            pending[1].discard(node)
            if not pending[1]:
                self._stall_act(run.key)

    def _start_refused(self, run: Running) -> None:
        if self.running.get(run.key) is not run:
            return  # its exit was reported after all
        if self.store.get_attempt(run.job_id, run.number).state is JobState.STARTING:
            self._end(run, JobState.FAILED, cause="the agent could not start it",
                      reason=run.start_error, from_state=JobState.STARTING)

    def _on_started(self, run: Running, node: str, event: wire.Started) -> None:
        attempt = self.store.get_attempt(run.job_id, run.number)
        if attempt.state is not JobState.STARTING:
            return  # a re-sent "started" after a re-attach, or another node's part
        self._transition(run, JobState.STARTING, JobState.RUNNING,
                         cause=f"process {event.pid} started on {node}",
                         actor=f"agent@{node}", pid=event.pid)
        self.guards.started(run.job_id, run.number, run.spec, self.clock())

    def _part_ended(self, run: Running, part: Part, *, code: int | None = None,
                    sig: int | None = None, lost: str | None = None,
                    cause: str | None = None) -> None:
        """One node's process of the attempt has ended (or was lost). The
        attempt ends when every part has; the first part to fail stops the
        others, and its reason is the attempt's."""
        if part.ended:
            return
        part.ended, part.code, part.signal, part.lost = True, code, sig, lost
        failed = lost is not None or sig is not None or code != 0
        if failed and run.failure is None and len(run.parts) > 1:
            run.failure = f"on node {part.node}: {_why(part)}"
            self._stop_parts(run)
        if all(p.ended for p in run.parts.values()):
            self._attempt_ended(run, lost_cause=cause)

    def _attempt_ended(self, run: Running, lost_cause: str | None) -> None:
        attempt = self.store.get_attempt(run.job_id, run.number)
        if attempt.state.is_terminal():
            self._forget(run)
            return
        first = run.parts[run.node]
        lost = next((p for p in run.parts.values() if p.lost is not None), None)
        failing = next((p for p in run.parts.values() if _why(p) is not None), None)
        if attempt.cancel_requested:
            state, reason = JobState.CANCELLED, f"cancelled by {run.cancelled_by or 'a user'}"
        elif run.start_error is not None:
            state, reason = JobState.FAILED, run.start_error
        elif (trip := self.guards.tripped(run.job_id, run.number)) is not None:
            state, reason = JobState.FAILED, trip.reason  # the guard stopped it
        elif lost is not None:
            self._end(run, JobState.LOST, cause=lost_cause or f"lost on node {lost.node}",
                      reason=run.failure or lost.lost)
            return
        elif failing is not None and (away := self._node_away(run)) is not None:
            # it failed because a node of its allocation went away (horovodrun
            # ends when the ssh to a rank's node drops): the node lost it
            self._end(run, JobState.LOST, cause=f"node {away.name} went down",
                      reason=f"node {away.name} went down ({away.error}); "
                             f"the job then ended with {_why(failing)}")
            return
        elif failing is None:
            state, reason = JobState.SUCCEEDED, None
        else:
            state, reason = JobState.FAILED, run.failure or _why(failing)
            said = None if run.failure else self.ingest.last_error(run)
            if said:  # the job's own words: "exit code 4: no space left on /x while ..."
                reason = f"{reason}: {said}"
        current = attempt.state
        if current is JobState.STARTING and run.start_error is None:
            # it ran, but its "started" report was missed (an agent restart)
            self._transition(run, JobState.STARTING, JobState.RUNNING,
                             cause="process seen at exit", actor=f"agent@{run.node}")
            current = JobState.RUNNING
        self._end(run, state, cause=reason or "exit code 0", reason=reason,
                  exit_code=first.code, from_state=current)

    def _node_away(self, run: Running) -> NodeState | None:
        """A node of the attempt's allocation that is not connected now."""
        for name in run.nodes:
            node = self.nodes.get(name)
            if node is not None and not node.up:
                return node
        return None

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
        if state is JobState.FAILED and self._guard_restart(run, reason):
            pass
        elif state in (JobState.FAILED, JobState.LOST) and self._may_retry(run):
            n = run.number - self.guards.restarts_before(run.job_id, run.number)
            backoff = scheduler.retry_backoff_s(n, random.random(), base=self.retry_backoff_s)
            self.store.new_attempt(run.job_id, cause=f"automatic retry {n} of "
                                   f"{run.spec.retries} ({reason})", actor="engine",
                                   now=self.clock(), not_before=self.clock() + backoff)
            self._announce(run.job_id)
        self._deps_dirty = True
        self.kick()

    def _guard_restart(self, run: Running, reason: str | None) -> bool:
        """The loss guard's (or stall watch's) restart of an attempt it
        stopped: the next attempt, its lr and resume step recorded first."""
        restart = self.guards.plan(run.job_id, run.number, run.spec)
        if restart is None:
            return False
        self.store.new_attempt(run.job_id, cause=f"{restart.words()} ({reason})",
                               actor="engine", now=self.clock())
        self._announce(run.job_id)
        return True

    def _may_retry(self, run: Running) -> bool:
        """`retries` counts fault retries: guard restarts are bounded by the
        guard's max_restarts instead, and an attempt the guard failed is not
        retried."""
        if self.guards.tripped(run.job_id, run.number) is not None:
            return False
        return run.number - self.guards.restarts_before(run.job_id, run.number) \
            <= run.spec.retries

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
        self._reap_elsewhere(run)  # the attempt has ended: nothing of it may stay anywhere
        self.running.pop(run.key, None)
        self.guards.forget(run.job_id, run.number)
        self._guard_stopped.discard(run.key)
        self.ingest.close(run)
        self.ingest.flush(self.running)
        self.hub.publish({"type": "attempt-ended", "job": run.job_id, "attempt": run.number})

    # ---------------------------------------------------------- persistence
    async def _flush_loop(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            try:
                self.ingest.flush(self.running)
                now = self.clock()
                if now - last_prune > TELEMETRY_PRUNE_EVERY_S:
                    last_prune = now
                    self.store.prune_telemetry(now - self.telemetry_keep_s, now=now)
                self.store.checkpoint_wal()  # the -wal file stays bounded under long readers
            except Exception:
                log.exception("flush failed")

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


def _pending(job_id: int, spec: JobSpec, job: Job | None = None) -> scheduler.PendingJob:
    """The scheduler's view of a queued job; with `job`, its current
    attempt's backoff (not_before) and which retry it is (its attempt number
    less one, at most the policy's retries)."""
    r = spec.resources
    not_before = job.not_before if job is not None else None
    retry = min(job.attempt - 1, spec.retries) if job is not None and not_before else 0
    return scheduler.PendingJob(job_id=job_id, priority=spec.priority, seq=job_id, nodes=r.nodes,
                                gpus_per_node=r.gpus_per_node, cpus=r.cpus,
                                memory_gb=r.memory_gb, nodes_with=r.nodes_with,
                                not_before=not_before, retry=retry, retries=spec.retries)


def _why(part: Part) -> str | None:
    """Why a part failed, or None if it succeeded (or has not ended)."""
    if not part.ended:
        return None
    if part.lost is not None:
        return part.lost
    if part.signal is not None:
        return f"killed by signal {part.signal}"
    if part.code != 0:
        return f"exit code {part.code}"
    return None

