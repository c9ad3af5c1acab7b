"""Store contract: metrics and telemetry round trips and filters."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.lifecycle import JobState
from engine.model import Job, Placement
from engine.store import MetricPoint, Store, StoreError, TelemetryRow
from tests.contract.store_helpers import make_spec


def _job_with_two_attempts(store: Store, clock: Callable[[], float]) -> Job:
    job = store.submit(make_spec("m"), 1, actor="t", now=clock())
    store.transition(job.id, 1, JobState.QUEUED, JobState.STARTING, cause="p", actor="s",
                     now=clock(), placements=[Placement("n", (0,), 1)])
    store.transition(job.id, 1, JobState.STARTING, JobState.LOST, cause="gone", actor="s",
                     now=clock())
    store.new_attempt(job.id, cause="retry", actor="s", now=clock())
    return job


def test_metrics_round_trip_and_filters(store: Store, clock: Callable[[], float]) -> None:
    job = _job_with_two_attempts(store, clock)
    other = store.submit(make_spec("other"), 1, actor="t", now=clock())
    first = [MetricPoint(job.id, 1, step, name, float(step) / 10, 100.0 + step)
             for step in range(5) for name in ("loss", "lr")]
    second = [MetricPoint(job.id, 2, step, "loss", 1.0 / (step + 1), 200.0 + step)
              for step in range(3)]
    store.record_metrics(first)
    store.record_metrics(iter(second))  # any iterable
    store.record_metrics([MetricPoint(other.id, 1, 0, "loss", 9.0, 1.0)])
    store.record_metrics([])

    assert store.metrics(job.id, attempt=1) == first
    assert store.metrics(job.id, attempt=2) == second
    everything = store.metrics(job.id)
    assert len(everything) == len(first) + len(second)
    assert [(p.step) for p in everything] == sorted(p.step for p in everything)
    # Same step: insertion order.
    assert [(p.attempt, p.name) for p in everything if p.step == 0] == [
        (1, "loss"), (1, "lr"), (2, "loss")]
    assert store.metrics(job.id, attempt=1, names=["lr"]) == [p for p in first if p.name == "lr"]
    assert store.metrics(job.id, attempt=1, names={"lr", "loss", "nope"}) == first
    assert store.metrics(job.id, names=[]) == []
    assert store.metrics(job.id, attempt=1, since_step=2) == [p for p in first if p.step > 2]
    assert store.metrics(job.id, attempt=1, since_step=2, limit=3) == [
        p for p in first if p.step > 2][:3]
    assert store.metrics(job.id, attempt=2, names=["loss"], since_step=0, limit=1) == [
        second[1]]
    assert store.metrics(job.id, attempt=3) == []
    assert store.metrics(other.id) == [MetricPoint(other.id, 1, 0, "loss", 9.0, 1.0)]
    assert store.metrics(12345) == []


def test_metric_values_nan_and_inf(store: Store, clock: Callable[[], float]) -> None:
    job = store.submit(make_spec(), 1, actor="t", now=clock())
    store.record_metrics([
        MetricPoint(job.id, 1, 0, "loss", float("nan"), 1.0),
        MetricPoint(job.id, 1, 1, "loss", float("inf"), 2.0),
        MetricPoint(job.id, 1, 2, "loss", float("-inf"), 3.0),
        MetricPoint(job.id, 1, 3, "loss", -0.5, 4.0),
    ])
    values = [p.value for p in store.metrics(job.id)]
    assert math.isnan(values[0])
    assert values[1:] == [math.inf, -math.inf, -0.5]


def test_metrics_for_a_missing_attempt_write_nothing(
    store: Store, db_path: Path, clock: Callable[[], float]
) -> None:
    job = store.submit(make_spec(), 1, actor="t", now=clock())
    with pytest.raises(StoreError):
        store.record_metrics([MetricPoint(job.id, 1, 0, "loss", 1.0, 1.0),
                              MetricPoint(job.id, 2, 0, "loss", 1.0, 1.0)])
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0
    conn.close()


def test_telemetry_round_trip_and_filters(store: Store) -> None:
    gpus = [{"index": 0, "util": 97.5, "memory_used_mb": 70123, "name": "H200",
             "procs": [{"pid": 1, "attempt": "3.1"}]},
            {"index": 1, "util": 0.0, "memory_used_mb": 0, "name": "H200", "procs": []}]
    rows = [
        TelemetryRow("node-a", 10.0, 12.5, 40.0, 1.5, gpus),
        TelemetryRow("node-b", 10.5, None, None, None, []),
        TelemetryRow("node-a", 12.0, 50.0, 41.0, 2.0, []),
        TelemetryRow("node-a", 11.0, 25.0, 40.5, 1.75, gpus[:1]),  # out of order
    ]
    store.record_telemetry(rows)
    store.record_telemetry([])
    got = store.telemetry("node-a")
    assert got == [rows[0], rows[3], rows[2]]  # by time
    assert got[0].gpus == gpus
    assert store.telemetry("node-b") == [rows[1]]
    assert store.telemetry("node-a", since=10.0) == [rows[3], rows[2]]  # strictly after
    assert store.telemetry("node-a", since=10.0, limit=1) == [rows[3]]
    assert store.telemetry("node-a", limit=0) == []
    assert store.telemetry("node-c") == []
    with pytest.raises(ValueError):
        store.telemetry("node-a", limit=-2)


def test_old_telemetry_is_pruned_and_recent_kept(store: Store) -> None:
    store.record_telemetry([TelemetryRow("n", float(t), 1.0, 2.0, 0.5, []) for t in range(10)])
    assert store.prune_telemetry(before=6.0) == 6
    assert [r.time for r in store.telemetry("n")] == [6.0, 7.0, 8.0, 9.0]


def test_series_survive_reopen(db_path: Path, clock: Callable[[], float]) -> None:
    with Store(db_path) as store:
        job = store.submit(make_spec(), 1, actor="t", now=clock())
        store.record_metrics([MetricPoint(job.id, 1, 7, "acc", 0.75, 5.0)])
        store.record_telemetry([TelemetryRow("n", 1.0, 1.0, 2.0, 3.0, [{"i": 0}])])
    with Store(db_path) as store:
        assert store.metrics(job.id) == [MetricPoint(job.id, 1, 7, "acc", 0.75, 5.0)]
        assert store.telemetry("n") == [TelemetryRow("n", 1.0, 1.0, 2.0, 3.0, [{"i": 0}])]
