"""Tests of the pure scheduler: hypothesis properties (no GPU given twice,
capacity never exceeded, gang all-or-nothing, order, backfill, determinism,
only nodes with every label or name of a job's nodes_with) plus examples for
best fit, backfill, nodes_with, unplaceable reasons and dependencies."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.lifecycle import JobState
from engine.model import Placement
from engine.scheduler import (
    Assignment,
    DependencyDecision,
    HeldJob,
    NodeCapacity,
    PendingJob,
    nodes_with_reason,
    resolve_dependencies,
    schedule,
    unplaceable_reason,
)

MEMORY_TOLERANCE = 1e-9


# --- helpers ---------------------------------------------------------------


def node(
    name: str,
    gpus: int = 8,
    free: Sequence[int] | None = None,
    slots: int = 64,
    free_slots: int | None = None,
    memory_gb: float | None = None,
    free_memory_gb: float | None = None,
    up: bool = True,
    labels: Sequence[str] = (),
) -> NodeCapacity:
    return NodeCapacity(
        name=name,
        gpus=gpus,
        free_gpus=tuple(range(gpus)) if free is None else tuple(free),
        slots=slots,
        free_slots=slots if free_slots is None else free_slots,
        memory_gb=memory_gb,
        free_memory_gb=free_memory_gb,
        up=up,
        labels=tuple(labels),
    )


def job(
    job_id: int,
    gpus: int = 1,
    nodes: int = 1,
    cpus: int = 1,
    priority: int = 0,
    seq: int | None = None,
    memory_gb: float = 0.0,
    nodes_with: Sequence[str] = (),
) -> PendingJob:
    return PendingJob(
        job_id=job_id,
        priority=priority,
        seq=job_id if seq is None else seq,
        nodes=nodes,
        gpus_per_node=gpus,
        cpus=cpus,
        memory_gb=memory_gb,
        nodes_with=tuple(nodes_with),
    )


def idle(nodes: Sequence[NodeCapacity]) -> list[NodeCapacity]:
    """The same nodes, up, with everything free."""
    return [
        NodeCapacity(
            name=n.name,
            gpus=n.gpus,
            free_gpus=tuple(range(n.gpus)),
            slots=n.slots,
            free_slots=n.slots,
            memory_gb=n.memory_gb,
            free_memory_gb=n.memory_gb,
            up=True,
            labels=n.labels,
        )
        for n in nodes
    ]


def qualifies(n: NodeCapacity, j: PendingJob) -> bool:
    """Reference check: the node has every nodes_with entry as a label or name."""
    return all(want in n.labels or want == n.name for want in j.nodes_with)


def scheduling_order(pending: Sequence[PendingJob]) -> list[PendingJob]:
    return sorted(pending, key=lambda j: (-j.priority, j.seq))


def free_memory(n: NodeCapacity) -> float | None:
    if n.memory_gb is None:
        return None
    return n.memory_gb if n.free_memory_gb is None else n.free_memory_gb


def node_fits(n: NodeCapacity, j: PendingJob) -> bool:
    """Reference check: one node of `j` fits the node's current free capacity."""
    memory = free_memory(n)
    return (
        n.up
        and qualifies(n, j)
        and len(set(n.free_gpus)) >= j.gpus_per_node
        and n.free_slots >= j.cpus
        and (memory is None or memory >= j.memory_gb)
    )


def fits_now(j: PendingJob, nodes: Sequence[NodeCapacity]) -> bool:
    return sum(1 for n in nodes if node_fits(n, j)) >= j.nodes


def hostable_by_up_nodes(j: PendingJob, nodes: Sequence[NodeCapacity]) -> bool:
    """Whether the up nodes, completely idle, could host `j` (a job that could
    hold the backfill reservation)."""
    return unplaceable_reason(j, idle([n for n in nodes if n.up])) is None


def reference_schedule(
    pending: Sequence[PendingJob], nodes: Sequence[NodeCapacity]
) -> list[Assignment]:
    """The documented semantics written the slow, obvious way: every job
    looks at every node."""
    free = {
        n.name: (sorted(set(n.free_gpus)), max(0, n.free_slots), free_memory(n))
        for n in nodes
        if n.up
    }
    totals = {n.name: n for n in nodes if n.up}
    reserved: set[str] = set()
    head_found = False
    result = []
    for j in scheduling_order(pending):
        valid = j.nodes >= 1 and j.gpus_per_node >= 0 and j.cpus >= 1 and j.memory_gb >= 0
        candidates = [
            name
            for name, (gpus, slots, memory) in free.items()
            if valid
            and name not in reserved
            and qualifies(totals[name], j)
            and len(gpus) >= j.gpus_per_node
            and slots >= j.cpus
            and (memory is None or memory >= j.memory_gb)
        ]
        candidates.sort(key=lambda name: (len(free[name][0]), free[name][1], name))
        if valid and len(candidates) >= j.nodes:
            placements = []
            for name in candidates[: j.nodes]:
                gpus, slots, memory = free[name]
                taken = tuple(gpus[: j.gpus_per_node])
                free[name] = (
                    gpus[j.gpus_per_node :],
                    slots - j.cpus,
                    None if memory is None else memory - j.memory_gb,
                )
                placements.append(Placement(name, taken, j.cpus))
            result.append(Assignment(j.job_id, tuple(placements)))
        elif not head_found and valid and hostable_by_up_nodes(j, nodes):
            hosts = [
                name
                for name, n in totals.items()
                if qualifies(n, j)
                and n.gpus >= j.gpus_per_node
                and n.slots >= j.cpus
                and (n.memory_gb is None or n.memory_gb >= j.memory_gb)
            ]
            hosts.sort(
                key=lambda name: (
                    -totals[name].gpus,
                    -totals[name].slots,
                    -len(free[name][0]),
                    -free[name][1],
                    name,
                )
            )
            reserved = set(hosts[: j.nodes])
            head_found = True
    return result


def check_valid(
    assignments: list[Assignment], pending: Sequence[PendingJob], nodes: Sequence[NodeCapacity]
) -> None:
    """Everything a pass must never do wrong, checked against the inputs."""
    jobs = {j.job_id: j for j in pending}
    by_name = {n.name: n for n in nodes}
    assigned_ids = [a.job_id for a in assignments]
    assert len(assigned_ids) == len(set(assigned_ids)), "a job assigned twice"
    taken_gpus: dict[str, list[int]] = defaultdict(list)
    used_slots: dict[str, int] = defaultdict(int)
    used_memory: dict[str, float] = defaultdict(float)
    for a in assignments:
        j = jobs[a.job_id]
        names = [p.node for p in a.placements]
        assert len(names) == j.nodes, "gang not placed on exactly job.nodes nodes"
        assert len(set(names)) == len(names), "a gang uses a node twice"
        for p in a.placements:
            n = by_name[p.node]
            assert n.up, f"down node {n.name} got job {j.job_id}"
            assert len(p.gpus) == j.gpus_per_node
            assert p.cpus == j.cpus
            remaining = sorted(set(n.free_gpus) - set(taken_gpus[n.name]))
            assert list(p.gpus) == remaining[: j.gpus_per_node], "not the lowest free GPUs"
            taken_gpus[n.name].extend(p.gpus)
            used_slots[n.name] += j.cpus
            used_memory[n.name] += j.memory_gb
    for name, gpus in taken_gpus.items():
        n = by_name[name]
        assert len(gpus) == len(set(gpus)), f"a GPU on {name} given twice"
        assert set(gpus) <= set(n.free_gpus), f"a busy GPU on {name} given"
        assert used_slots[name] <= n.free_slots, f"slots on {name} exceeded"
        memory = free_memory(n)
        if memory is not None:
            assert used_memory[name] <= memory + MEMORY_TOLERANCE, f"memory on {name} exceeded"


# --- strategies ------------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn, max_nodes: int = 6) -> list[NodeCapacity]:
    count = draw(st.integers(min_value=1, max_value=max_nodes))
    result = []
    for index in range(count):
        # Few distinct sizes, so ties (best fit, reservation) are common.
        gpus = draw(st.sampled_from([0, 1, 2, 4, 8]))
        free = draw(st.sets(st.integers(min_value=0, max_value=max(gpus - 1, 0)), max_size=gpus))
        if gpus == 0:
            free = set()
        slots = draw(st.sampled_from([1, 4, 8, 16]))
        free_slots = draw(st.integers(min_value=0, max_value=slots))
        memory_gb = draw(st.one_of(st.none(), st.sampled_from([8.0, 16.0, 32.0, 64.0])))
        free_memory_gb = None
        if memory_gb is not None:
            free_memory_gb = draw(st.floats(min_value=0.0, max_value=memory_gb))
        result.append(
            NodeCapacity(
                name=f"n{index}",
                gpus=gpus,
                free_gpus=tuple(sorted(free)),
                slots=slots,
                free_slots=free_slots,
                memory_gb=memory_gb,
                free_memory_gb=free_memory_gb,
                up=draw(st.booleans()) if index else True,
                labels=tuple(draw(st.sets(st.sampled_from(LABELS), max_size=2))),
            )
        )
    return result


# What nodes carry and jobs ask for: labels, and names the strategies give nodes.
LABELS = ("a100", "ib", "cpu")
WANTED = (*LABELS, "n0", "n1", "n5", "nowhere")


@st.composite
def pending_jobs(draw: st.DrawFn, max_jobs: int = 12) -> list[PendingJob]:
    count = draw(st.integers(min_value=0, max_value=max_jobs))
    seqs = draw(st.permutations(list(range(count))))
    return [
        PendingJob(
            job_id=100 + index,
            priority=draw(st.integers(min_value=0, max_value=3)),
            seq=seqs[index],
            nodes=draw(st.integers(min_value=1, max_value=3)),
            gpus_per_node=draw(st.integers(min_value=0, max_value=5)),
            cpus=draw(st.integers(min_value=1, max_value=8)),
            memory_gb=draw(st.sampled_from([0.0, 0.1, 4.0, 12.5, 30.0])),
            # mostly any node; sometimes labels or names, rarely one nobody has
            nodes_with=tuple(draw(st.one_of(
                st.just(()), st.lists(st.sampled_from(WANTED), max_size=2, unique=True)))),
        )
        for index in range(count)
    ]


# --- properties ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(pending=pending_jobs(), nodes=clusters())
def test_pass_never_overcommits_and_places_gangs_whole(
    pending: list[PendingJob], nodes: list[NodeCapacity]
) -> None:
    assignments = schedule(pending, nodes)
    check_valid(assignments, pending, nodes)


@settings(max_examples=150, deadline=None)
@given(pending=pending_jobs(max_jobs=40), nodes=clusters(max_nodes=4))
def test_crowded_pass_never_overcommits(
    pending: list[PendingJob], nodes: list[NodeCapacity]
) -> None:
    # Many jobs for few nodes: exercises the failed-shape shortcuts.
    assignments = schedule(pending, nodes)
    check_valid(assignments, pending, nodes)


@settings(max_examples=150, deadline=None)
@given(pending=pending_jobs(), nodes=clusters())
def test_assignments_come_in_priority_then_submission_order(
    pending: list[PendingJob], nodes: list[NodeCapacity]
) -> None:
    rank = {j.job_id: (-j.priority, j.seq) for j in pending}
    ranks = [rank[a.job_id] for a in schedule(pending, nodes)]
    assert ranks == sorted(ranks)


@settings(max_examples=150, deadline=None)
@given(pending=pending_jobs(), nodes=clusters(), seed=st.integers(0, 2**16))
def test_result_does_not_depend_on_input_order(
    pending: list[PendingJob], nodes: list[NodeCapacity], seed: int
) -> None:
    shuffled_pending = list(pending)
    shuffled_nodes = list(nodes)
    rng = random.Random(seed)
    rng.shuffle(shuffled_pending)
    rng.shuffle(shuffled_nodes)
    assert schedule(shuffled_pending, shuffled_nodes) == schedule(pending, nodes)


@settings(max_examples=150, deadline=None)
@given(single=pending_jobs(max_jobs=1), nodes=clusters())
def test_job_that_fits_idle_cluster_is_placed_when_alone_on_it(
    single: list[PendingJob], nodes: list[NodeCapacity]
) -> None:
    cluster = idle(nodes)
    for j in single:
        placed = [a.job_id for a in schedule([j], cluster)]
        if unplaceable_reason(j, cluster) is None:
            assert placed == [j.job_id]
        else:
            assert placed == []


@settings(max_examples=150, deadline=None)
@given(pending=pending_jobs(), nodes=clusters())
def test_highest_ordered_job_that_fits_is_placed(
    pending: list[PendingJob], nodes: list[NodeCapacity]
) -> None:
    ordered = scheduling_order(pending)
    first_fitting = next((i for i, j in enumerate(ordered) if fits_now(j, nodes)), None)
    placed = {a.job_id for a in schedule(pending, nodes)}
    if first_fitting is None:
        assert placed == set()
        return
    # Nothing before it fits the current capacity, so only a backfill
    # reservation held by an earlier job could keep it from starting.
    earlier_can_reserve = any(hostable_by_up_nodes(j, nodes) for j in ordered[:first_fitting])
    if not earlier_can_reserve:
        assert ordered[first_fitting].job_id in placed
    if first_fitting == 0:
        assert ordered[0].job_id in placed


@settings(max_examples=400, deadline=None)
@given(pending=pending_jobs(max_jobs=30), nodes=clusters())
def test_pass_matches_the_plain_reference_scheduler(
    pending: list[PendingJob], nodes: list[NodeCapacity]
) -> None:
    # The reference has none of the shortcuts (failed shapes, early stop,
    # sorted fit keys), so any difference is a shortcut that is wrong.
    assert schedule(pending, nodes) == reference_schedule(pending, nodes)


@settings(max_examples=150, deadline=None)
@given(pending=pending_jobs(), nodes=clusters())
def test_down_nodes_get_nothing(pending: list[PendingJob], nodes: list[NodeCapacity]) -> None:
    down = {n.name for n in nodes if not n.up}
    used = {p.node for a in schedule(pending, nodes) for p in a.placements}
    assert not used & down


@settings(max_examples=150, deadline=None)
@given(pending=pending_jobs(), nodes=clusters())
def test_a_placement_only_ever_uses_qualifying_nodes(
    pending: list[PendingJob], nodes: list[NodeCapacity]
) -> None:
    jobs = {j.job_id: j for j in pending}
    by_name = {n.name: n for n in nodes}
    for a in schedule(pending, nodes):
        for p in a.placements:
            n, j = by_name[p.node], jobs[a.job_id]
            assert all(want in n.labels or want == n.name for want in j.nodes_with), (
                f"job {j.job_id} asks for {j.nodes_with}, got {n.name} {n.labels}")


@settings(max_examples=150, deadline=None)
@given(pending=pending_jobs(), nodes=clusters())
def test_schedule_is_pure(pending: list[PendingJob], nodes: list[NodeCapacity]) -> None:
    pending_before = list(pending)
    nodes_before = list(nodes)
    first = schedule(pending, nodes)
    assert schedule(pending, nodes) == first
    assert pending == pending_before and nodes == nodes_before


# --- examples: placement ---------------------------------------------------


def test_lowest_free_gpu_indices_are_taken() -> None:
    result = schedule([job(1, gpus=2)], [node("a", gpus=4, free=(3, 1, 2))])
    assert result == [Assignment(1, (Placement("a", (1, 2), 1),))]


def test_best_fit_prefers_fewest_free_gpus_then_slots_then_name() -> None:
    nodes = [
        node("roomy", free=range(8)),
        node("snug-b", free=(0, 1), free_slots=10),
        node("snug-a", free=(4, 5), free_slots=10),
        node("tight-slots", free=(6, 7), free_slots=4),
    ]
    result = schedule([job(1, gpus=2, cpus=4)], nodes)
    assert result[0].placements == (Placement("tight-slots", (6, 7), 4),)
    result = schedule([job(1, gpus=2, cpus=5)], nodes)
    assert result[0].placements == (Placement("snug-a", (4, 5), 5),)


def test_capacity_used_by_one_job_is_not_given_to_the_next() -> None:
    result = schedule([job(1, gpus=3), job(2, gpus=3), job(3, gpus=2)], [node("a", gpus=8)])
    assert [p.gpus for a in result for p in a.placements] == [(0, 1, 2), (3, 4, 5), (6, 7)]


def test_gang_is_all_or_nothing() -> None:
    nodes = [node("a", gpus=4), node("b", gpus=4, free=(0,))]
    assert schedule([job(1, gpus=2, nodes=2)], nodes) == []
    nodes[1] = node("b", gpus=4)
    result = schedule([job(1, gpus=2, nodes=2)], nodes)
    assert sorted(p.node for p in result[0].placements) == ["a", "b"]


def test_priority_beats_submission_order_and_ties_go_to_the_earlier() -> None:
    pending = [job(1, gpus=1, seq=1), job(2, gpus=1, seq=2, priority=5), job(3, gpus=1, seq=0)]
    result = schedule(pending, [node("a", gpus=2)])
    assert [a.job_id for a in result] == [2, 3]


def test_memory_limits_are_respected() -> None:
    nodes = [node("a", memory_gb=64.0, free_memory_gb=20.0), node("b", memory_gb=64.0)]
    result = schedule([job(1, memory_gb=30.0), job(2, memory_gb=30.0)], nodes)
    assert [p.node for a in result for p in a.placements] == ["b", "b"]
    result = schedule([job(1, memory_gb=30.0), job(2, memory_gb=40.0)], nodes)
    assert [a.job_id for a in result] == [1]


def test_unlimited_memory_node_ignores_memory() -> None:
    result = schedule([job(1, memory_gb=1000.0)], [node("a")])
    assert [a.job_id for a in result] == [1]


def test_down_node_gets_nothing() -> None:
    assert schedule([job(1)], [node("a", up=False)]) == []


def test_duplicate_node_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="repeated: a"):
        schedule([job(1)], [node("a"), node("a")])


def test_invalid_job_is_skipped_not_fatal() -> None:
    result = schedule([job(1, nodes=0), job(2, cpus=0), job(3)], [node("a")])
    assert [a.job_id for a in result] == [3]


# --- examples: nodes_with --------------------------------------------------


def test_a_job_asking_for_a_label_goes_to_a_node_with_it() -> None:
    nodes = [node("head", gpus=0, labels=("cpu",)), node("gpu1", gpus=4),
             node("gpu2", gpus=8, labels=("a100", "ib"))]
    # best fit alone would take gpu1 (fewest free GPUs that suffice)
    assert schedule([job(1, gpus=2)], nodes)[0].placements[0].node == "gpu1"
    result = schedule([job(1, gpus=2, nodes_with=["a100"])], nodes)
    assert result == [Assignment(1, (Placement("gpu2", (0, 1), 1),))]


def test_a_job_asking_for_a_name_goes_to_that_node_and_all_entries_must_hold() -> None:
    nodes = [node("gpu1", labels=("a100",)), node("gpu2", labels=("a100",)), node("gpu3")]
    assert schedule([job(1, nodes_with=["gpu3"])], nodes)[0].placements[0].node == "gpu3"
    assert schedule([job(1, nodes_with=["a100", "gpu2"])], nodes)[0].placements[0].node == "gpu2"
    assert schedule([job(1, nodes_with=["a100", "gpu3"])], nodes) == []
    gang = schedule([job(1, nodes=2, nodes_with=["a100"])], nodes)
    assert sorted(p.node for p in gang[0].placements) == ["gpu1", "gpu2"]


def test_a_busy_labelled_node_makes_its_job_wait_but_others_run() -> None:
    nodes = [node("a", gpus=2, free=(), labels=("a100",)), node("b", gpus=2)]
    result = schedule([job(1, gpus=1, nodes_with=["a100"]), job(2, gpus=1)], nodes)
    # job 1 holds "a" (its only possible node); job 2 runs on "b"
    assert result == [Assignment(2, (Placement("b", (0,), 1),))]


def test_the_reservation_is_made_among_qualifying_nodes_only() -> None:
    nodes = [node("big", gpus=8, free=(0,)), node("a", gpus=4, free=(0, 1), labels=("ib",))]
    # The head needs 4 GPUs with ib: it can only ever run on "a", so it holds
    # "a", not the larger "big", and the small job takes "big".
    result = schedule([job(1, gpus=4, nodes_with=["ib"]), job(2, gpus=1)], nodes)
    assert result == [Assignment(2, (Placement("big", (0,), 1),))]


def test_a_failed_shape_does_not_hide_a_job_with_fewer_wishes() -> None:
    nodes = [node("a", gpus=1), node("b", gpus=1, free=(), labels=("x",))]
    result = schedule([job(1, nodes_with=["x"], priority=1), job(2)], nodes)
    assert [a.job_id for a in result] == [2]


# --- examples: backfill ----------------------------------------------------


def test_small_job_backfills_outside_the_reservation() -> None:
    # The head (4 GPUs) only fits "big" once it frees up, so "big" is held for
    # it; the small job still starts, on "small".
    nodes = [node("big", gpus=4, free=(0, 1)), node("small", gpus=2)]
    result = schedule([job(1, gpus=4), job(2, gpus=1)], nodes)
    assert result == [Assignment(2, (Placement("small", (0,), 1),))]


def test_small_job_does_not_take_the_heads_reserved_resources() -> None:
    nodes = [node("big", gpus=4, free=(0, 1))]
    assert schedule([job(1, gpus=4), job(2, gpus=1)], nodes) == []


def test_reservation_prefers_the_largest_node() -> None:
    nodes = [node("b4", gpus=4), node("a8", gpus=8, free=(0,))]
    # The head needs 6 GPUs: only a8 can ever host it, so it holds a8 and the
    # small job goes to b4 even though a8 would be the tighter fit.
    result = schedule([job(1, gpus=6), job(2, gpus=1)], nodes)
    assert result == [Assignment(2, (Placement("b4", (0,), 1),))]


def test_reservation_among_equal_nodes_prefers_the_most_free() -> None:
    nodes = [node("a", gpus=4, free=(0,)), node("b", gpus=4, free=(0, 1, 2))]
    # Equal totals: the head holds "b", closest to hosting it; "a" backfills.
    result = schedule([job(1, gpus=4), job(2, gpus=1)], nodes)
    assert result == [Assignment(2, (Placement("a", (0,), 1),))]


def test_only_the_first_blocked_job_gets_a_reservation() -> None:
    nodes = [node("a", gpus=4, free=(0, 1)), node("b", gpus=4, free=(3,))]
    # Job 1 reserves "a" (more free GPUs); job 2 (3 GPUs) is blocked too but
    # reserves nothing, so job 3 may use "b".
    result = schedule([job(1, gpus=4), job(2, gpus=3), job(3, gpus=1)], nodes)
    assert result == [Assignment(3, (Placement("b", (3,), 1),))]


def test_job_that_can_never_fit_gets_no_reservation() -> None:
    nodes = [node("a", gpus=4, free=(0, 1))]
    result = schedule([job(1, gpus=16), job(2, gpus=1)], nodes)
    assert [a.job_id for a in result] == [2]


def test_job_that_needs_a_down_node_gets_no_reservation() -> None:
    nodes = [node("a", gpus=4, free=(0, 1)), node("b", gpus=4, up=False)]
    head = job(1, gpus=1, nodes=2)
    assert unplaceable_reason(head, nodes) is None  # fits once "b" is back
    result = schedule([head, job(2, gpus=1)], nodes)
    assert [a.job_id for a in result] == [2]


def test_gang_head_reserves_all_its_nodes() -> None:
    nodes = [node("a", gpus=2, free=(0,)), node("b", gpus=2, free=(1,)), node("c", gpus=1)]
    # The head wants both 2-GPU nodes; the small job only gets "c".
    result = schedule([job(1, gpus=2, nodes=2), job(2, gpus=1), job(3, gpus=1)], nodes)
    assert result == [Assignment(2, (Placement("c", (0,), 1),))]


def test_jobs_before_the_head_are_placed_normally() -> None:
    nodes = [node("a", gpus=2)]
    result = schedule([job(1, gpus=1, priority=9), job(2, gpus=2), job(3, gpus=1)], nodes)
    assert [a.job_id for a in result] == [1]


def test_scan_stops_cleanly_when_the_cluster_is_full() -> None:
    pending = [job(i, gpus=1, cpus=1) for i in range(1000)]
    result = schedule(pending, [node("a", gpus=8, slots=8), node("b", gpus=8, slots=8)])
    assert [a.job_id for a in result] == list(range(16))


# --- examples: unplaceable_reason ------------------------------------------


def test_unplaceable_reasons_name_the_numbers_and_the_fix() -> None:
    cluster = [node("a", gpus=2, slots=8, memory_gb=32.0), node("b", gpus=1, slots=4)]
    assert unplaceable_reason(job(1, gpus=4), cluster) == (
        "asks for 4 GPUs per node but the largest node has 2; lower resources.gpus_per_node"
    )
    assert unplaceable_reason(job(1, nodes=3), cluster) == (
        "asks for 3 nodes but the cluster has 2; lower resources.nodes"
    )
    assert unplaceable_reason(job(1, cpus=16), cluster) == (
        "asks for 16 CPU slots per node but the largest node has 8; lower resources.cpus"
    )
    reason = unplaceable_reason(job(1, gpus=2, nodes=2), cluster)
    assert reason is not None and "2 nodes" in reason and "only 1 node" in reason
    assert "lower resources.nodes" in reason


def test_unplaceable_memory_reason() -> None:
    cluster = [node("a", memory_gb=32.0), node("b", memory_gb=16.0)]
    assert unplaceable_reason(job(1, memory_gb=48.0), cluster) == (
        "asks for 48 GB memory per node but the largest node has 32 GB; lower resources.memory_gb"
    )
    # One unlimited node makes any amount fit.
    assert unplaceable_reason(job(1, memory_gb=48.0), [*cluster, node("c")]) is None


def test_unplaceable_reason_ignores_current_load_and_down_state() -> None:
    cluster = [node("a", gpus=4, free=(), free_slots=0, up=False)]
    assert unplaceable_reason(job(1, gpus=4), cluster) is None


def test_unplaceable_reason_for_invalid_jobs_and_empty_cluster() -> None:
    assert unplaceable_reason(job(1), []) == (
        "the cluster has no nodes; add nodes to the cluster profile"
    )
    reason = unplaceable_reason(job(1, nodes=0), [node("a")])
    assert reason is not None and "0 nodes" in reason
    reason = unplaceable_reason(job(1, cpus=0), [node("a")])
    assert reason is not None and "0 CPU slots" in reason


def test_unplaceable_when_no_node_has_the_label_names_the_label_and_the_nodes() -> None:
    cluster = [node("head", labels=("cpu",)), node("gpu1")]
    assert unplaceable_reason(job(1, nodes_with=["a100"]), cluster) == (
        "no node has label a100 (nodes: head, gpu1); name labels or node names of the "
        "cluster profile in resources.nodes_with, or add the label to a node there")
    reason = unplaceable_reason(job(1, nodes_with=["a100", "cpu", "ib"]), cluster)
    assert reason is not None and reason.startswith("no node has label a100 nor label ib (")
    reason = unplaceable_reason(job(1, nodes_with=["cpu", "gpu1"]), cluster)
    assert reason is not None and reason.startswith(
        "no node has all of cpu, gpu1 as labels or name (nodes: head, gpu1)")
    many = [node(f"gpu{i:02d}") for i in range(1, 17)]
    reason = unplaceable_reason(job(1, nodes_with=["h100"]), many)
    assert reason is not None and "(nodes: gpu[01-16])" in reason
    # only labels and names: what the profile says, known before any node is up
    assert nodes_with_reason(job(1, nodes_with=["a100"]), cluster) == unplaceable_reason(
        job(1, nodes_with=["a100"]), cluster)
    assert nodes_with_reason(job(1, gpus=64, nodes_with=["cpu"]), cluster) is None
    assert nodes_with_reason(job(1, gpus=64), []) is None
    # a name is as good as a label, and a down node counts (it may come back)
    assert unplaceable_reason(job(1, nodes_with=["gpu1"]), cluster) is None
    assert unplaceable_reason(job(1, nodes_with=["x"]), [node("a", up=False, labels=("x",))]
                              ) is None


def test_unplaceable_reasons_count_only_the_qualifying_nodes() -> None:
    cluster = [node("a", gpus=8, labels=("ib",)), node("b", gpus=2, labels=("ib", "a100")),
               node("c", gpus=8, labels=("a100",))]
    assert unplaceable_reason(job(1, gpus=4, nodes_with=["ib", "a100"]), cluster) == (
        "asks for 4 GPUs per node but the largest node with ib, a100 has 2; lower "
        "resources.gpus_per_node or change resources.nodes_with")
    assert unplaceable_reason(job(1, nodes=3, nodes_with=["ib"]), cluster) == (
        "asks for 3 nodes with ib but the cluster has 2 (a, b); lower resources.nodes or "
        "change resources.nodes_with")
    reason = unplaceable_reason(job(1, nodes=2, gpus=4, nodes_with=["a100"]), cluster)
    assert reason is not None and "only 1 node with a100 can host that" in reason
    assert unplaceable_reason(job(1, nodes=2, gpus=2, nodes_with=["a100"]), cluster) is None


# --- dependencies ----------------------------------------------------------

S = JobState


def test_dependencies_release_when_all_parents_succeeded() -> None:
    decision = resolve_dependencies(
        [HeldJob(10, (1, 2)), HeldJob(11, ())], {1: S.SUCCEEDED, 2: S.SUCCEEDED}
    )
    assert decision == DependencyDecision(release=(10, 11), fail=())


@pytest.mark.parametrize("state", [S.FAILED, S.CANCELLED, S.LOST])
def test_dependencies_fail_when_a_parent_ended_badly(state: JobState) -> None:
    decision = resolve_dependencies([HeldJob(10, (1, 7))], {1: S.RUNNING, 7: state})
    assert decision == DependencyDecision(
        release=(), fail=((10, f"dependency job 7 ended {state.value}"),)
    )


@pytest.mark.parametrize("state", [S.HELD, S.QUEUED, S.STARTING, S.RUNNING])
def test_dependencies_stay_held_while_a_parent_is_on_its_way(state: JobState) -> None:
    decision = resolve_dependencies([HeldJob(10, (1, 2))], {1: S.SUCCEEDED, 2: state})
    assert decision == DependencyDecision(release=(), fail=())


def test_unknown_parent_fails_with_a_reason() -> None:
    decision = resolve_dependencies([HeldJob(10, (1, 99))], {1: S.RUNNING})
    assert decision.release == ()
    assert decision.fail == ((10, "dependency job 99 does not exist"),)


def test_dependency_cycle_fails_its_members_only() -> None:
    held = [HeldJob(1, (2,)), HeldJob(2, (1,)), HeldJob(3, (1,)), HeldJob(4, (4,))]
    states = {1: S.HELD, 2: S.HELD, 3: S.HELD, 4: S.HELD}
    decision = resolve_dependencies(held, states)
    assert decision.release == ()
    assert dict(decision.fail) == {
        1: "dependency cycle among jobs 1, 2",
        2: "dependency cycle among jobs 1, 2",
        4: "dependency cycle among jobs 4",
    }


@settings(max_examples=300, deadline=None)
@given(
    parents=st.dictionaries(
        st.integers(0, 20), st.sampled_from(list(JobState)), max_size=10
    ),
    afters=st.lists(st.lists(st.integers(0, 25), max_size=4), max_size=8),
)
def test_dependency_decision_matches_parent_states(
    parents: dict[int, JobState], afters: list[list[int]]
) -> None:
    held = [HeldJob(1000 + i, tuple(after)) for i, after in enumerate(afters)]
    decision = resolve_dependencies(held, parents)
    failed = dict(decision.fail)
    assert not set(decision.release) & set(failed)
    for h in held:
        states = [parents.get(p) for p in h.after]
        doomed = any(s is None or (s.is_terminal() and s is not S.SUCCEEDED) for s in states)
        if doomed:
            assert h.job_id in failed and "dependency job" in failed[h.job_id]
        elif all(s is S.SUCCEEDED for s in states):
            assert h.job_id in decision.release
        else:
            assert h.job_id not in decision.release and h.job_id not in failed


def test_a_waiting_job_is_told_why_in_words() -> None:
    from engine.scheduler import NodeCapacity, PendingJob, wait_reason

    busy = NodeCapacity("local", gpus=0, free_gpus=(), slots=2, free_slots=0)
    drained = NodeCapacity("gpu2", gpus=8, free_gpus=tuple(range(8)), slots=8, free_slots=8,
                           up=False)
    job = PendingJob(job_id=3, priority=0, seq=3, nodes=1, gpus_per_node=0, cpus=2)
    assert wait_reason(job, [busy, drained], {"gpu2": "drained"}) == (
        "needs 1 node with 2 CPU slots free; 0 of 1 up node have that now "
        "(local: 0 of 2 slots free); node gpu2 drained")
    free = NodeCapacity("local", gpus=0, free_gpus=(), slots=2, free_slots=2)
    assert wait_reason(job, [free]).startswith("behind jobs of higher priority")


def test_a_retry_backing_off_is_skipped_until_its_time_then_placed() -> None:
    from dataclasses import replace

    from engine.scheduler import (
        RETRY_BACKOFF_BASE_S,
        RETRY_BACKOFF_CAP_S,
        next_due,
        retry_backoff_s,
        wait_reason,
    )

    one = [node("a", gpus=2)]
    retry = replace(job(1, gpus=2, priority=9), not_before=110.0, retry=2, retries=3)
    later = job(2, gpus=1)
    # before its time it is passed over, and reserves nothing: job 2 runs
    got = schedule([retry, later], one, now=100.0)
    assert [a.job_id for a in got] == [2]
    assert wait_reason(retry, one, now=100.0) == "retry 2 of 3 waits 10 s (backoff)"
    assert wait_reason(retry, one, now=109.2) == "retry 2 of 3 waits 1 s (backoff)"
    assert next_due([retry, later], 100.0) == 110.0 and next_due([retry], 110.0) is None
    # at (and after) its time, or with no clock given, it is placed first
    for now in (110.0, 500.0, None):
        assert [a.job_id for a in schedule([retry, later], one, now=now)] == [1]
        assert "backoff" not in wait_reason(retry, [node("a", gpus=2, free=())], now=now)
    # the wait doubles from the base up to the cap, +-20 %, never past the cap
    assert [retry_backoff_s(n, 0.5) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]
    assert RETRY_BACKOFF_BASE_S == 5.0 and RETRY_BACKOFF_CAP_S == 300.0
    assert retry_backoff_s(2, 0.0) == pytest.approx(8.0)
    assert retry_backoff_s(2, 1.0) == pytest.approx(12.0)
    assert retry_backoff_s(9, 0.5) == retry_backoff_s(10_000, 1.0) == 300.0
    assert retry_backoff_s(9, 0.0) == pytest.approx(240.0)
    assert retry_backoff_s(3, 0.5, base=0.1) == pytest.approx(0.4)
