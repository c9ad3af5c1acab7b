"""Each attempt's progress (step, total, loss, tokens/s), kept as metric
points are recorded, read for many jobs at once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.model import JobSpec
from engine.store import MetricPoint, Store
from engine.store.migrations import MIGRATIONS, migrate


def spec() -> JobSpec:
    return JobSpec(name="t", kind="command", argv=("true",))


def test_progress_follows_the_latest_step_of_each_attempt(tmp_path: Path) -> None:
    store = Store(tmp_path / "engine.db")
    a, b = store.submit(spec(), 0, actor="t", now=1.0), store.submit(spec(), 0, actor="t",
                                                                     now=1.0)
    store.record_metrics([MetricPoint(a.id, 1, 1, "loss", 5.0, 10.0),
                          MetricPoint(a.id, 1, 1, "total_steps", 200, 10.0),
                          MetricPoint(a.id, 1, 2, "loss", 4.0, 11.0),
                          MetricPoint(a.id, 1, 2, "tokens_per_s", 900.0, 11.0)])
    store.record_metrics([MetricPoint(a.id, 1, 3, "lr", 0.1, 12.0)])  # no loss at step 3
    store.record_metrics([MetricPoint(a.id, 1, 1, "loss", 9.0, 13.0)])  # a late, older point
    got = store.progress([(a.id, 1), (b.id, 1)])
    assert list(got) == [(a.id, 1)]  # b reported nothing
    p = got[(a.id, 1)]
    assert (p.step, p.total, p.loss, p.tokens_per_s, p.time) == (3, 200, 4.0, 900.0, 13.0)
    store.close()


def test_the_migration_fills_progress_from_metrics_already_held(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = Store(path)
    job = store.submit(spec(), 0, actor="t", now=1.0)
    store.record_metrics([MetricPoint(job.id, 1, 7, "loss", 2.5, 5.0),
                          MetricPoint(job.id, 1, 7, "total_steps", 50, 5.0)])
    store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TABLE job_progress")
    conn.execute("ALTER TABLE attempts DROP COLUMN not_before")  # migration 4's
    conn.execute("DELETE FROM schema_migrations WHERE version >= 3")
    migrate(conn, MIGRATIONS)
    conn.close()
    store = Store(path)
    p = store.progress([(job.id, 1)])[(job.id, 1)]
    assert (p.step, p.total, p.loss) == (7, 50, 2.5)
    store.close()
