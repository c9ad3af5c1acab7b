"""Store contract: telemetry history. Every sample is kept for the full-rate
window, one-minute averages beyond it up to the keep period (prune_telemetry),
and telemetry_history reads a node's range at the finest resolution held for
all of it. Expected averages are computed here from the samples recorded."""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from engine.store import Store, TelemetryRow
from engine.store import migrations as mig
from engine.store.db import TELEMETRY_AVERAGE_S, TELEMETRY_FULL_RATE_S

T0 = 1_700_000_040.0  # the start of a minute
HOUR = TELEMETRY_FULL_RATE_S
GPU_FIGURES = ("util_percent", "memory_used_mb", "temperature_c", "power_w")


def gpu(index: Any, tick: int, **changes: Any) -> dict[str, Any]:
    figures = {"index": index, "util_percent": float((tick * 7 + 3 * index) % 101),
               "memory_used_mb": 60_000 + 97 * tick, "memory_total_mb": 143_771,
               "temperature_c": 40 + tick % 23, "power_w": round(250.0 + 3.7 * tick, 1),
               "power_limit_w": 700.0,
               "processes": [{"pid": 4000 + index, "used_memory_mb": 59_000, "attempt": "3.1"}]}
    figures.update(changes)
    return figures


def sample(node: str, t: float, tick: int, gpus: int = 2) -> TelemetryRow:
    return TelemetryRow(node, t, float(tick % 90), 30.0 + tick % 7, 0.5 * (tick % 5),
                        [gpu(i, tick) for i in range(gpus)])


def expected_minutes(rows: Iterable[TelemetryRow]) -> dict[float, dict[str, Any]]:
    """What one-minute averages of `rows` must say, computed from the rows."""
    by_minute: dict[float, list[TelemetryRow]] = {}
    for r in rows:
        by_minute.setdefault(math.floor(r.time / 60) * 60.0, []).append(r)
    out = {}
    for minute, group in by_minute.items():
        def mean(values: Iterable[Any]) -> float | None:
            numbers = [float(v) for v in values
                       if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v)]
            return statistics.fmean(numbers) if numbers else None

        gpus: dict[int, list[dict[str, Any]]] = {}
        for r in group:
            for g in r.gpus:
                if isinstance(g.get("index"), int) and not isinstance(g["index"], bool):
                    gpus.setdefault(g["index"], []).append(g)
        out[minute] = {
            "cpu_percent": mean(r.cpu_percent for r in group),
            "memory_percent": mean(r.memory_percent for r in group),
            "load1": mean(r.load1 for r in group),
            "gpus": [{"index": i,
                      **{k: mean(g.get(k) for g in gs) for k in GPU_FIGURES},
                      "memory_total_mb": max(g["memory_total_mb"] for g in gs),
                      "power_limit_w": max(g["power_limit_w"] for g in gs)}
                     for i, gs in sorted(gpus.items())],
        }
    return out


def assert_averages(got: list[TelemetryRow], rows: list[TelemetryRow]) -> None:
    want = expected_minutes(rows)
    assert [r.time for r in got] == sorted(want)
    for row in got:
        w = want[row.time]
        for key in ("cpu_percent", "memory_percent", "load1"):
            assert getattr(row, key) == pytest.approx(w[key], abs=0.006), (row.time, key)
        assert [g["index"] for g in row.gpus] == [g["index"] for g in w["gpus"]]
        for g, wg in zip(row.gpus, w["gpus"], strict=True):
            assert set(g) == set(wg)  # no processes in an average
            for key in GPU_FIGURES:
                if wg[key] is None:
                    assert g[key] is None, key
                else:
                    assert g[key] == pytest.approx(wg[key], abs=0.51), (row.time, key)
            assert g["memory_total_mb"] == wg["memory_total_mb"]
            assert g["power_limit_w"] == wg["power_limit_w"]


def record(store: Store, rows: list[TelemetryRow], batch: int = 64) -> None:
    """As the engine does: in flushes of a few rows each."""
    for at in range(0, len(rows), batch):
        store.record_telemetry(rows[at:at + batch])


def test_a_range_within_the_window_is_every_sample(store: Store) -> None:
    rows = [sample("a", T0 + 0.5 * i, i) for i in range(300)]
    record(store, rows + [sample("b", T0 + i, i) for i in range(10)])
    history = store.telemetry_history("a", T0 + 10.0, T0 + 100.0)
    assert history.node == "a" and history.resolution_s is None
    assert history.rows == [r for r in rows if T0 + 10.0 <= r.time < T0 + 100.0]  # [start, end)
    assert history.rows[0].gpus[0]["processes"][0]["attempt"] == "3.1"  # as reported
    assert store.telemetry_history("c", T0, T0 + 100.0).rows == []
    assert store.telemetry_history("a", T0 + 5.0, T0 + 5.0).rows == []


def test_a_range_longer_than_the_window_is_one_row_a_minute(store: Store) -> None:
    rows = [sample("a", T0 + 2.0 * i, i, gpus=8) for i in range(200)]  # 6 minutes 40 s
    record(store, rows)
    history = store.telemetry_history("a", T0 - HOUR, T0 + 7.5 * 60)
    assert history.resolution_s == TELEMETRY_AVERAGE_S == 60
    assert len(history.rows) == 7
    assert_averages(history.rows, rows)


def test_missing_and_odd_figures_are_not_counted(store: Store) -> None:
    rows = [
        TelemetryRow("a", T0 + 1, 10.0, None, 1.0, [gpu(0, 1), gpu(1, 1, power_w=None)]),
        TelemetryRow("a", T0 + 2, None, 50.0, None, [gpu(0, 2, util_percent=True),
                                                       gpu(1, 2, temperature_c=float("nan"),
                                                           power_w=None)]),
        TelemetryRow("a", T0 + 3, 30.0, 70.0, 3.0, [gpu(0, 3), gpu(1, 3, power_w=None),
                                                      {"util_percent": 99.0},  # no index
                                                      gpu(True, 3)]),  # not an index either
    ]
    record(store, rows)
    got = store.telemetry_history("a", T0 - 2 * HOUR, T0 + 60).rows
    assert_averages(got, rows)
    assert got[0].cpu_percent == 20.0 and got[0].memory_percent == 60.0
    assert got[0].gpus[1]["power_w"] is None  # never measured in that minute
    assert [g["index"] for g in got[0].gpus] == [0, 1]


def test_prune_keeps_the_window_at_full_rate_and_minutes_beyond(store: Store) -> None:
    end = T0 + 2 * HOUR  # two hours of two nodes, a sample every 10 s
    rows = {n: [sample(n, T0 + 10.0 * i, i) for i in range(int(2 * HOUR / 10))]
            for n in ("a", "b")}
    record(store, rows["a"] + rows["b"])
    keep_from = T0 + 10 * 60.0
    window = end - HOUR
    held = sum(1 for n in rows for r in rows[n] if r.time < window)

    assert store.prune_telemetry(keep_from, now=end) == held
    assert [r.time for r in store.telemetry("a")] == [r.time for r in rows["a"]
                                                      if r.time >= window]
    # the last half hour: every sample
    recent = store.telemetry_history("a", end - HOUR / 2, end)
    assert recent.resolution_s is None
    assert recent.rows == [r for r in rows["a"] if r.time >= end - HOUR / 2]
    # an hour-long range reaching before the window: its full-rate samples
    # went, so minutes, the same as before the prune
    early = store.telemetry_history("a", window - 30 * 60, window + 30 * 60)
    assert early.resolution_s == 60
    assert_averages(early.rows, [r for r in rows["a"]
                                 if window - 30 * 60 <= r.time < window + 30 * 60])
    # everything: minutes from keep_from on, the recent hour's too
    everything = store.telemetry_history("b", T0 - HOUR, end)
    assert everything.rows[0].time == keep_from and len(everything.rows) == 110
    assert_averages(everything.rows, [r for r in rows["b"] if r.time >= keep_from])
    # pruning again with the same times changes nothing
    assert store.prune_telemetry(keep_from, now=end) == 0
    assert store.telemetry_history("b", T0 - HOUR, end) == everything


def test_prune_measures_the_window_from_the_newest_sample_by_default(store: Store) -> None:
    rows = [sample("a", T0 + 60.0 * i, i) for i in range(90)]  # 1 h 30 min
    record(store, rows)
    newest = rows[-1].time
    assert store.prune_telemetry(T0) == sum(1 for r in rows if r.time < newest - HOUR)
    assert store.telemetry("a")[0].time == newest - HOUR
    assert len(store.telemetry_history("a", T0, newest + 1).rows) == 90  # minutes all kept


def test_a_late_sample_joins_its_minute(store: Store) -> None:
    rows = [sample("a", T0 + i, i) for i in range(60)]
    record(store, rows)
    store.prune_telemetry(T0 - HOUR, now=T0 + 2 * HOUR)  # the full-rate samples went
    late = sample("a", T0 + 30.5, 1000)
    store.record_telemetry([late])
    got = store.telemetry_history("a", T0, T0 + 60).rows
    assert store.telemetry_history("a", T0, T0 + 60).resolution_s == 60
    assert_averages(got, [*rows, late])


def test_history_rejects_a_backwards_or_endless_range(store: Store) -> None:
    with pytest.raises(ValueError, match="ends"):
        store.telemetry_history("a", T0, T0 - 1)
    with pytest.raises(ValueError, match="finite"):
        store.telemetry_history("a", T0, math.inf)
    with pytest.raises(ValueError, match="finite"):
        store.prune_telemetry(math.nan)


def test_an_older_store_gains_the_minutes_of_its_telemetry(db_path: Path) -> None:
    """A file at schema 1, with telemetry written then, opened by this store:
    the migration averages what it holds."""
    rows = [sample("a", T0 + 7.0 * i, i) for i in range(40)] + [
        TelemetryRow("a", T0 + 1.5, None, None, None, []),
        TelemetryRow("a", T0 + 2.5, 5.0, 6.0, 7.0, [{"util_percent": 1.0}, gpu(3, 9)])]
    # Python's json wrote NaN, which SQLite does not read as JSON: the
    # migration counts that sample's host figures but none of its GPUs'.
    not_json = TelemetryRow("a", T0 + 3.5, 1.0, 2.0, 3.0,
                            [gpu(3, 20, temperature_c=float("nan"))])
    conn = sqlite3.connect(db_path, isolation_level=None)
    mig.migrate(conn, mig.MIGRATIONS[:1])
    conn.executemany(
        "INSERT INTO telemetry (node, time, cpu_percent, memory_percent, load1, gpus_json)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [(r.node, r.time, r.cpu_percent, r.memory_percent, r.load1, json.dumps(r.gpus))
         for r in [*rows, not_json]])
    conn.close()
    with Store(db_path) as store:
        assert store.schema_versions() == [v for v, _ in mig.MIGRATIONS]
        got = store.telemetry_history("a", T0 - 2 * HOUR, T0 + 300).rows
        assert_averages(got, [*rows, TelemetryRow("a", T0 + 3.5, 1.0, 2.0, 3.0, [])])
        full = store.telemetry_history("a", T0, T0 + 300).rows
        assert [r for r in full if r.time != not_json.time] == sorted(rows, key=lambda r: r.time)


def test_history_survives_reopen(db_path: Path) -> None:
    rows = [sample("a", T0 + 3.0 * i, i) for i in range(50)]
    with Store(db_path) as store:
        record(store, rows)
        store.prune_telemetry(T0 - HOUR, now=T0 + 3 * HOUR)
        before = store.telemetry_history("a", T0 - HOUR, T0 + HOUR)
    with Store(db_path) as store:
        assert store.telemetry_history("a", T0 - HOUR, T0 + HOUR) == before
        assert store.telemetry_history("a", T0, T0 + 60).resolution_s == 60  # still pruned
    assert_averages(before.rows, rows)
