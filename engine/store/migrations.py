"""The store's schema, as numbered migrations.

Contract:
  * `MIGRATIONS` is a list of `(version, [sql statements])`, versions strictly
    increasing from 1. A released migration is never edited: a schema change is
    a new entry at the end.
  * `migrate(conn)` applies, in order, every migration whose version is above
    the database's current one. Each migration runs inside its own
    `BEGIN IMMEDIATE` transaction together with the row that records it in
    `schema_migrations`, so a migration is either fully applied and recorded or
    not at all (SQLite DDL is transactional). The current version is re-read
    inside that transaction, so processes opening the same file at once apply
    each migration exactly once.
  * A database whose version is above the newest known one was written by a
    newer engine: `migrate` refuses it (`MigrationError`) rather than guess.
  * The statements are constants: no value is ever formatted into them.

The connection must be in autocommit mode (`isolation_level=None`): the
transactions here are explicit.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

Migration = tuple[int, Sequence[str]]

MIGRATIONS: list[Migration] = [
    (
        1,
        [
            # One row per job; `state`, `attempt`, `reason`, `exit_code` mirror
            # the job's current (latest) attempt. name/kind/priority are copies
            # of the spec's, kept as columns for ordering and filtering.
            """
            CREATE TABLE jobs (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                name         TEXT    NOT NULL,
                kind         TEXT    NOT NULL,
                priority     INTEGER NOT NULL,
                spec_json    TEXT    NOT NULL,
                owner_uid    INTEGER NOT NULL,
                state        TEXT    NOT NULL CHECK (state IN (
                    'held', 'queued', 'starting', 'running',
                    'succeeded', 'failed', 'cancelled', 'lost')),
                attempt      INTEGER NOT NULL CHECK (attempt >= 1),
                submitted_at REAL    NOT NULL,
                updated_at   REAL    NOT NULL,
                reason       TEXT,
                exit_code    INTEGER
            )
            """,
            # Serves "jobs by state" and pending()'s priority order.
            "CREATE INDEX jobs_state ON jobs (state, priority DESC, id)",
            "CREATE INDEX jobs_owner ON jobs (owner_uid, id)",
            """
            CREATE TABLE job_deps (
                job_id    INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
                parent_id INTEGER NOT NULL REFERENCES jobs (id),
                PRIMARY KEY (job_id, parent_id)
            ) WITHOUT ROWID
            """,
            "CREATE INDEX job_deps_parent ON job_deps (parent_id)",
            """
            CREATE TABLE attempts (
                job_id           INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
                number           INTEGER NOT NULL CHECK (number >= 1),
                state            TEXT    NOT NULL CHECK (state IN (
                    'held', 'queued', 'starting', 'running',
                    'succeeded', 'failed', 'cancelled', 'lost')),
                placements_json  TEXT    NOT NULL DEFAULT '[]',
                pid              INTEGER,
                exit_code        INTEGER,
                reason           TEXT,
                created_at       REAL    NOT NULL,
                started_at       REAL,
                ended_at         REAL,
                cancel_requested INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (job_id, number)
            ) WITHOUT ROWID
            """,
            "CREATE INDEX attempts_state ON attempts (state)",
            """
            CREATE TABLE events (
                id         INTEGER PRIMARY KEY,
                job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
                attempt    INTEGER NOT NULL,
                time       REAL    NOT NULL,
                from_state TEXT CHECK (from_state IS NULL OR from_state IN (
                    'held', 'queued', 'starting', 'running',
                    'succeeded', 'failed', 'cancelled', 'lost')),
                to_state   TEXT    NOT NULL CHECK (to_state IN (
                    'held', 'queued', 'starting', 'running',
                    'succeeded', 'failed', 'cancelled', 'lost')),
                cause      TEXT    NOT NULL,
                actor      TEXT    NOT NULL
            )
            """,
            "CREATE INDEX events_job ON events (job_id, id)",
            """
            CREATE TABLE allocations (
                id        INTEGER PRIMARY KEY,
                job_id    INTEGER NOT NULL,
                attempt   INTEGER NOT NULL,
                node      TEXT    NOT NULL,
                gpus_json TEXT    NOT NULL,
                cpus      INTEGER NOT NULL,
                active    INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
                FOREIGN KEY (job_id, attempt)
                    REFERENCES attempts (job_id, number) ON DELETE CASCADE
            )
            """,
            "CREATE INDEX allocations_attempt ON allocations (job_id, attempt)",
            "CREATE INDEX allocations_active ON allocations (job_id, attempt) WHERE active = 1",
            # value is nullable: SQLite stores a NaN as NULL; read back as NaN.
            """
            CREATE TABLE metrics (
                id      INTEGER PRIMARY KEY,
                job_id  INTEGER NOT NULL,
                attempt INTEGER NOT NULL,
                step    INTEGER NOT NULL,
                name    TEXT    NOT NULL,
                value   REAL,
                time    REAL    NOT NULL,
                FOREIGN KEY (job_id, attempt)
                    REFERENCES attempts (job_id, number) ON DELETE CASCADE
            )
            """,
            "CREATE INDEX metrics_series ON metrics (job_id, attempt, name, step)",
            """
            CREATE TABLE telemetry (
                id             INTEGER PRIMARY KEY,
                node           TEXT NOT NULL,
                time           REAL NOT NULL,
                cpu_percent    REAL,
                memory_percent REAL,
                load1          REAL,
                gpus_json      TEXT NOT NULL DEFAULT '[]'
            )
            """,
            "CREATE INDEX telemetry_node_time ON telemetry (node, time)",
        ],
    ),
    (
        2,
        [
            # Telemetry history beyond the full-rate window: one row per node
            # and minute (`time` is the minute's start, a multiple of 60) and
            # one per GPU of it, holding sums and counts of what the samples
            # of that minute said (a null figure is not counted), added to as
            # samples are recorded; an average is sum / count.
            """
            CREATE TABLE telemetry_minute (
                node       TEXT    NOT NULL,
                time       REAL    NOT NULL,
                samples    INTEGER NOT NULL CHECK (samples >= 1),
                cpu_sum    REAL    NOT NULL DEFAULT 0,
                cpu_n      INTEGER NOT NULL DEFAULT 0,
                memory_sum REAL    NOT NULL DEFAULT 0,
                memory_n   INTEGER NOT NULL DEFAULT 0,
                load1_sum  REAL    NOT NULL DEFAULT 0,
                load1_n    INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (node, time)
            ) WITHOUT ROWID
            """,
            """
            CREATE TABLE telemetry_minute_gpu (
                node            TEXT    NOT NULL,
                time            REAL    NOT NULL,
                gpu             INTEGER NOT NULL,
                util_sum        REAL    NOT NULL DEFAULT 0,
                util_n          INTEGER NOT NULL DEFAULT 0,
                used_sum        REAL    NOT NULL DEFAULT 0,
                used_n          INTEGER NOT NULL DEFAULT 0,
                temp_sum        REAL    NOT NULL DEFAULT 0,
                temp_n          INTEGER NOT NULL DEFAULT 0,
                power_sum       REAL    NOT NULL DEFAULT 0,
                power_n         INTEGER NOT NULL DEFAULT 0,
                memory_total_mb REAL,
                power_limit_w   REAL,
                PRIMARY KEY (node, time, gpu)
            ) WITHOUT ROWID
            """,
            # Every full-rate sample from `full_rate_from` on is held (older
            # ones were pruned): one row, or none before the first prune.
            """
            CREATE TABLE telemetry_horizon (
                id             INTEGER PRIMARY KEY CHECK (id = 1),
                full_rate_from REAL    NOT NULL
            )
            """,
            # The prune drops rows by age, across nodes.
            "CREATE INDEX telemetry_time ON telemetry (time)",
            "CREATE INDEX telemetry_minute_time ON telemetry_minute (time)",
            "CREATE INDEX telemetry_minute_gpu_time ON telemetry_minute_gpu (time)",
            # The minutes of the telemetry held before this version.
            """
            INSERT INTO telemetry_minute (node, time, samples, cpu_sum, cpu_n, memory_sum,
                                          memory_n, load1_sum, load1_n)
            SELECT node, CAST(time / 60 AS INTEGER) * 60, count(*),
                   total(cpu_percent), count(cpu_percent), total(memory_percent),
                   count(memory_percent), total(load1), count(load1)
            FROM telemetry GROUP BY 1, 2
            """,
            """
            INSERT INTO telemetry_minute_gpu (node, time, gpu, util_sum, util_n, used_sum,
                                              used_n, temp_sum, temp_n, power_sum, power_n,
                                              memory_total_mb, power_limit_w)
            SELECT node, minute, gpu, total(util), count(util), total(used), count(used),
                   total(temp), count(temp), total(power), count(power), max(memory_total),
                   max(power_limit)
            FROM (
                SELECT t.node AS node, CAST(t.time / 60 AS INTEGER) * 60 AS minute,
                       json_extract(g.value, '$.index') AS gpu,
                       json_extract(g.value, '$.util_percent') AS util,
                       json_extract(g.value, '$.memory_used_mb') AS used,
                       json_extract(g.value, '$.temperature_c') AS temp,
                       json_extract(g.value, '$.power_w') AS power,
                       json_extract(g.value, '$.memory_total_mb') AS memory_total,
                       json_extract(g.value, '$.power_limit_w') AS power_limit
                FROM telemetry t,  -- a row Python wrote with NaN is not JSON to SQLite
                     json_each(CASE WHEN json_valid(t.gpus_json) THEN t.gpus_json ELSE '[]' END) g
                WHERE json_type(g.value, '$.index') = 'integer'
            )
            GROUP BY node, minute, gpu
            """,
        ],
    ),
    (
        3,
        [
            # Each attempt's progress as its latest metric points said it
            # (step, total steps, loss, tokens/s), kept as points are
            # recorded, so a job list shows STEP and LOSS of every job with
            # one read, whenever it is asked.
            """
            CREATE TABLE job_progress (
                job_id       INTEGER NOT NULL,
                attempt      INTEGER NOT NULL,
                step         INTEGER NOT NULL,
                total        INTEGER,
                loss         REAL,
                tokens_per_s REAL,
                time         REAL    NOT NULL,
                PRIMARY KEY (job_id, attempt),
                FOREIGN KEY (job_id, attempt)
                    REFERENCES attempts (job_id, number) ON DELETE CASCADE
            ) WITHOUT ROWID
            """,
            """
            INSERT INTO job_progress (job_id, attempt, step, total, loss, tokens_per_s, time)
            SELECT m.job_id, m.attempt, MAX(m.step),
                (SELECT CAST(t.value AS INTEGER) FROM metrics t WHERE t.job_id = m.job_id
                 AND t.attempt = m.attempt AND t.name = 'total_steps'
                 ORDER BY t.step DESC, t.id DESC LIMIT 1),
                (SELECT l.value FROM metrics l WHERE l.job_id = m.job_id
                 AND l.attempt = m.attempt AND l.name = 'loss' AND l.value IS NOT NULL
                 ORDER BY l.step DESC, l.id DESC LIMIT 1),
                (SELECT r.value FROM metrics r WHERE r.job_id = m.job_id
                 AND r.attempt = m.attempt AND r.name = 'tokens_per_s'
                 ORDER BY r.step DESC, r.id DESC LIMIT 1),
                MAX(m.time)
            FROM metrics m GROUP BY m.job_id, m.attempt
            """,
        ],
    ),
    (
        4,
        [
            # The earliest time an attempt may be placed: an automatic
            # retry's backoff (engine.scheduler.retry_backoff_s). Null, as
            # every attempt written before this version reads: at once.
            "ALTER TABLE attempts ADD COLUMN not_before REAL",
        ],
    ),
]

_CREATE_VERSIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    applied_at REAL NOT NULL
)
"""


class MigrationError(Exception):
    """The database cannot be brought to this engine's schema."""


def latest_version(migrations: Sequence[Migration] | None = None) -> int:
    migrations = MIGRATIONS if migrations is None else migrations
    return migrations[-1][0] if migrations else 0


def current_version(conn: sqlite3.Connection) -> int:
    """The highest applied version; 0 for a database never migrated."""
    # fetchall(): finish each statement, so no read stays open in between.
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchall()
    if not rows:
        return 0
    got = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchall()
    return int(got[0][0]) if got and got[0][0] is not None else 0


def applied_versions(conn: sqlite3.Connection) -> list[int]:
    if current_version(conn) == 0:
        return []
    return [int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations ORDER BY 1")]


def _validate(migrations: Sequence[Migration]) -> None:
    previous = 0
    for version, _ in migrations:
        if not isinstance(version, int) or version <= previous:
            raise MigrationError(f"migration versions must increase from 1: {version!r}")
        previous = version


def migrate(
    conn: sqlite3.Connection, migrations: Sequence[Migration] | None = None
) -> list[int]:
    """Apply the missing migrations (of `MIGRATIONS` unless given); return the
    versions applied by this call."""
    if migrations is None:
        migrations = MIGRATIONS
    if conn.isolation_level is not None:
        raise MigrationError("migrate needs an autocommit connection (isolation_level=None)")
    _validate(migrations)
    newest = latest_version(migrations)
    applied: list[int] = []
    for version, statements in migrations:
        if current_version(conn) >= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_CREATE_VERSIONS)
            have = current_version(conn)  # re-read under the write lock
            if have < version:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
                applied.append(version)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    have = current_version(conn)
    if have > newest:
        raise MigrationError(
            f"database schema version {have} is newer than this engine's ({newest})"
        )
    return applied
