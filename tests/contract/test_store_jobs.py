"""Store contract: submitting and reading jobs, dependencies, listings."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.lifecycle import JobState
from engine.model import BatchRef, Job, JobSpec, Placement, Resources
from engine.store import Store, StoreError, UnknownJob
from tests.contract.store_helpers import make_spec

NASTY = "; rm -rf ~ $(reboot) \"'"


def _raw_count(path: Path, table: str) -> int:
    queries = {
        "jobs": "SELECT COUNT(*) FROM jobs",
        "attempts": "SELECT COUNT(*) FROM attempts",
        "events": "SELECT COUNT(*) FROM events",
        "job_deps": "SELECT COUNT(*) FROM job_deps",
    }
    with sqlite3.connect(path) as conn:
        return int(conn.execute(queries[table]).fetchone()[0])


def _succeed(store: Store, job: Job, clock: Callable[[], float]) -> None:
    store.transition(job.id, 1, JobState.QUEUED, JobState.STARTING, cause="placed",
                     actor="sched", now=clock(), placements=[Placement("n1", (0,), 1)])
    store.transition(job.id, 1, JobState.STARTING, JobState.RUNNING, cause="started",
                     actor="agent", now=clock(), pid=4242)
    store.transition(job.id, 1, JobState.RUNNING, JobState.SUCCEEDED, cause="exited",
                     actor="agent", now=clock(), exit_code=0)


def test_submit_get_list_round_trip_keeps_argv_and_env_verbatim(
    store: Store, db_path: Path, clock: Callable[[], float]
) -> None:
    spec = JobSpec(
        name=f"evil{NASTY}",
        kind="command",
        argv=("sh", "-c", NASTY, "--flag=" + NASTY, "tab\there", "nl\nthere", "ünï☃", "\\x00"),
        launcher="torchrun",
        resources=Resources(nodes=2, gpus_per_node=4, cpus=16, memory_gb=64.5),
        env=(("EVIL", NASTY), ("PATHISH", "$PATH:`id`"), ("Z_EMPTY", "")),
        retries=3,
        priority=-7,
        workdir=f"/tmp/{NASTY}",
        profile="p'rofile",
    )
    now = clock()
    job = store.submit(spec, 1234, actor="alice", now=now)

    assert job.id >= 1
    assert job.spec == spec
    assert (job.state, job.attempt, job.owner_uid) == (JobState.QUEUED, 1, 1234)
    assert job.submitted_at == job.updated_at == now
    assert job.after == () and job.reason is None and job.exit_code is None

    got = store.get_job(job.id)
    assert got == job
    assert got.spec.argv[2] == NASTY
    assert dict(got.spec.env)["EVIL"] == NASTY
    assert store.list_jobs() == [job]

    # A fresh Store (another connection, cold caches) reads the same thing.
    with Store(db_path) as other:
        assert other.get_job(job.id) == job
        assert other.list_jobs(states=[JobState.QUEUED]) == [job]

    # One attempt, one event, nothing interpreted.
    attempts = store.attempts(job.id)
    assert [(a.number, a.state, a.created_at) for a in attempts] == [(1, JobState.QUEUED, now)]
    [event] = store.history(job.id)
    assert (event.from_state, event.to_state, event.cause, event.actor, event.time) == (
        None, JobState.QUEUED, "submitted", "alice", now)
    assert _raw_count(db_path, "jobs") == 1


def test_spec_is_normalised_like_from_dict(store: Store, clock: Callable[[], float]) -> None:
    # env given unsorted: what comes back is what JobSpec.from_dict makes of it.
    spec = make_spec("n", env=(("B", "2"), ("A", "1")))
    job = store.submit(spec, 1, actor="a", now=clock())
    assert job.spec == JobSpec.from_dict(spec.to_dict())
    assert store.get_job(job.id).spec.env == (("A", "1"), ("B", "2"))


def test_lone_surrogates_round_trip(store: Store, clock: Callable[[], float]) -> None:
    # os.fsdecode() of a non-UTF-8 file name gives lone surrogates.
    weird = "data-\udcff\udcfe.bin"
    job = store.submit(make_spec("s", argv=("cat", weird)), 1, actor="a", now=clock())
    assert store.get_job(job.id).spec.argv == ("cat", weird)


argv_text = st.text(min_size=0, max_size=40)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    argv=st.lists(argv_text, min_size=1, max_size=6),
    env=st.dictionaries(st.text(min_size=1, max_size=10), argv_text, max_size=5),
    priority=st.integers(-(2**31), 2**31),
)
def test_any_text_round_trips(
    store: Store, argv: list[str], env: dict[str, str], priority: int
) -> None:
    spec = JobSpec(name="h", kind="eval", argv=tuple(argv), env=tuple(sorted(env.items())),
                   priority=priority)
    job = store.submit(spec, 7, actor="h", now=1.0)
    assert store.get_job(job.id).spec == spec


def test_unknown_job(store: Store) -> None:
    with pytest.raises(UnknownJob, match="no job 42") as info:
        store.get_job(42)
    assert info.value.job_id == 42
    for call in (lambda: store.attempts(42), lambda: store.history(42),
                 lambda: store.get_attempt(42, 1), lambda: store.request_cancel(42),
                 lambda: store.new_attempt(42, cause="retry", actor="a", now=1.0)):
        with pytest.raises(UnknownJob):
            call()


def test_submit_many_is_one_transaction(
    store: Store, db_path: Path, clock: Callable[[], float]
) -> None:
    parent = store.submit(make_spec("p"), 1, actor="a", now=clock())
    jobs = store.submit_many(
        [(make_spec("a"), 1, ()), (make_spec("b"), 2, [parent.id]), (make_spec("c"), 3, ())],
        actor="batch", now=clock(),
    )
    assert [j.spec.name for j in jobs] == ["a", "b", "c"]
    assert [j.state for j in jobs] == [JobState.QUEUED, JobState.HELD, JobState.QUEUED]
    assert [store.get_job(j.id) for j in jobs] == jobs
    assert len({j.id for j in jobs}) == 3

    before = {t: _raw_count(db_path, t) for t in ("jobs", "attempts", "events", "job_deps")}
    with pytest.raises(UnknownJob, match="no job 999"):
        store.submit_many(
            [(make_spec("ok"), 1, ()), (make_spec("bad"), 1, [parent.id, 999])],
            actor="batch", now=clock(),
        )
    after = {t: _raw_count(db_path, t) for t in ("jobs", "attempts", "events", "job_deps")}
    assert after == before
    assert store.submit_many([], actor="a", now=clock()) == []


def test_dependencies_hold_until_parents_succeeded(
    store: Store, db_path: Path, clock: Callable[[], float]
) -> None:
    p1 = store.submit(make_spec("p1"), 1, actor="a", now=clock())
    p2 = store.submit(make_spec("p2"), 1, actor="a", now=clock())
    _succeed(store, p2, clock)

    child = store.submit(make_spec("c"), 1, after=[p2.id, p1.id, p1.id], actor="a", now=clock())
    assert child.state is JobState.HELD
    assert child.after == (p1.id, p2.id)  # deduplicated, ascending
    assert store.get_job(child.id).after == (p1.id, p2.id)
    assert store.history(child.id)[0].to_state is JobState.HELD
    assert store.attempts(child.id)[0].state is JobState.HELD

    ready = store.submit(make_spec("r"), 1, after=[p2.id], actor="a", now=clock())
    assert ready.state is JobState.QUEUED and ready.after == (p2.id,)

    held = store.held()
    assert [j.id for j in held] == [child.id]
    assert held[0].after == (p1.id, p2.id)

    # A failed parent does not succeed: the child is held (the daemon fails it).
    store.transition(p1.id, 1, JobState.QUEUED, JobState.FAILED, cause="unplaceable",
                     actor="sched", now=clock(), reason="no node fits")
    assert store.submit(make_spec("c2"), 1, after=[p1.id], actor="a",
                        now=clock()).state is JobState.HELD

    jobs_before = _raw_count(db_path, "jobs")
    events_before = _raw_count(db_path, "events")
    with pytest.raises(UnknownJob, match="no job 12345"):
        store.submit(make_spec("orphan"), 1, after=[p2.id, 12345], actor="a", now=clock())
    assert _raw_count(db_path, "jobs") == jobs_before
    assert _raw_count(db_path, "events") == events_before
    assert all(j.spec.name != "orphan" for j in store.list_jobs())


def test_list_jobs_filters_and_order(store: Store, clock: Callable[[], float]) -> None:
    a = store.submit(make_spec("a"), 1, actor="a", now=clock())
    b = store.submit(make_spec("b"), 2, actor="a", now=clock())
    c = store.submit(make_spec("c"), 1, after=[a.id], actor="a", now=clock())
    store.transition(b.id, 1, JobState.QUEUED, JobState.CANCELLED, cause="user",
                     actor="bob", now=clock())

    assert [j.id for j in store.list_jobs()] == [c.id, b.id, a.id]
    assert [j.id for j in store.list_jobs(newest_first=False)] == [a.id, b.id, c.id]
    assert [j.id for j in store.list_jobs(limit=2)] == [c.id, b.id]
    assert store.list_jobs(limit=0) == []
    assert [j.id for j in store.list_jobs(owner_uid=1)] == [c.id, a.id]
    assert [j.id for j in store.list_jobs(owner_uid=3)] == []
    assert [j.id for j in store.list_jobs(states=[JobState.QUEUED, JobState.HELD])] == [
        c.id, a.id]
    assert [j.id for j in store.list_jobs(states={JobState.CANCELLED}, owner_uid=2)] == [b.id]
    assert [j.id for j in store.list_jobs(states=[JobState.CANCELLED], owner_uid=1)] == []
    assert store.list_jobs(states=[]) == []
    assert store.get_job(b.id).state is JobState.CANCELLED
    with pytest.raises(ValueError):
        store.list_jobs(limit=-1)

    assert store.job_states([a.id, b.id, c.id, 999]) == {
        a.id: JobState.QUEUED, b.id: JobState.CANCELLED, c.id: JobState.HELD}
    assert store.job_states([]) == {}


def test_pending_orders_by_priority_then_age(store: Store, clock: Callable[[], float]) -> None:
    low = store.submit(make_spec("low", priority=-1), 1, actor="a", now=clock())
    mid1 = store.submit(make_spec("mid1"), 1, actor="a", now=clock())
    high = store.submit(make_spec("high", priority=10), 1, actor="a", now=clock())
    mid2 = store.submit(make_spec("mid2"), 1, actor="a", now=clock())
    store.submit(make_spec("held", priority=99), 1, after=[low.id], actor="a", now=clock())
    gone = store.submit(make_spec("gone", priority=50), 1, actor="a", now=clock())
    store.transition(gone.id, 1, JobState.QUEUED, JobState.STARTING, cause="placed",
                     actor="s", now=clock(), placements=[Placement("n", (), 1)])
    assert [j.id for j in store.pending()] == [high.id, mid1.id, mid2.id, low.id]


def test_listing_reflects_changes_made_elsewhere(
    db_path: Path, clock: Callable[[], float]
) -> None:
    # The reader caches decoded jobs; a change through another Store must show.
    with Store(db_path) as writer, Store(db_path) as reader:
        job = writer.submit(make_spec("x"), 1, actor="a", now=clock())
        assert reader.list_jobs()[0].state is JobState.QUEUED
        writer.transition(job.id, 1, JobState.QUEUED, JobState.FAILED, cause="unplaceable",
                          actor="s", now=clock(), reason="too big")
        seen = reader.list_jobs()[0]
        assert (seen.state, seen.reason) == (JobState.FAILED, "too big")
        assert reader.pending() == []


def test_closed_store_refuses(db_path: Path) -> None:
    s = Store(db_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.list_jobs()
    with pytest.raises(StoreError, match="closed"):
        s.submit(make_spec(), 1, actor="a", now=1.0)


def test_bad_arguments_write_nothing(store: Store, db_path: Path) -> None:
    with pytest.raises(TypeError):
        store.submit("not a spec", 1, actor="a", now=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.submit(make_spec(), "root", actor="a", now=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.submit(make_spec(resources=Resources(memory_gb=float("nan"))), 1,
                     actor="a", now=1.0)
    assert _raw_count(db_path, "jobs") == 0
    with pytest.raises(ValueError):
        Store(":memory:")


def test_a_batch_item_can_wait_for_an_earlier_item(
    store: Store, clock: Callable[[], float]
) -> None:
    jobs = store.submit_many(
        [(make_spec("first"), 1, ()), (make_spec("second"), 1, [BatchRef(0)]),
         (make_spec("third"), 1, [BatchRef(0), BatchRef(1)])],
        actor="pipeline", now=clock(),
    )
    assert [j.state for j in jobs] == [JobState.QUEUED, JobState.HELD, JobState.HELD]
    assert jobs[1].after == (jobs[0].id,)
    assert jobs[2].after == tuple(sorted((jobs[0].id, jobs[1].id)))
    assert store.get_job(jobs[2].id).after == jobs[2].after
    for bad in (BatchRef(1), BatchRef(-1)):  # itself, or not an earlier item
        with pytest.raises(ValueError, match="expected an earlier item"):
            store.submit_many([(make_spec("a"), 1, ()), (make_spec("b"), 1, [bad])],
                              actor="a", now=clock())
