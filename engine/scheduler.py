"""The pure scheduler: `schedule` decides which pending jobs start now and on
which GPUs (priority then submission order, gang all-or-nothing, best fit,
EASY-style backfill around one reservation); `unplaceable_reason` says why a job
can never fit the cluster; `resolve_dependencies` releases or fails held jobs.
No I/O and no clock: the same inputs always give the same answer (the time,
for a job whose automatic retry backs off, is an input: `now`).

A job that asks for `nodes_with` (labels or node names) may only use the
nodes that have every one of them as a label or as their name; everything
below, the reservation and the reasons included, looks only at those nodes
for that job."""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

from engine.hostlists import compress_slurm
from engine.lifecycle import JobState
from engine.model import Placement

__all__ = [
    "Assignment",
    "DependencyDecision",
    "HeldJob",
    "NodeCapacity",
    "PendingJob",
    "RETRY_BACKOFF_BASE_S",
    "RETRY_BACKOFF_CAP_S",
    "nodes_with_reason",
    "resolve_dependencies",
    "backing_off",
    "next_due",
    "retry_backoff_s",
    "schedule",
    "unplaceable_reason",
]


@dataclass(frozen=True)
class PendingJob:
    """A queued job as the scheduler sees it. `cpus` and `memory_gb` are per
    node; the job needs all of its `nodes` at once (gang)."""

    job_id: int
    priority: int  # higher runs first
    seq: int  # submission order, lower = earlier (tie-break after priority)
    nodes: int  # >= 1
    gpus_per_node: int  # >= 0
    cpus: int  # CPU slots per node, >= 1
    memory_gb: float = 0.0  # per node
    nodes_with: tuple[str, ...] = ()  # labels or node names every node used must have
    # Not placed before this time (an automatic retry's backoff); None: at once.
    not_before: float | None = None
    retry: int = 0  # which automatic retry the attempt is, for the words (0: not one)
    retries: int = 0  # how many the job's policy allows


# An automatic retry n waits min(CAP, BASE * 2**(n-1)) seconds, +-JITTER of
# it (so that jobs failed together do not come back together), at most CAP.
RETRY_BACKOFF_BASE_S = 5.0
RETRY_BACKOFF_CAP_S = 300.0
RETRY_JITTER = 0.2


def retry_backoff_s(n: int, u: float, base: float = RETRY_BACKOFF_BASE_S,
                    cap: float = RETRY_BACKOFF_CAP_S) -> float:
    """The wait before automatic retry `n` (1 for the first), for `u` a
    uniform draw in [0, 1] (0.5: no jitter). Never negative, never above
    `cap`."""
    raw = cap if n > 64 else min(cap, base * 2.0 ** max(0, n - 1))
    return max(0.0, min(cap, raw * (1.0 + RETRY_JITTER * (2.0 * u - 1.0))))


def backing_off(job: PendingJob, now: float | None) -> float:
    """Seconds left of the job's backoff at `now` (0: it may be placed)."""
    if now is None or job.not_before is None:
        return 0.0
    return max(0.0, job.not_before - now)


def next_due(pending: Sequence[PendingJob], now: float) -> float | None:
    """The earliest time a job backing off at `now` may be placed (when a
    pass should run again), or None when none waits."""
    times = [j.not_before for j in pending if j.not_before is not None and j.not_before > now]
    return min(times) if times else None


@dataclass(frozen=True)
class NodeCapacity:
    """One node: its totals and what is free right now. Memory is limited only
    when `memory_gb` is not None; then a None `free_memory_gb` means all free."""

    name: str
    gpus: int  # total GPUs
    free_gpus: tuple[int, ...]  # free GPU indices
    slots: int  # total CPU slots
    free_slots: int
    memory_gb: float | None = None  # None = not limited
    free_memory_gb: float | None = None
    up: bool = True  # a down node gets nothing
    labels: tuple[str, ...] = ()  # what jobs' nodes_with match, besides the name


@dataclass(frozen=True)
class Assignment:
    """A decision to start a job: one placement per node, on distinct nodes."""

    job_id: int
    placements: tuple[Placement, ...]


@dataclass(frozen=True)
class HeldJob:
    """A job waiting on other jobs (`after`) before it may be queued."""

    job_id: int
    after: tuple[int, ...]


@dataclass(frozen=True)
class DependencyDecision:
    """What to do with held jobs: `release` moves them to queued, `fail` ends
    them with the reason. Jobs in neither list stay held."""

    release: tuple[int, ...]
    fail: tuple[tuple[int, str], ...]


# (nodes, gpus_per_node, cpus, memory_gb, nodes_with): everything that decides
# whether a job fits. Free capacity only shrinks during a pass, so a shape that
# failed once fails again, and so does every shape at least as large in every
# number that asks for at least the same nodes_with (more entries, fewer nodes).
_Shape = tuple[int, int, int, float, frozenset[str]]

# Sort key of a node with free capacity: best fit is the smallest key that
# suffices (fewest free GPUs, then fewest free slots, then name).
_FitKey = tuple[int, int, str]

_BY_SEQ = attrgetter("seq")
_BY_PRIORITY = attrgetter("priority")


class _FreeNode:
    """The mutable free capacity of one up node during one pass."""

    __slots__ = ("name", "tags", "free_gpus", "free_slots", "free_memory_gb")

    def __init__(self, node: NodeCapacity) -> None:
        self.name = node.name
        self.tags = _tags(node)
        self.free_gpus: list[int] = sorted(set(node.free_gpus))
        self.free_slots = max(0, node.free_slots)
        self.free_memory_gb: float | None = _free_memory(node)

    def fit_key(self) -> _FitKey:
        return (len(self.free_gpus), self.free_slots, self.name)


def _tags(node: NodeCapacity) -> frozenset[str]:
    """What a job's nodes_with may name to ask for `node`: its labels and name."""
    return frozenset((*node.labels, node.name))


def _shape(job: PendingJob) -> _Shape:
    return (job.nodes, job.gpus_per_node, job.cpus, job.memory_gb, frozenset(job.nodes_with))


def _free_memory(node: NodeCapacity) -> float | None:
    if node.memory_gb is None:
        return None
    if node.free_memory_gb is None:
        return node.memory_gb
    return node.free_memory_gb


def _is_valid(shape: _Shape) -> bool:
    nodes, gpus_per_node, cpus, memory_gb, _ = shape
    return nodes >= 1 and gpus_per_node >= 0 and cpus >= 1 and memory_gb >= 0


def _is_dominated(shape: _Shape, failed: list[_Shape]) -> bool:
    """True when some failed shape is no larger than `shape` in every number
    and asks for no more than `shape` does in nodes_with."""
    nodes, gpus_per_node, cpus, memory_gb, wanted = shape
    for f_nodes, f_gpus, f_cpus, f_memory, f_wanted in failed:
        if nodes >= f_nodes and gpus_per_node >= f_gpus and cpus >= f_cpus and (
            memory_gb >= f_memory
        ) and f_wanted <= wanted:
            return True
    return False


def _best_fit(
    fit_keys: list[_FitKey], free_by_name: dict[str, _FreeNode], shape: _Shape
) -> list[_FreeNode] | None:
    """The `nodes` best-fitting qualifying nodes with room for `shape`, or None."""
    nodes, gpus_per_node, cpus, memory_gb, wanted = shape
    chosen: list[_FreeNode] = []
    for index in range(bisect_left(fit_keys, (gpus_per_node, cpus)), len(fit_keys)):
        _, free_slots, name = fit_keys[index]
        if free_slots < cpus:
            continue
        node = free_by_name[name]
        if node.free_memory_gb is not None and node.free_memory_gb < memory_gb:
            continue
        if wanted and not wanted <= node.tags:
            continue
        chosen.append(node)
        if len(chosen) == nodes:
            return chosen
    return None


def _take(
    fit_keys: list[_FitKey], chosen: list[_FreeNode], shape: _Shape
) -> tuple[Placement, ...]:
    """Consume `shape` on each chosen node (lowest GPU indices first). A node
    left without a free slot leaves `fit_keys`: every job needs a slot."""
    _, gpus_per_node, cpus, memory_gb, _ = shape
    placements = []
    for node in chosen:
        del fit_keys[bisect_left(fit_keys, node.fit_key())]
        taken = tuple(node.free_gpus[:gpus_per_node])
        del node.free_gpus[:gpus_per_node]
        node.free_slots -= cpus
        if node.free_memory_gb is not None:
            node.free_memory_gb -= memory_gb
        if node.free_slots > 0:
            insort(fit_keys, node.fit_key())
        placements.append(Placement(node=node.name, gpus=taken, cpus=cpus))
    return tuple(placements)


def _can_host(node: NodeCapacity, shape: _Shape) -> bool:
    """Whether `node`, completely idle, qualifies for and has room for one
    node of `shape`."""
    _, gpus_per_node, cpus, memory_gb, wanted = shape
    return (
        node.gpus >= gpus_per_node
        and node.slots >= cpus
        and (node.memory_gb is None or node.memory_gb >= memory_gb)
        and (not wanted or wanted <= _tags(node))
    )


def _reservation(
    up_nodes: Sequence[NodeCapacity], free_by_name: dict[str, _FreeNode], shape: _Shape
) -> list[str] | None:
    """The names of the up nodes a blocked head job would wait for, or None
    when the up nodes could not host it even when idle."""
    if not _is_valid(shape):
        return None
    hosts = [node for node in up_nodes if _can_host(node, shape)]
    if len(hosts) < shape[0]:
        return None

    def preference(node: NodeCapacity) -> tuple[int, int, int, int, str]:
        free = free_by_name[node.name]
        return (-node.gpus, -node.slots, -len(free.free_gpus), -free.free_slots, node.name)

    hosts.sort(key=preference)
    return [node.name for node in hosts[: shape[0]]]


def _check_unique_names(nodes: Sequence[NodeCapacity]) -> None:
    seen: set[str] = set()
    repeated: set[str] = set()
    for node in nodes:
        (repeated if node.name in seen else seen).add(node.name)
    if repeated:
        raise ValueError(f"node names must be unique; repeated: {', '.join(sorted(repeated))}")


def schedule(pending: Sequence[PendingJob], nodes: Sequence[NodeCapacity],
             now: float | None = None) -> list[Assignment]:
    """Decide which pending jobs start now. Returns the assignments in
    scheduling order (priority descending, then seq ascending); jobs that do
    not fit, or are invalid, are left out. Raises ValueError when two nodes
    share a name.

    Each job gets `nodes` distinct up nodes among those that qualify for its
    `nodes_with`, the best fit first (fewest free GPUs that suffice, then
    fewest free slots, then name), and the lowest free GPU indices there.
    Backfill without runtime estimates: the first job in order that does not
    fit (the head) reserves all currently free resources of the `nodes` up
    qualifying nodes that could host it (most total GPUs, then total slots,
    then most free GPUs, then most free slots, then name); later jobs
    only get resources outside that reservation. A blocked job that the up
    nodes could not host even when idle (invalid, too big for the cluster, or
    needing nodes that are down) reserves nothing, and the next blocked job
    may become the head. A job whose `not_before` is after `now` (backing
    off; `now` None: none is) is passed over and reserves nothing.
    """
    _check_unique_names(nodes)
    ordered = sorted(pending, key=_BY_SEQ)
    ordered.sort(key=_BY_PRIORITY, reverse=True)  # stable: seq order kept within a priority

    up_nodes = [node for node in nodes if node.up]
    # The free capacity of every up node, and the fit keys of those that can
    # still take a job: a free slot and not reserved.
    free_by_name = {node.name: _FreeNode(node) for node in up_nodes}
    fit_keys = sorted(free.fit_key() for free in free_by_name.values() if free.free_slots > 0)

    assignments: list[Assignment] = []
    failed_shapes: set[_Shape] = set()  # every shape known not to fit any more
    minimal_failures: list[_Shape] = []  # failed valid shapes, for dominance
    head_reserved = False
    never_reservable: set[_Shape] = set()
    most_free_gpus = fit_keys[-1][0] if fit_keys else -1

    for job in ordered:
        if not fit_keys:
            break
        if backing_off(job, now):
            continue
        gpus_per_node = job.gpus_per_node
        shape = _shape(job)
        if gpus_per_node <= most_free_gpus:
            if shape not in failed_shapes:
                if _is_valid(shape) and not _is_dominated(shape, minimal_failures):
                    chosen = _best_fit(fit_keys, free_by_name, shape)
                    if chosen is not None:
                        placements = _take(fit_keys, chosen, shape)
                        assignments.append(Assignment(job_id=job.job_id, placements=placements))
                        most_free_gpus = fit_keys[-1][0] if fit_keys else -1
                        continue
                    minimal_failures.append(shape)
                failed_shapes.add(shape)
        if head_reserved:
            continue
        # The job is blocked and no reservation exists yet: it becomes the
        # head if the up nodes could ever host it.
        if shape in never_reservable:
            continue
        reserved = _reservation(up_nodes, free_by_name, shape)
        if reserved is None:
            never_reservable.add(shape)
            continue
        head_reserved = True
        for name in reserved:
            free = free_by_name[name]
            if free.free_slots > 0:  # still in fit_keys: only one reservation is made
                del fit_keys[bisect_left(fit_keys, free.fit_key())]
        most_free_gpus = fit_keys[-1][0] if fit_keys else -1
    return assignments


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _names(nodes: Sequence[NodeCapacity]) -> str:
    """The nodes' names for a reason line, in Slurm's short form where they
    allow it (``gpu[01-04], head``)."""
    names = [node.name for node in nodes]
    try:
        return compress_slurm(names, separator=", ")
    except ValueError:  # a name with brackets or commas: listed as it is
        return ", ".join(names)


def nodes_with_reason(job: PendingJob, nodes: Sequence[NodeCapacity]) -> str | None:
    """Why no node (up or not) qualifies for the job's `nodes_with`, or None
    if one does (or it asks for none). Labels and names come from the cluster
    profile, so this holds before any node has said what it has."""
    tags = [_tags(node) for node in nodes]
    wanted = frozenset(job.nodes_with)
    if not wanted or any(wanted <= have for have in tags):
        return None
    if not nodes:
        return "the cluster has no nodes; add nodes to the cluster profile"
    missing = [want for want in job.nodes_with if not any(want in have for have in tags)]
    fix = ("; name labels or node names of the cluster profile in resources.nodes_with, or "
           "add the label to a node there")
    if missing:
        what = " nor label ".join(missing)
        return f"no node has label {what} (nodes: {_names(nodes)}){fix}"
    return (f"no node has all of {', '.join(job.nodes_with)} as labels or name "
            f"(nodes: {_names(nodes)}){fix}")


def unplaceable_reason(job: PendingJob, nodes: Sequence[NodeCapacity]) -> str | None:
    """None if `job` would fit the cluster when it is completely idle (every
    defined node, up or not, with everything free); else a one-line reason
    naming the numbers and the setting to change. With `nodes_with`, only
    the qualifying nodes count, and a job that no node qualifies for is told
    which labels no node has, naming the nodes."""
    if job.nodes < 1:
        return f"asks for {job.nodes} nodes; set resources.nodes to at least 1"
    if job.gpus_per_node < 0:
        return (
            f"asks for {job.gpus_per_node} GPUs per node; "
            "set resources.gpus_per_node to 0 or more"
        )
    if job.cpus < 1:
        return f"asks for {job.cpus} CPU slots per node; set resources.cpus to at least 1"
    if not job.memory_gb >= 0:
        return (
            f"asks for {job.memory_gb:g} GB memory per node; "
            "set resources.memory_gb to 0 or more"
        )
    if not nodes:
        return "the cluster has no nodes; add nodes to the cluster profile"
    scope = fix = ""
    pool = list(nodes)
    if job.nodes_with:
        reason = nodes_with_reason(job, nodes)
        if reason is not None:
            return reason
        wanted = frozenset(job.nodes_with)
        pool = [node for node in nodes if wanted <= _tags(node)]
        scope = " with " + ", ".join(job.nodes_with)
        fix = " or change resources.nodes_with"
    if job.nodes > len(pool):
        if not scope:
            return (
                f"asks for {_plural(job.nodes, 'node')} but the cluster has {len(nodes)}; "
                "lower resources.nodes"
            )
        return (
            f"asks for {_plural(job.nodes, 'node')}{scope} but the cluster has {len(pool)} "
            f"({_names(pool)}); lower resources.nodes{fix}"
        )
    largest_gpus = max(node.gpus for node in pool)
    if job.gpus_per_node > largest_gpus:
        return (
            f"asks for {_plural(job.gpus_per_node, 'GPU')} per node but the largest node"
            f"{scope} has {largest_gpus}; lower resources.gpus_per_node{fix}"
        )
    largest_slots = max(node.slots for node in pool)
    if job.cpus > largest_slots:
        return (
            f"asks for {_plural(job.cpus, 'CPU slot')} per node but the largest node{scope} "
            f"has {largest_slots}; lower resources.cpus{fix}"
        )
    limits = [node.memory_gb for node in pool]
    if None not in limits:
        largest_memory = max(limit for limit in limits if limit is not None)
        if job.memory_gb > largest_memory:
            return (
                f"asks for {job.memory_gb:g} GB memory per node but the largest node{scope} "
                f"has {largest_memory:g} GB; lower resources.memory_gb{fix}"
            )
    shape = _shape(job)
    hosts = sum(1 for node in pool if _can_host(node, shape))
    if hosts < job.nodes:
        memory = f", {job.memory_gb:g} GB memory" if job.memory_gb > 0 else ""
        return (
            f"asks for {_plural(job.nodes, 'node')} with {_plural(job.gpus_per_node, 'GPU')}, "
            f"{_plural(job.cpus, 'CPU slot')}{memory} each but only {_plural(hosts, 'node')}"
            f"{scope} can host that; lower resources.nodes or the per-node resources{fix}"
        )
    return None


def wait_reason(job: PendingJob, nodes: Sequence[NodeCapacity],
                states: Mapping[str, str] | None = None, now: float | None = None) -> str:
    """Why a queued job did not start at the last pass, in words, from what is
    free now: "needs 1 node with 2 CPU slots free; 0 of 1 up nodes has that
    now (local: 1 of 2 slots free)", with the nodes that take no work named
    by their state ("node gpu2 drained"). `states`: node name -> its state
    word, for nodes that are not up. A job backing off at `now`: "retry 2 of
    3 waits 10 s (backoff)"."""
    wait = backing_off(job, now)
    if wait:
        which = f"retry {job.retry} of {job.retries}" if job.retry else "the retry"
        return f"{which} waits {math.ceil(wait)} s (backoff)"
    states = states or {}
    pool = list(nodes)
    if job.nodes_with:
        wanted = frozenset(job.nodes_with)
        pool = [node for node in nodes if wanted <= _tags(node)]
    away = [node for node in pool if not node.up]
    up = [node for node in pool if node.up]
    shape = _shape(job)
    fits = [node for node in up if _fits_now(node, shape)]
    scope = (" with " + ", ".join(job.nodes_with)) if job.nodes_with else ""
    memory = f", {job.memory_gb:g} GB memory" if job.memory_gb > 0 else ""
    gpus = f"{_plural(job.gpus_per_node, 'GPU')} and " if job.gpus_per_node else ""
    if len(fits) >= job.nodes:
        why = "behind jobs of higher priority or earlier, which the free resources are kept for"
    else:
        free = ", ".join(
            f"{node.name}: {node.free_slots} of {node.slots} slots"
            + (f", {len(node.free_gpus)} of {node.gpus} GPUs" if node.gpus else "") + " free"
            for node in up[:4]) + (", ..." if len(up) > 4 else "")
        why = (f"needs {_plural(job.nodes, 'node')}{scope} with {gpus}"
               f"{_plural(job.cpus, 'CPU slot')}{memory} free; {len(fits)} of "
               f"{_plural(len(up), 'up node')} {'has' if len(fits) == 1 else 'have'} that now"
               + (f" ({free})" if up else ""))
    if away:
        why += "; " + ", ".join(f"node {node.name} {states.get(node.name, 'down')}"
                                for node in away[:4]) + (", ..." if len(away) > 4 else "")
    return why


def _fits_now(node: NodeCapacity, shape: _Shape) -> bool:
    _nodes, gpus_per_node, cpus, memory_gb, _with = shape
    if len(node.free_gpus) < gpus_per_node or node.free_slots < cpus:
        return False
    if node.memory_gb is None or node.free_memory_gb is None:
        return True
    return node.free_memory_gb >= memory_gb


def _cycles(held: Sequence[HeldJob]) -> dict[int, tuple[int, ...]]:
    """Held jobs that wait, directly or not, on themselves, each mapped to
    the sorted members of its cycle. Tarjan's strongly connected components,
    iterative, over the held jobs only: O(jobs + edges)."""
    after_by_id = {job.job_id: job.after for job in held}
    index_of: dict[int, int] = {}
    lowlink: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    cycles: dict[int, tuple[int, ...]] = {}
    for root in after_by_id:
        if root in index_of:
            continue
        work: list[tuple[int, int]] = [(root, 0)]  # (job, next parent position)
        while work:
            job_id, position = work.pop()
            if position == 0:
                index_of[job_id] = lowlink[job_id] = len(index_of)
                stack.append(job_id)
                on_stack.add(job_id)
            parents = after_by_id[job_id]
            descended = False
            while position < len(parents):
                parent = parents[position]
                position += 1
                if parent not in after_by_id:
                    continue
                if parent not in index_of:
                    work.append((job_id, position))
                    work.append((parent, 0))
                    descended = True
                    break
                if parent in on_stack:
                    lowlink[job_id] = min(lowlink[job_id], index_of[parent])
            if descended:
                continue
            if lowlink[job_id] == index_of[job_id]:
                component: list[int] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == job_id:
                        break
                if len(component) > 1 or job_id in after_by_id[job_id]:
                    members = tuple(sorted(component))
                    for member in component:
                        cycles[member] = members
            if work:
                caller = work[-1][0]
                lowlink[caller] = min(lowlink[caller], lowlink[job_id])
    return cycles


def resolve_dependencies(
    held: Sequence[HeldJob], parent_states: Mapping[int, JobState]
) -> DependencyDecision:
    """Release held jobs whose parents all SUCCEEDED; fail those with a parent
    that ended otherwise, that is unknown, or that waits on the job itself (a
    cycle). Jobs whose parents are still on their way stay held. The first
    parent in `after` order that dooms a job gives the reason."""
    release: list[int] = []
    fail: list[tuple[int, str]] = []
    cycles: dict[int, tuple[int, ...]] | None = None
    for job in held:
        reason: str | None = None
        waiting = False
        for parent in job.after:
            state = parent_states.get(parent)
            if state is None:
                reason = f"dependency job {parent} does not exist"
                break
            if state is JobState.SUCCEEDED:
                continue
            if state.is_terminal():
                reason = f"dependency job {parent} ended {state.value}"
                break
            waiting = True
        if reason is not None:
            fail.append((job.job_id, reason))
        elif not waiting:
            release.append(job.job_id)
        else:
            if cycles is None:
                cycles = _cycles(held)
            cycle = cycles.get(job.job_id)
            if cycle is not None:
                members = ", ".join(str(member) for member in cycle)
                fail.append((job.job_id, f"dependency cycle among jobs {members}"))
    return DependencyDecision(release=tuple(release), fail=tuple(fail))
