"""Store contract: the state machine through the store. Every legal path
works, every illegal move and every move out of a terminal state raises
InvalidTransition with the history, a lost compare-and-set raises StaleState,
retries are new attempts, allocations follow the attempt."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.lifecycle import INITIAL, TERMINAL, TRANSITIONS, InvalidTransition, JobState
from engine.model import Attempt, Job, Placement
from engine.store import StaleState, Store, StoreError, UnknownJob
from tests.contract.store_helpers import make_spec, worker

S = JobState
PLACEMENTS = (Placement("node-a", (0, 1), 8), Placement("node-b", (2, 3), 8))


def legal_paths() -> list[tuple[JobState, ...]]:
    """Every path through the table from an initial state to a terminal one."""
    paths: list[tuple[JobState, ...]] = []

    def walk(path: tuple[JobState, ...]) -> None:
        if path[-1] in TERMINAL:
            paths.append(path)
            return
        for nxt in sorted(TRANSITIONS[path[-1]], key=lambda s: s.value):
            walk((*path, nxt))

    for start in sorted(INITIAL, key=lambda s: s.value):
        walk((start,))
    return paths


def non_terminal_paths() -> Iterator[tuple[JobState, ...]]:
    """A shortest path from an initial state to each non-terminal state."""
    yield (S.HELD,)
    yield (S.QUEUED,)
    yield (S.QUEUED, S.STARTING)
    yield (S.QUEUED, S.STARTING, S.RUNNING)


def _submit_in(store: Store, start: JobState, clock: Callable[[], float]) -> Job:
    if start is S.HELD:
        parent = store.submit(make_spec("parent"), 1, actor="t", now=clock())
        job = store.submit(make_spec("child"), 1, after=[parent.id], actor="t", now=clock())
    else:
        job = store.submit(make_spec("job"), 1, actor="t", now=clock())
    assert job.state is start
    return job


def _move(store: Store, job_id: int, number: int, frm: JobState, to: JobState,
          clock: Callable[[], float]) -> Attempt:
    return store.transition(
        job_id, number, frm, to, cause=f"to-{to.value}", actor="t", now=clock(),
        placements=PLACEMENTS if to is S.STARTING else None,
        pid=4321 if to is S.RUNNING else None,
        exit_code=(0 if to is S.SUCCEEDED else 3) if to in (S.SUCCEEDED, S.FAILED) else None,
        reason=f"why-{to.value}" if to in (S.FAILED, S.CANCELLED, S.LOST) else None,
    )


def _walk(store: Store, path: tuple[JobState, ...], clock: Callable[[], float]) -> Job:
    job = _submit_in(store, path[0], clock)
    for frm, to in zip(path, path[1:], strict=False):
        _move(store, job.id, 1, frm, to, clock)
    return store.get_job(job.id)


def _raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql, params).fetchall()


def test_the_table_has_paths() -> None:
    paths = legal_paths()
    assert len(paths) >= 15
    assert (S.HELD, S.QUEUED, S.STARTING, S.RUNNING, S.SUCCEEDED) in paths


@pytest.mark.parametrize("path", legal_paths(), ids=lambda p: "-".join(s.value for s in p))
def test_every_legal_path(
    store: Store, db_path: Path, clock: Callable[[], float], path: tuple[JobState, ...]
) -> None:
    job = _submit_in(store, path[0], clock)
    times = [store.history(job.id)[0].time]
    for frm, to in zip(path, path[1:], strict=False):
        now_before = clock()
        attempt = _move(store, job.id, 1, frm, to, clock)
        assert attempt.state is to and attempt.number == 1 and attempt.job_id == job.id
        assert attempt == store.get_attempt(job.id, 1)
        mirrored = store.get_job(job.id)
        assert mirrored.state is to
        assert mirrored.updated_at > now_before
        assert mirrored.reason == attempt.reason and mirrored.exit_code == attempt.exit_code
        times.append(store.history(job.id)[-1].time)
        if to is S.STARTING:
            assert attempt.placements == PLACEMENTS
        if to is S.RUNNING:
            assert attempt.pid == 4321 and attempt.started_at == times[-1]
        active = {(j, n) for j, n, _ in store.active_allocations()}
        assert ((job.id, 1) in active) == to.is_active()
        assert (job.id in {a.job_id for a in store.active_attempts()}) == to.is_active()

    final = store.get_attempt(job.id, 1)
    last = path[-1]
    assert final.ended_at == times[-1]
    assert final.started_at == (times[path.index(S.RUNNING)] if S.RUNNING in path else None)
    if last is S.SUCCEEDED:
        assert (final.exit_code, final.reason) == (0, None)
    if last is S.FAILED:
        assert final.reason == "why-failed"
    events = store.history(job.id)
    assert [e.to_state for e in events] == list(path)
    assert [e.from_state for e in events] == [None, *path[:-1]]
    assert [e.cause for e in events] == ["submitted"] + [f"to-{s.value}" for s in path[1:]]
    assert all(e.attempt == 1 and e.job_id == job.id for e in events)
    # Allocations: written on STARTING, kept (inactive) after the end.
    rows = _raw(db_path, "SELECT node, gpus_json, cpus, active FROM allocations"
                " WHERE job_id = ? ORDER BY id", (job.id,))
    if S.STARTING in path:
        assert rows == [("node-a", "[0, 1]", 8, 0), ("node-b", "[2, 3]", 8, 0)]
    else:
        assert rows == []


def _assert_unchanged(store: Store, job: Job, before: tuple[object, ...]) -> None:
    assert (store.get_job(job.id), store.attempts(job.id), store.history(job.id)) == before


def _snapshot(store: Store, job: Job) -> tuple[object, ...]:
    return (store.get_job(job.id), store.attempts(job.id), store.history(job.id))


@pytest.mark.parametrize("path", list(non_terminal_paths()), ids=lambda p: p[-1].value)
def test_illegal_moves_raise_with_history(
    store: Store, clock: Callable[[], float], path: tuple[JobState, ...]
) -> None:
    job = _walk(store, path, clock)
    current = path[-1]
    illegal = [s for s in JobState if s not in TRANSITIONS[current]]
    assert illegal
    before = _snapshot(store, job)
    for to in illegal:
        with pytest.raises(InvalidTransition) as info:
            store.transition(job.id, 1, current, to, cause="bad", actor="t", now=clock(),
                             placements=PLACEMENTS if to is S.STARTING else None)
        err = info.value
        assert (err.job_id, err.from_state, err.to_state) == (job.id, current, to)
        assert list(err.history) == store.history(job.id)
        assert [e.to_state for e in err.history] == list(path)
        assert "history" in str(err)
        _assert_unchanged(store, job, before)


@pytest.mark.parametrize("path", [p for p in legal_paths() if p[0] is S.QUEUED],
                         ids=lambda p: "-".join(s.value for s in p))
def test_terminal_attempt_never_moves(
    store: Store, clock: Callable[[], float], path: tuple[JobState, ...]
) -> None:
    job = _walk(store, path, clock)
    end = path[-1]
    before = _snapshot(store, job)
    for to in JobState:
        # The caller knows it is terminal: the table forbids it.
        with pytest.raises(InvalidTransition) as info:
            store.transition(job.id, 1, end, to, cause="zombie", actor="t", now=clock(),
                             placements=PLACEMENTS if to is S.STARTING else None)
        assert info.value.from_state is end and list(info.value.history) == before[2]
        # The caller believes an earlier state (stale view): the CAS finds a
        # terminal attempt and reports it as the illegal move it is.
        for believed in (s for s in JobState if to in TRANSITIONS[s]):
            with pytest.raises(InvalidTransition) as info:
                store.transition(job.id, 1, believed, to, cause="zombie", actor="t",
                                 now=clock(),
                                 placements=PLACEMENTS if to is S.STARTING else None)
            assert (info.value.from_state, info.value.to_state) == (end, to)
            assert list(info.value.history) == before[2]
        _assert_unchanged(store, job, before)
    assert store.active_allocations() == []


def test_cas_two_stores_same_file(db_path: Path, clock: Callable[[], float]) -> None:
    with Store(db_path) as a, Store(db_path) as b:
        job = a.submit(make_spec("contested"), 1, actor="t", now=clock())
        assert a.get_job(job.id).state is S.QUEUED
        assert b.get_job(job.id).state is S.QUEUED
        a.transition(job.id, 1, S.QUEUED, S.STARTING, cause="placed", actor="a", now=clock(),
                     placements=[Placement("node-a", (0,), 1)])
        with pytest.raises(StaleState) as info:
            b.transition(job.id, 1, S.QUEUED, S.STARTING, cause="placed", actor="b",
                         now=clock(), placements=[Placement("node-b", (0,), 1)])
        err = info.value
        assert (err.job_id, err.attempt, err.expected, err.current) == (
            job.id, 1, S.QUEUED, S.STARTING)
        with pytest.raises(StaleState):
            b.transition(job.id, 1, S.QUEUED, S.CANCELLED, cause="user", actor="b",
                         now=clock())
        # The loser wrote nothing: one placement, two events.
        assert b.active_allocations() == [(job.id, 1, Placement("node-a", (0,), 1))]
        assert [e.actor for e in b.history(job.id)] == ["t", "a"]
        # Re-reading and retrying with the right expectation works.
        b.transition(job.id, 1, b.get_job(job.id).state, S.CANCELLED, cause="user",
                     actor="b", now=clock())
        assert a.get_job(job.id).state is S.CANCELLED


def test_cas_race_between_processes_has_one_winner(tmp_path: Path) -> None:
    db = tmp_path / "engine.db"
    go = tmp_path / "go"
    with Store(db) as store:
        job = store.submit(make_spec("contested"), 1, actor="t", now=1.0)
    procs = [worker("race", str(db), str(job.id), str(go)) for _ in range(6)]
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(out.strip())
    assert outs.count("won") == 1, outs
    assert sorted(o for o in outs if o != "won") == ["stale starting"] * 5
    with Store(db) as store:
        assert len(store.active_allocations()) == 1
        assert [e.to_state for e in store.history(job.id)] == [S.QUEUED, S.STARTING]


def test_unknown_job_or_attempt(store: Store, clock: Callable[[], float]) -> None:
    with pytest.raises(UnknownJob) as info:
        store.transition(99, 1, S.QUEUED, S.CANCELLED, cause="c", actor="t", now=clock())
    assert (info.value.job_id, info.value.attempt) == (99, None)
    job = store.submit(make_spec(), 1, actor="t", now=clock())
    with pytest.raises(UnknownJob, match="no attempt 2 of job") as info:
        store.transition(job.id, 2, S.QUEUED, S.CANCELLED, cause="c", actor="t", now=clock())
    assert info.value.attempt == 2
    with pytest.raises(UnknownJob):
        store.get_attempt(job.id, 2)


def test_placements_only_and_always_on_starting(
    store: Store, db_path: Path, clock: Callable[[], float]
) -> None:
    job = store.submit(make_spec(), 1, actor="t", now=clock())
    with pytest.raises(ValueError):
        store.transition(job.id, 1, S.QUEUED, S.STARTING, cause="c", actor="t", now=clock())
    with pytest.raises(ValueError):
        store.transition(job.id, 1, S.QUEUED, S.CANCELLED, cause="c", actor="t", now=clock(),
                         placements=PLACEMENTS)
    assert store.get_job(job.id).state is S.QUEUED
    assert len(store.history(job.id)) == 1
    assert _raw(db_path, "SELECT COUNT(*) FROM allocations") == [(0,)]


def test_allocations_appear_on_starting_and_go_on_terminal(
    store: Store, db_path: Path, clock: Callable[[], float]
) -> None:
    one = store.submit(make_spec("one"), 1, actor="t", now=clock())
    two = store.submit(make_spec("two"), 1, actor="t", now=clock())
    assert store.active_allocations() == [] and store.active_attempts() == []

    _move(store, one.id, 1, S.QUEUED, S.STARTING, clock)
    store.transition(two.id, 1, S.QUEUED, S.STARTING, cause="placed", actor="s", now=clock(),
                     placements=[Placement("node-c", (5,), 2)])
    assert store.active_allocations() == [
        (one.id, 1, PLACEMENTS[0]), (one.id, 1, PLACEMENTS[1]),
        (two.id, 1, Placement("node-c", (5,), 2))]
    assert [(a.job_id, a.state) for a in store.active_attempts()] == [
        (one.id, S.STARTING), (two.id, S.STARTING)]

    _move(store, one.id, 1, S.STARTING, S.RUNNING, clock)
    assert [(j, n) for j, n, _ in store.active_allocations()] == [
        (one.id, 1), (one.id, 1), (two.id, 1)]
    assert store.active_attempts()[0].pid == 4321

    _move(store, two.id, 1, S.STARTING, S.LOST, clock)
    assert store.active_allocations() == [(one.id, 1, PLACEMENTS[0]), (one.id, 1, PLACEMENTS[1])]
    _move(store, one.id, 1, S.RUNNING, S.SUCCEEDED, clock)
    assert store.active_allocations() == [] and store.active_attempts() == []
    assert _raw(db_path, "SELECT COUNT(*), SUM(active) FROM allocations") == [(3, 0)]
    # The attempt keeps its placements as a record.
    assert store.get_attempt(one.id, 1).placements == PLACEMENTS


@pytest.mark.parametrize("path", list(non_terminal_paths()), ids=lambda p: p[-1].value)
def test_new_attempt_refused_unless_terminal(
    store: Store, clock: Callable[[], float], path: tuple[JobState, ...]
) -> None:
    job = _walk(store, path, clock)
    before = _snapshot(store, job)
    with pytest.raises(InvalidTransition) as info:
        store.new_attempt(job.id, cause="retry", actor="t", now=clock())
    assert info.value.from_state is path[-1]
    assert list(info.value.history) == before[2]
    _assert_unchanged(store, job, before)


@pytest.mark.parametrize("end", [S.FAILED, S.CANCELLED, S.LOST])
def test_retry_keeps_old_attempt_and_history(
    store: Store, clock: Callable[[], float], end: JobState
) -> None:
    path = (S.QUEUED, S.STARTING, S.RUNNING, end)
    job = _walk(store, path, clock)
    old = store.get_attempt(job.id, 1)
    old_history = store.history(job.id)
    assert store.get_job(job.id).reason == old.reason is not None

    now = clock()
    new = store.new_attempt(job.id, cause="retry", actor="daemon", now=now)
    assert (new.job_id, new.number, new.state, new.created_at) == (job.id, 2, S.QUEUED, now)
    assert new.placements == () and new.pid is None and not new.cancel_requested
    assert store.get_attempt(job.id, 1) == old
    assert store.attempts(job.id) == [old, new]
    history = store.history(job.id)
    assert history[: len(old_history)] == old_history
    last = history[-1]
    assert (last.attempt, last.from_state, last.to_state, last.cause, last.actor, last.time) == (
        2, None, S.QUEUED, "retry", "daemon", now)
    mirrored = store.get_job(job.id)
    assert (mirrored.attempt, mirrored.state, mirrored.reason, mirrored.exit_code) == (
        2, S.QUEUED, None, None)
    assert [j.id for j in store.pending()] == [job.id]

    # The old attempt stays terminal; the new one runs its own course.
    with pytest.raises(InvalidTransition):
        store.transition(job.id, 1, S.RUNNING, S.SUCCEEDED, cause="late", actor="t",
                         now=clock())
    _move(store, job.id, 2, S.QUEUED, S.STARTING, clock)
    _move(store, job.id, 2, S.STARTING, S.RUNNING, clock)
    _move(store, job.id, 2, S.RUNNING, S.SUCCEEDED, clock)
    assert store.get_job(job.id).state is S.SUCCEEDED
    assert store.get_attempt(job.id, 1) == old
    assert [a.state for a in store.attempts(job.id)] == [end, S.SUCCEEDED]
    # Attempt 3 after a success is allowed too (a re-run is the caller's call).
    assert store.new_attempt(job.id, cause="rerun", actor="u", now=clock()).number == 3


def test_request_cancel_flags_current_attempt(
    store: Store, clock: Callable[[], float]
) -> None:
    job = _walk(store, (S.QUEUED, S.STARTING, S.RUNNING), clock)
    events = len(store.history(job.id))
    flagged = store.request_cancel(job.id)
    assert flagged.cancel_requested and flagged.state is S.RUNNING
    assert store.get_attempt(job.id, 1).cancel_requested
    assert store.active_attempts()[0].cancel_requested
    assert len(store.history(job.id)) == events  # no state change, no event
    _move(store, job.id, 1, S.RUNNING, S.CANCELLED, clock)
    retry = store.new_attempt(job.id, cause="retry", actor="t", now=clock())
    assert not retry.cancel_requested
    assert store.request_cancel(job.id).number == 2

    done = _walk(store, (S.QUEUED, S.CANCELLED), clock)
    assert not store.request_cancel(done.id).cancel_requested  # terminal: left alone


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start_held=st.booleans(),
    moves=st.lists(st.tuples(st.sampled_from(list(JobState)), st.booleans()), max_size=8),
)
def test_random_walks_match_the_table(
    store: Store, start_held: bool, moves: list[tuple[JobState, bool]]
) -> None:
    """Model check: the store accepts exactly the moves the table allows, from
    the state it is really in; `stale` moves claim a wrong expected state."""
    ticks = iter(range(1, 1000))

    def clock() -> float:
        return float(next(ticks))

    job = _submit_in(store, S.HELD if start_held else S.QUEUED, clock)
    state = job.state
    path = [state]
    for to, stale in moves:
        claimed = state
        if stale:
            others = [s for s in JobState if s is not state and to in TRANSITIONS[s]]
            if not others:
                continue
            claimed = others[0]
        try:
            got = store.transition(job.id, 1, claimed, to, cause="walk", actor="h",
                                   now=clock(),
                                   placements=PLACEMENTS if to is S.STARTING else None)
        except InvalidTransition as exc:
            assert not (claimed is state and to in TRANSITIONS[state])
            assert exc.from_state in (claimed, state)
        except StaleState as exc:
            assert stale and not state.is_terminal() and exc.current is state
        else:
            assert claimed is state and to in TRANSITIONS[state]
            assert got.state is to
            state = to
            path.append(to)
        assert store.get_job(job.id).state is state
    assert [e.to_state for e in store.history(job.id)] == path
    assert ((job.id, 1) in {(j, n) for j, n, _ in store.active_allocations()}) == (
        state.is_active())


def test_store_error_hierarchy() -> None:
    assert issubclass(UnknownJob, StoreError) and issubclass(StaleState, StoreError)


def test_priority_changes_only_while_waiting(store: Store, clock: Callable[[], float]) -> None:
    low = store.submit(make_spec("low"), 1, actor="t", now=clock())
    high = store.submit(make_spec("high"), 1, actor="t", now=clock())
    assert store.set_priority(high.id, 7, cause="p", actor="t", now=clock())
    assert [j.id for j in store.pending()] == [high.id, low.id]
    assert store.get_job(high.id).spec.priority == 7
    assert [(e.from_state, e.to_state, e.cause) for e in store.history(high.id)][-1] == \
        (S.QUEUED, S.QUEUED, "p")

    store.transition(low.id, 1, S.QUEUED, S.STARTING, cause="c", actor="t", now=clock(),
                     placements=PLACEMENTS)
    before = _snapshot(store, low)
    assert not store.set_priority(low.id, 3, cause="p", actor="t", now=clock())
    assert _snapshot(store, low) == before
    with pytest.raises(UnknownJob):
        store.set_priority(9999, 1, cause="p", actor="t", now=clock())
