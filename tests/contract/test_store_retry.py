"""Store contract: an attempt's not-before time (an automatic retry's
backoff), migration 4. Old rows read back as None; a retry's time is kept
on its attempt and shown on the job as its current attempt's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.lifecycle import JobState
from engine.store import Store
from engine.store.migrations import MIGRATIONS, migrate
from tests.contract.store_helpers import make_spec


def _fail(store: Store, job_id: int, number: int, now: float) -> None:
    """End the queued attempt (a terminal state, so that a retry may follow)."""
    store.transition(job_id, number, JobState.QUEUED, JobState.CANCELLED, cause="t", actor="t",
                     now=now)


def test_not_before_is_kept_per_attempt_and_old_rows_migrate_with_null(tmp_path: Path) -> None:
    path = tmp_path / "engine.db"
    with Store(path) as store:
        job = store.submit(make_spec("old"), 0, actor="t", now=1.0)
        _fail(store, job.id, 1, 2.0)
        store.new_attempt(job.id, cause="retry", actor="t", now=3.0)
    # the file as an engine before migration 4 left it
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("ALTER TABLE attempts DROP COLUMN not_before")
    conn.execute("DELETE FROM schema_migrations WHERE version >= 4")
    conn.close()
    with Store(path) as store:
        assert store.schema_versions() == [v for v, _ in MIGRATIONS]
        assert [a.not_before for a in store.attempts(job.id)] == [None, None]
        assert store.get_job(job.id).not_before is None
        _fail(store, job.id, 2, 4.0)
        retry = store.new_attempt(job.id, cause="automatic retry 2 of 3", actor="engine",
                                  now=5.0, not_before=15.5)
        assert retry.number == 3 and retry.not_before == 15.5
        assert store.get_attempt(job.id, 3).not_before == 15.5
        assert store.get_job(job.id).not_before == 15.5
        assert [(j.id, j.not_before) for j in store.pending()] == [(job.id, 15.5)]
        # a manual retry (no not_before) is not delayed, and the earlier one is kept
        _fail(store, job.id, 3, 16.0)
        store.new_attempt(job.id, cause="retry by t", actor="t", now=17.0)
        assert [a.not_before for a in store.attempts(job.id)] == [None, None, 15.5, None]
        assert store.pending()[0].not_before is None
        for bad in (float("nan"), "soon", True):
            _fail(store, job.id, store.get_job(job.id).attempt, 18.0)
            with pytest.raises(TypeError, match="not_before"):
                store.new_attempt(job.id, cause="x", actor="t", now=19.0,
                                  not_before=bad)  # type: ignore[arg-type]
            store.new_attempt(job.id, cause="x", actor="t", now=19.0)
    # migration 4 again on a file that has it: nothing to do
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn) == []
    conn.close()
