"""Store contract: several processes on one file, a writer killed with
SIGKILL, schema migrations, file modes and the default location."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest

from engine.store import Store, StoreError, default_path
from engine.store import migrations as mig
from tests.contract.store_helpers import make_spec, worker

TABLES = {"jobs", "job_deps", "attempts", "events", "allocations", "metrics", "telemetry",
          "schema_migrations"}
SCHEMA_SQL = "SELECT sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
INDEXES = {"jobs_state", "events_job", "metrics_series", "telemetry_node_time"}


def _scalar(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql).fetchone()[0])


def _names(path: Path, kind: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = ?", (kind,))}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_concurrent_submits_from_processes_lose_nothing(tmp_path: Path) -> None:
    # The file does not exist yet: the four processes also race to create it.
    db = tmp_path / "engine.db"
    go = tmp_path / "go"
    procs = [worker("submit", str(db), "250", f"w{i}", str(go)) for i in range(4)]
    time.sleep(0.2)
    go.touch()
    reported: list[int] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ids = json.loads(out)
        assert len(ids) == 250
        reported += ids

    assert len(set(reported)) == 1000
    with Store(db) as store:
        jobs = store.list_jobs()
        assert len(jobs) == 1000
        assert {j.id for j in jobs} == set(reported)
        assert {j.spec.name for j in jobs} == {f"w{i}-{n}" for i in range(4) for n in range(250)}
        assert store.integrity_check() == "ok"
        assert store.schema_versions() == [v for v, _ in mig.MIGRATIONS]
    assert _scalar(db, "SELECT COUNT(*) FROM attempts") == 1000
    assert _scalar(db, "SELECT COUNT(*) FROM events") == 1000
    assert _scalar(db, "SELECT COUNT(*) FROM (SELECT job_id FROM attempts GROUP BY job_id"
                       " HAVING COUNT(*) = 1 AND MIN(number) = 1)") == 1000
    assert _scalar(db, "SELECT COUNT(DISTINCT job_id) FROM events") == 1000


def test_processes_opening_a_fresh_file_at_once(tmp_path: Path) -> None:
    # Creating the schema and switching to WAL race when several processes
    # (daemon, CLI, console) open a file that does not exist yet.
    for round_ in range(3):
        db = tmp_path / f"r{round_}" / "engine.db"
        go = tmp_path / f"go{round_}"
        procs = [worker("open", str(db), str(go)) for _ in range(6)]
        time.sleep(0.3)
        go.touch()
        ids = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            ids.append(int(out))
        assert sorted(ids) == list(range(1, 7))
        with Store(db) as store:
            assert store.schema_versions() == [v for v, _ in mig.MIGRATIONS]
            assert store.integrity_check() == "ok"
            assert len(store.list_jobs()) == 6


def test_open_waits_out_a_writer_on_a_new_file(tmp_path: Path) -> None:
    # A connection holding a write lock on a file still in rollback-journal
    # mode (another process half-way through creating it): SQLite refuses the
    # switch to WAL at once, without its busy handler; the Store waits.
    db = tmp_path / "engine.db"
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE unrelated (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO unrelated VALUES (1)")
    release = threading.Timer(0.3, lambda: other.execute("COMMIT"))
    release.start()
    try:
        t0 = time.monotonic()
        with Store(db) as store:
            assert time.monotonic() - t0 >= 0.25
            assert store.schema_versions() == [v for v, _ in mig.MIGRATIONS]
            store.submit(make_spec(), 1, actor="t", now=1.0)
    finally:
        release.join()
        other.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM unrelated").fetchone()[0] == 1
    conn.close()


@pytest.mark.parametrize("delay", [0.5, 0.05, 1.0])
def test_sigkill_mid_write_leaves_whole_batches(tmp_path: Path, delay: float) -> None:
    db = tmp_path / "engine.db"
    ready = tmp_path / "ready"
    batch = 25
    proc = worker("batches", str(db), str(batch), str(ready))
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the writer never committed"
        time.sleep(0.005)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # it was still writing when killed

    with Store(db) as store:
        assert store.integrity_check() == "ok"
        jobs = _scalar(db, "SELECT COUNT(*) FROM jobs")
        assert jobs > 0 and jobs % batch == 0
        assert _scalar(db, "SELECT COUNT(*) FROM attempts") == jobs
        assert _scalar(db, "SELECT COUNT(*) FROM events") >= jobs
        # No orphans either way, and every job has exactly its attempt and event.
        assert _scalar(db, "SELECT COUNT(*) FROM attempts a"
                           " LEFT JOIN jobs j ON j.id = a.job_id WHERE j.id IS NULL") == 0
        assert _scalar(db, "SELECT COUNT(*) FROM events e"
                           " LEFT JOIN jobs j ON j.id = e.job_id WHERE j.id IS NULL") == 0
        assert _scalar(db, "SELECT COUNT(*) FROM jobs j WHERE"
                           " (SELECT COUNT(*) FROM attempts a WHERE a.job_id = j.id) != 1"
                           " OR (SELECT COUNT(*) FROM events e WHERE e.job_id = j.id) != 1") == 0
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        # Batches are whole: each b<N>-* name group has all `batch` members.
        names = [j.spec.name for j in store.list_jobs()]
        groups: dict[str, int] = {}
        for name in names:
            groups[name.split("-")[0]] = groups.get(name.split("-")[0], 0) + 1
        assert set(groups.values()) == {batch}
        # And the store goes on working.
        more = store.submit(make_spec("after-crash"), 1, actor="t", now=1.0)
        assert store.get_job(more.id).spec.name == "after-crash"


def test_fresh_file_gets_the_whole_schema(db_path: Path) -> None:
    with Store(db_path) as store:
        assert store.schema_versions() == [v for v, _ in mig.MIGRATIONS]
    assert TABLES <= _names(db_path, "table")
    assert INDEXES <= _names(db_path, "index")
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("kind", ["zero-bytes", "empty-sqlite", "foreign-table"])
def test_version_zero_database_is_migrated(db_path: Path, kind: str) -> None:
    if kind == "zero-bytes":
        db_path.touch(mode=0o600)
    else:
        with sqlite3.connect(db_path) as conn:
            conn.execute("PRAGMA user_version = 0")
            if kind == "foreign-table":
                conn.execute("CREATE TABLE notes (x TEXT)")
                conn.execute("INSERT INTO notes VALUES ('kept')")
        conn.close()
    with sqlite3.connect(db_path) as conn:
        assert mig.current_version(conn) == 0
    conn.close()
    with Store(db_path) as store:
        assert store.schema_versions() == [v for v, _ in mig.MIGRATIONS]
        job = store.submit(make_spec(), 1, actor="t", now=1.0)
        assert store.get_job(job.id) == job
    if kind == "foreign-table":
        assert _scalar(db_path, "SELECT COUNT(*) FROM notes") == 1


def test_reopening_is_idempotent(db_path: Path) -> None:
    with Store(db_path) as store:
        job = store.submit(make_spec("kept"), 1, actor="t", now=1.0)
    with sqlite3.connect(db_path) as conn:
        first = conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()
        schema = conn.execute(SCHEMA_SQL).fetchall()
    conn.close()
    for _ in range(3):
        with Store(db_path) as store:
            assert store.get_job(job.id) == job
            assert store.schema_versions() == [v for v, _ in mig.MIGRATIONS]
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        assert conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall() \
            == first
        assert conn.execute(SCHEMA_SQL).fetchall() == schema
        assert mig.migrate(conn) == []
    conn.close()


def test_older_database_gets_only_the_missing_migrations(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(db_path) as store:
        job = store.submit(make_spec("old"), 1, actor="t", now=1.0)
    latest = mig.latest_version()
    newer = [*mig.MIGRATIONS,
             (latest + 1, ["CREATE TABLE extra (id INTEGER PRIMARY KEY, note TEXT)",
                           "INSERT INTO extra (note) VALUES ('once')"]),
             (latest + 2, ["ALTER TABLE extra ADD COLUMN more TEXT"])]
    monkeypatch.setattr(mig, "MIGRATIONS", newer)
    with Store(db_path) as store:
        assert store.schema_versions() == [v for v, _ in newer]
        assert store.get_job(job.id) == job
    with Store(db_path) as store:  # applied once only
        assert store.schema_versions() == [v for v, _ in newer]
    assert _scalar(db_path, "SELECT COUNT(*) FROM extra") == 1


def test_failed_migration_rolls_back_whole(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(db_path):
        pass
    latest = mig.latest_version()
    broken = [*mig.MIGRATIONS,
              (latest + 1, ["CREATE TABLE half (x)", "THIS IS NOT SQL"])]
    monkeypatch.setattr(mig, "MIGRATIONS", broken)
    with pytest.raises(StoreError):
        Store(db_path)
    assert "half" not in _names(db_path, "table")
    monkeypatch.undo()
    with Store(db_path) as store:
        assert store.schema_versions() == [v for v, _ in mig.MIGRATIONS]


def test_newer_database_is_refused(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(db_path):
        pass
    monkeypatch.setattr(mig, "MIGRATIONS", [*mig.MIGRATIONS, (mig.latest_version() + 1, [])])
    with Store(db_path):
        pass
    monkeypatch.undo()
    with pytest.raises(StoreError, match="newer"):
        Store(db_path)


def test_migration_list_must_increase() -> None:
    with sqlite3.connect(":memory:", isolation_level=None) as conn:
        with pytest.raises(mig.MigrationError):
            mig.migrate(conn, [(2, []), (1, [])])
        with pytest.raises(mig.MigrationError):
            mig.migrate(conn, [(0, [])])
    conn.close()


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o077])
def test_file_and_directory_modes(tmp_path: Path, umask: int) -> None:
    db = tmp_path / "new" / "deeper" / "engine.db"
    old = os.umask(umask)
    try:
        with Store(db) as store:
            store.submit(make_spec(), 1, actor="t", now=1.0)
            assert _mode(db.parent) == 0o700
            assert _mode(db) == 0o600
            for suffix in ("-wal", "-shm"):
                side = db.with_name(db.name + suffix)
                assert side.exists() and _mode(side) == 0o600
    finally:
        os.umask(old)


def test_existing_directory_is_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with Store(shared / "engine.db"):
        pass
    assert _mode(shared) == 0o755
    assert _mode(shared / "engine.db") == 0o600


def test_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMCONSOLE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "home" / "engine.db"
    assert not (tmp_path / "home").exists()  # computing the path creates nothing

    monkeypatch.delenv("LLMCONSOLE_HOME")
    assert default_path() == tmp_path / "xdg" / "llmconsole" / "engine.db"
    monkeypatch.setenv("LLMCONSOLE_HOME", "")
    assert default_path() == tmp_path / "xdg" / "llmconsole" / "engine.db"

    monkeypatch.delenv("LLMCONSOLE_HOME")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert default_path() == tmp_path / "user" / ".local" / "share" / "llmconsole" / "engine.db"

    # Opening it creates the home 0700 and the file 0600.
    monkeypatch.setenv("LLMCONSOLE_HOME", str(tmp_path / "made"))
    with Store(default_path()) as store:
        assert store.path == tmp_path / "made" / "engine.db"
    assert _mode(tmp_path / "made") == 0o700
    assert _mode(tmp_path / "made" / "engine.db") == 0o600


def test_pragmas_of_an_open_store(db_path: Path) -> None:
    # journal_mode is persistent in the file; the others are per connection,
    # so they are checked on a Store's own connection through its behaviour:
    # foreign keys are enforced (a metric for a missing attempt is refused).
    from engine.store import MetricPoint

    with Store(db_path) as store:
        with pytest.raises(StoreError, match="FOREIGN KEY"):
            store.record_metrics([MetricPoint(1, 1, 0, "loss", 1.0, 1.0)])
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0
