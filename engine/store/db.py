"""The durable job queue: one SQLite file, the single source of truth for
jobs, their attempts and history, GPU allocations, metrics and telemetry.

Contracts:
  * One `Store` per thread or process, each with its own connection; any
    number of them, in any number of processes, may share one file. SQLite
    runs in WAL mode with synchronous=NORMAL (a commit is atomic and ordered
    but not fsync'ed: a power cut may lose the last commits, never corrupt the
    file or split one), foreign_keys=ON and a 10 s busy timeout.
  * Every write is one explicit `BEGIN IMMEDIATE ... COMMIT` transaction; any
    exception rolls it back whole, so a failed call writes nothing.
  * Every state change is a compare-and-set: `UPDATE attempts ... WHERE
    state = <expected>` inside that transaction. A lost race raises
    `StaleState` (carrying the state found); a move the table in
    `engine.lifecycle` forbids, or any move out of a terminal state, raises
    `InvalidTransition` with the job's history. A terminal attempt is never
    left; a retry is a new attempt (`new_attempt`).
  * Each transition appends exactly one event; a submitted job has exactly one
    attempt (number 1) and one event (from None, cause "submitted").
  * `jobs.state/attempt/reason/exit_code` mirror the job's current (latest)
    attempt and are updated in the same transaction as the attempt.
  * A job's spec is stored as `JobSpec.to_dict()` JSON, verbatim: argv and env
    are data, never interpreted. `Job.spec` read back equals
    `JobSpec.from_dict(spec.to_dict())`.
  * SQL is parameterised; the only SQL assembled at run time is made of
    constant fragments chosen by which optional filters are given.
  * Reads are single statements (each sees one consistent snapshot). A Store
    keeps a bounded cache of the Jobs it decoded and reuses one only when its
    row is unchanged, so a read always reflects the file.
  * The file is created 0600 (SQLite gives its -wal/-shm files the same
    mode); a missing parent directory is created 0700.
  * The -wal file stays bounded: journal_size_limit (WAL_SIZE_LIMIT) on
    every connection, and the writer's periodic `checkpoint_wal`, which
    never waits for a reader.
  * Telemetry is kept at full rate for TELEMETRY_FULL_RATE_S and as
    one-minute averages beyond, up to the keep period (`prune_telemetry`,
    which the engine calls periodically); `telemetry_history` reads a node's
    range at the finest resolution held for all of it.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from engine import lifecycle
from engine.lifecycle import InvalidTransition, JobState
from engine.model import Attempt, BatchRef, Event, Job, JobSpec, Placement
from engine.store import migrations
from engine.store.errors import StaleState, StoreError, UnknownJob
from engine.store.records import MetricPoint, TelemetryRow

BUSY_TIMEOUT_S = 10.0
# The -wal file is cut back to this size whenever the log restarts, and
# checkpoint_wal truncates it to nothing once no reader holds it: a reader
# that keeps a read transaction open (a CLI streaming a log) lets it grow
# only while it reads.
WAL_SIZE_LIMIT = 4 * 1024 * 1024
WAL_CHECKPOINT_BYTES = 1024 * 1024  # the size the engine checkpoints from (checkpoint_wal)
# Telemetry history: every sample is kept this long (a chart of the last hour
# at 1 Hz), one-minute averages (made as samples are recorded) for as long as
# the engine keeps telemetry: 64 nodes at 1 Hz make 230,000 samples an hour,
# a week of their minutes 645,000 rows (and one per GPU of each).
TELEMETRY_FULL_RATE_S = 3600.0
TELEMETRY_AVERAGE_S = 60  # the averaged resolution, seconds
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
DEFAULT_CACHE_SIZE = 32_768

# ASCII-only JSON: any str (even a lone surrogate from a non-UTF-8 file name)
# round-trips exactly; NaN/inf are refused rather than stored as non-JSON.
_SPEC_ENCODER = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":"))

_STATE: dict[str, JobState] = {s.value: s for s in JobState}
_ACTIVE_STATES = (JobState.STARTING.value, JobState.RUNNING.value)
_OPEN_STATES = (
    JobState.HELD.value,
    JobState.QUEUED.value,
    JobState.STARTING.value,
    JobState.RUNNING.value,
)

# --- SQL: constants only -------------------------------------------------

_SELECT_JOBS = """
SELECT j.id, j.spec_json, j.owner_uid, j.state, j.attempt, j.submitted_at, j.updated_at,
       j.reason, j.exit_code,
       (SELECT group_concat(d.parent_id) FROM job_deps d WHERE d.job_id = j.id),
       (SELECT a.not_before FROM attempts a WHERE a.job_id = j.id AND a.number = j.attempt)
FROM jobs j
"""

_SELECT_ATTEMPTS = """
SELECT job_id, number, state, placements_json, pid, exit_code, reason,
       created_at, started_at, ended_at, cancel_requested, not_before
FROM attempts
"""

_SELECT_EVENTS = """
SELECT job_id, attempt, time, from_state, to_state, cause, actor
FROM events
"""

_SELECT_METRICS = "SELECT job_id, attempt, step, name, value, time FROM metrics"

_SELECT_TELEMETRY = (
    "SELECT node, time, cpu_percent, memory_percent, load1, gpus_json FROM telemetry"
)

# One-minute averages are kept as sums and counts (a null figure is not
# counted), added to as samples arrive: one row per node and minute, one per
# GPU of it; the average is sum / count when read.
_ADD_MINUTE = """
INSERT INTO telemetry_minute (node, time, samples, cpu_sum, cpu_n, memory_sum, memory_n,
                              load1_sum, load1_n)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (node, time) DO UPDATE SET
    samples = samples + excluded.samples,
    cpu_sum = cpu_sum + excluded.cpu_sum, cpu_n = cpu_n + excluded.cpu_n,
    memory_sum = memory_sum + excluded.memory_sum, memory_n = memory_n + excluded.memory_n,
    load1_sum = load1_sum + excluded.load1_sum, load1_n = load1_n + excluded.load1_n
"""

_ADD_MINUTE_GPU = """
INSERT INTO telemetry_minute_gpu (node, time, gpu, util_sum, util_n, used_sum, used_n,
                                  temp_sum, temp_n, power_sum, power_n,
                                  memory_total_mb, power_limit_w)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (node, time, gpu) DO UPDATE SET
    util_sum = util_sum + excluded.util_sum, util_n = util_n + excluded.util_n,
    used_sum = used_sum + excluded.used_sum, used_n = used_n + excluded.used_n,
    temp_sum = temp_sum + excluded.temp_sum, temp_n = temp_n + excluded.temp_n,
    power_sum = power_sum + excluded.power_sum, power_n = power_n + excluded.power_n,
    memory_total_mb = max(coalesce(memory_total_mb, excluded.memory_total_mb),
                          coalesce(excluded.memory_total_mb, memory_total_mb)),
    power_limit_w = max(coalesce(power_limit_w, excluded.power_limit_w),
                        coalesce(excluded.power_limit_w, power_limit_w))
"""

_SELECT_MINUTES = """
SELECT time, cpu_sum / nullif(cpu_n, 0), memory_sum / nullif(memory_n, 0),
       load1_sum / nullif(load1_n, 0)
FROM telemetry_minute WHERE node = :node AND time >= :start AND time < :end ORDER BY time
"""

_SELECT_MINUTE_GPUS = """
SELECT time, gpu, util_sum / nullif(util_n, 0), used_sum / nullif(used_n, 0),
       memory_total_mb, temp_sum / nullif(temp_n, 0), power_sum / nullif(power_n, 0),
       power_limit_w
FROM telemetry_minute_gpu WHERE node = :node AND time >= :start AND time < :end
ORDER BY time, gpu
"""

_TELEMETRY_FULL_RATE = _SELECT_TELEMETRY + (
    " WHERE node = :node AND time >= :start AND time < :end ORDER BY time, id")

_SET_HORIZON = """
INSERT INTO telemetry_horizon (id, full_rate_from) VALUES (1, :from)
ON CONFLICT (id) DO UPDATE SET full_rate_from = max(full_rate_from, excluded.full_rate_from)
"""

_INSERT_JOB = """
INSERT INTO jobs (name, kind, priority, spec_json, owner_uid, state, attempt,
                  submitted_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)
"""

_INSERT_ATTEMPT = """
INSERT INTO attempts (job_id, number, state, created_at) VALUES (?, ?, ?, ?)
"""

_INSERT_RETRY = """
INSERT INTO attempts (job_id, number, state, created_at, not_before) VALUES (?, ?, ?, ?, ?)
"""

_INSERT_EVENT = """
INSERT INTO events (job_id, attempt, time, from_state, to_state, cause, actor)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""

_CAS_ATTEMPT = """
UPDATE attempts SET
    state           = :to,
    placements_json = COALESCE(:placements, placements_json),
    pid             = COALESCE(:pid, pid),
    exit_code       = COALESCE(:exit_code, exit_code),
    reason          = COALESCE(:reason, reason),
    started_at      = CASE WHEN :running THEN :now ELSE started_at END,
    ended_at        = CASE WHEN :terminal THEN :now ELSE ended_at END
WHERE job_id = :job_id AND number = :number AND state = :expected
"""

_MIRROR_JOB = """
UPDATE jobs SET state = ?, updated_at = ?, reason = ?, exit_code = ?
WHERE id = ? AND attempt = ?
"""


def default_path() -> Path:
    """$LLMCONSOLE_HOME/engine.db, else
    ${XDG_DATA_HOME:-~/.local/share}/llmconsole/engine.db. Creates nothing:
    `Store` creates the directory (0700) and the file (0600)."""
    from engine.paths import db_path

    return db_path()


def _prepare_file(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(parent, 0o700)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return int(code) & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc)
    return "locked" in text or "busy" in text


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """Put the file in WAL mode (persistent) and return the mode now in use.

    Switching needs an exclusive lock, and SQLite does not run the busy
    handler for it while another connection holds a write lock on a file
    still in rollback mode (as happens when several processes create the
    file at once): it fails at once with "database is locked". So the busy
    wait is done here, up to the same timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    pause = 0.001
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
            if str(mode).lower() == "wal":
                return "wal"
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]).lower()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _limit(limit: int | None) -> int:
    if limit is None:
        return -1
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative int or None, not {limit!r}")
    return limit


def _int_arg(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    return value


def _json_list(values: Iterable[Any]) -> str:
    return json.dumps(sorted(set(values)))


def _placements_json(placements: Sequence[Placement]) -> str:
    return json.dumps(
        [{"node": p.node, "gpus": [int(g) for g in p.gpus], "cpus": int(p.cpus)}
         for p in placements]
    )


def _placements(text: str) -> tuple[Placement, ...]:
    return tuple(
        Placement(node=str(p["node"]), gpus=tuple(int(g) for g in p["gpus"]), cpus=int(p["cpus"]))
        for p in json.loads(text)
    )


def _attempt(row: Sequence[Any]) -> Attempt:
    return Attempt(
        job_id=row[0],
        number=row[1],
        state=_STATE[row[2]],
        placements=_placements(row[3]) if row[3] != "[]" else (),
        pid=row[4],
        exit_code=row[5],
        reason=row[6],
        created_at=row[7],
        started_at=row[8],
        ended_at=row[9],
        cancel_requested=bool(row[10]),
        not_before=row[11],
    )


def _event(row: Sequence[Any]) -> Event:
    return Event(
        job_id=row[0],
        attempt=row[1],
        time=row[2],
        from_state=_STATE[row[3]] if row[3] is not None else None,
        to_state=_STATE[row[4]],
        cause=row[5],
        actor=row[6],
    )


def _current_number(conn: sqlite3.Connection, job_id: int) -> int:
    row = conn.execute("SELECT attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise UnknownJob(job_id)
    return int(row[0])


def _finite(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite time, not {value!r}")
    return number


def _minute_of(t: float) -> float:
    """The start of the minute `t` falls in."""
    return float(math.floor(t / TELEMETRY_AVERAGE_S) * TELEMETRY_AVERAGE_S)


def _figure(value: Any) -> float | None:
    """A measured figure, or None (missing, not a number, or not finite)."""
    kind = type(value)
    if kind is not float and kind is not int:  # bool is neither here
        return None
    return float(value) if value - value == 0 else None  # inf - inf and NaN are NaN


def _add(acc: list[Any], at: int, value: Any) -> None:
    """Count `value` into the sum at acc[at] and the count at acc[at + 1]."""
    kind = type(value)
    if (kind is float or kind is int) and value - value == 0:
        acc[at] += value
        acc[at + 1] += 1


def _larger(held: float | None, value: Any) -> float | None:
    number = _figure(value)
    if number is None:
        return held
    return number if held is None else max(held, number)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass(frozen=True)
class TelemetryHistory:
    """A node's telemetry over a time range (Store.telemetry_history):
    `resolution_s` None for every sample as the agent reported it, 60 for
    one-minute averages (each row's time is the start of its minute)."""

    node: str
    resolution_s: float | None
    rows: list[TelemetryRow]


def _float_or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class Progress:
    """An attempt's latest step (and total steps, loss, tokens/s when its
    points said them), and when."""

    step: int
    total: int | None
    loss: float | None
    tokens_per_s: float | None
    time: float


_UPSERT_PROGRESS = (
    "INSERT INTO job_progress (job_id, attempt, step, total, loss, tokens_per_s, time)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (job_id, attempt) DO UPDATE SET"
    " step = MAX(step, excluded.step),"
    " total = COALESCE(excluded.total, total),"
    " loss = CASE WHEN excluded.step >= step THEN COALESCE(excluded.loss, loss) ELSE loss END,"
    " tokens_per_s = CASE WHEN excluded.step >= step"
    "   THEN COALESCE(excluded.tokens_per_s, tokens_per_s) ELSE tokens_per_s END,"
    " time = MAX(time, excluded.time)"
)


def _progress_rows(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Metric rows (job, attempt, step, name, value, time) -> one progress
    row per attempt: its last step, and the last values there of total
    steps, loss and tokens/s."""
    latest: dict[tuple[int, int], dict[str, Any]] = {}
    for job_id, attempt, step, name, value, when in rows:
        p = latest.setdefault((job_id, attempt), {"step": step, "time": when})
        if step > p["step"]:
            p.update(step=step, loss=None, tokens_per_s=None)
        p["time"] = max(p["time"], when)
        if step == p["step"] and value is not None and name in ("loss", "tokens_per_s"):
            p[name] = value
        if name == "total_steps" and value is not None:
            p["total"] = int(value)
    return [(j, a, p["step"], p.get("total"), p.get("loss"), p.get("tokens_per_s"), p["time"])
            for (j, a), p in latest.items()]


class Store:
    """See the module docstring for the contracts."""

    def __init__(self, path: Path | str, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        """Open (creating and migrating as needed) the store at `path`.
        `cache_size` bounds how many decoded jobs are kept to make repeated
        listings cheap (about 1 KiB each; 0 disables)."""
        if str(path) == ":memory:" or str(path) == "":
            raise ValueError("the store needs a file path")
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._specs: dict[str, JobSpec] = {}
        self._jobs: OrderedDict[int, tuple[tuple[Any, ...], Job]] = OrderedDict()
        self._cache_size = _int_arg("cache_size", cache_size)
        try:
            _prepare_file(self.path)
            conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._configure(conn)
            migrations.migrate(conn)
        except migrations.MigrationError as exc:
            conn.close()
            raise StoreError(f"{self.path}: {exc}") from exc
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @staticmethod
    def _configure(conn: sqlite3.Connection) -> None:
        # PRAGMA values cannot be bound parameters; these are module constants
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = _switch_to_wal(conn)
        if mode != "wal":
            raise StoreError(f"cannot switch to WAL (journal mode is {mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA journal_size_limit = {int(WAL_SIZE_LIMIT)}")
        try:
            conn.execute("SELECT json_array_length(?)", ("[]",)).fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreError("this SQLite lacks the JSON functions") from exc

    # --- lifetime --------------------------------------------------------

    def close(self) -> None:
        """Close the connection; idempotent. The store is unusable after."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute("PRAGMA optimize")
        except sqlite3.Error:
            pass
        conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"store {self.path} is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` transaction; rolled back on any exception."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot begin a write on {self.path}: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{self.path}: {exc}") from exc
            raise

    def _rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc

    # --- decoding ----------------------------------------------------------

    def _spec(self, text: str) -> JobSpec:
        spec = self._specs.get(text)
        if spec is None:
            spec = JobSpec.from_dict(json.loads(text))
            if len(self._specs) >= 4096:
                self._specs.clear()
            self._specs[text] = spec
        return spec

    def _job(self, row: tuple[Any, ...]) -> Job:
        """Decode a `_SELECT_JOBS` row, reusing the Job built from an equal row
        (Jobs are immutable; any change to the row makes a new one)."""
        job_id = row[0]
        hit = self._jobs.get(job_id)
        if hit is not None and hit[0] == row:
            self._jobs.move_to_end(job_id)
            return hit[1]
        job = self._decode_job(row)
        self._remember(row, job)
        return job

    def _remember(self, row: tuple[Any, ...], job: Job) -> None:
        if self._cache_size <= 0:
            return
        self._jobs[job.id] = (row, job)
        self._jobs.move_to_end(job.id)
        while len(self._jobs) > self._cache_size:
            self._jobs.popitem(last=False)

    def _decode_job(self, row: tuple[Any, ...]) -> Job:
        deps = row[9]
        return Job(
            id=row[0],
            spec=self._spec(row[1]),
            owner_uid=row[2],
            state=_STATE[row[3]],
            attempt=row[4],
            submitted_at=row[5],
            updated_at=row[6],
            after=tuple(sorted(int(d) for d in deps.split(","))) if deps else (),
            reason=row[7],
            exit_code=row[8],
            not_before=row[10],
        )

    # --- submitting --------------------------------------------------------

    def submit(
        self,
        spec: JobSpec,
        owner_uid: int,
        *,
        after: Sequence[int] = (),
        actor: str,
        now: float,
    ) -> Job:
        """Queue one job: row, attempt 1, dependencies and the "submitted"
        event, in one transaction. HELD if any parent in `after` has not
        SUCCEEDED, else QUEUED. An unknown parent raises UnknownJob and writes
        nothing."""
        return self.submit_many([(spec, owner_uid, after)], actor=actor, now=now)[0]

    def submit_many(
        self,
        items: Sequence[tuple[JobSpec, int, Sequence[int | BatchRef]]],
        *,
        actor: str,
        now: float,
    ) -> list[Job]:
        """`submit` for each item, all in one transaction: all or none. An
        item may depend on an earlier item of the batch by `BatchRef`."""
        prepared: list[tuple[JobSpec, str, int, list[int | BatchRef]]] = []
        for index, (spec, owner_uid, after) in enumerate(items):
            if not isinstance(spec, JobSpec):
                raise TypeError(f"not a JobSpec: {spec!r}")
            text = _SPEC_ENCODER.encode(spec.to_dict())
            refs: list[int | BatchRef] = []
            for p in after:
                if isinstance(p, BatchRef):
                    if not 0 <= _int_arg("batch index", p.index) < index:
                        raise ValueError(f"item {index} depends on batch item {p.index}: "
                                         "expected an earlier item")
                    refs.append(p)
                else:
                    refs.append(_int_arg("parent id", p))
            prepared.append((self._spec(text), text, _int_arg("owner_uid", owner_uid), refs))
        if not prepared:
            return []
        jobs: list[Job] = []
        with self._write() as conn:
            for spec, text, owner_uid, refs in prepared:
                parents = sorted({jobs[p.index].id if isinstance(p, BatchRef) else p
                                  for p in refs})
                held = False
                for parent in parents:
                    row = conn.execute("SELECT state FROM jobs WHERE id = ?", (parent,)).fetchone()
                    if row is None:
                        raise UnknownJob(parent)
                    if row[0] != JobState.SUCCEEDED.value:
                        held = True
                state = JobState.HELD if held else JobState.QUEUED
                cur = conn.execute(
                    _INSERT_JOB,
                    (spec.name, spec.kind, spec.priority, text, owner_uid, state.value, now, now),
                )
                job_id = cur.lastrowid
                if job_id is None:
                    raise StoreError("insert returned no row id")
                if parents:
                    conn.executemany(
                        "INSERT INTO job_deps (job_id, parent_id) VALUES (?, ?)",
                        [(job_id, p) for p in parents],
                    )
                conn.execute(_INSERT_ATTEMPT, (job_id, 1, state.value, now))
                conn.execute(
                    _INSERT_EVENT, (job_id, 1, now, None, state.value, "submitted", actor)
                )
                jobs.append(
                    Job(
                        id=job_id,
                        spec=spec,
                        owner_uid=owner_uid,
                        state=state,
                        attempt=1,
                        submitted_at=now,
                        updated_at=now,
                        after=tuple(parents),
                    )
                )
        return jobs

    # --- reading jobs ----------------------------------------------------

    def get_job(self, job_id: int) -> Job:
        rows = self._rows(_SELECT_JOBS + " WHERE j.id = ?", (job_id,))
        if not rows:
            raise UnknownJob(job_id)
        return self._job(rows[0])

    def list_jobs(
        self,
        *,
        states: Collection[JobState] | None = None,
        owner_uid: int | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[Job]:
        """Jobs by id (newest first by default), optionally only those in
        `states` and/or of `owner_uid`, at most `limit` of them."""
        clauses: list[str] = []
        params: list[Any] = []
        if states is not None:
            wanted = [JobState(s).value for s in states]
            if not wanted:
                return []
            clauses.append("j.state IN (SELECT value FROM json_each(?))")
            params.append(_json_list(wanted))
        if owner_uid is not None:
            clauses.append("j.owner_uid = ?")
            params.append(owner_uid)
        sql = _SELECT_JOBS
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY j.id DESC LIMIT ?" if newest_first else " ORDER BY j.id LIMIT ?"
        params.append(_limit(limit))
        return [self._job(r) for r in self._rows(sql, params)]

    def pending(self) -> list[Job]:
        """QUEUED jobs, highest priority first, then oldest first."""
        rows = self._rows(
            _SELECT_JOBS + " WHERE j.state = ? ORDER BY j.priority DESC, j.id",
            (JobState.QUEUED.value,),
        )
        return [self._job(r) for r in rows]

    def held(self) -> list[Job]:
        """HELD jobs, oldest first, with `after` filled."""
        rows = self._rows(
            _SELECT_JOBS + " WHERE j.state = ? ORDER BY j.id", (JobState.HELD.value,)
        )
        return [self._job(r) for r in rows]

    def job_states(self, job_ids: Collection[int]) -> dict[int, JobState]:
        """The state of each given job that exists (unknown ids are left out)."""
        ids = [_int_arg("job id", i) for i in job_ids]
        if not ids:
            return {}
        rows = self._rows(
            "SELECT id, state FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
            (_json_list(ids),),
        )
        return {r[0]: _STATE[r[1]] for r in rows}

    # --- attempts and history --------------------------------------------

    def attempts(self, job_id: int) -> list[Attempt]:
        """Every attempt of the job, by number (never empty)."""
        rows = self._rows(_SELECT_ATTEMPTS + " WHERE job_id = ? ORDER BY number", (job_id,))
        if not rows:
            raise UnknownJob(job_id)
        return [_attempt(r) for r in rows]

    def get_attempt(self, job_id: int, number: int) -> Attempt:
        rows = self._rows(_SELECT_ATTEMPTS + " WHERE job_id = ? AND number = ?", (job_id, number))
        if not rows:
            self.get_job(job_id)  # UnknownJob(job_id) if the job itself is missing
            raise UnknownJob(job_id, number)
        return _attempt(rows[0])

    def history(self, job_id: int) -> list[Event]:
        """Every event of the job, oldest first (never empty)."""
        return self._history(self._connection(), job_id)

    def _history(self, conn: sqlite3.Connection, job_id: int) -> list[Event]:
        try:
            rows = conn.execute(_SELECT_EVENTS + " WHERE job_id = ? ORDER BY id", (job_id,))
            events = [_event(r) for r in rows]
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
        if not events:
            raise UnknownJob(job_id)
        return events

    # --- state changes -----------------------------------------------------

    def transition(
        self,
        job_id: int,
        number: int,
        expected: JobState,
        to: JobState,
        *,
        cause: str,
        actor: str,
        now: float,
        placements: Sequence[Placement] | None = None,
        pid: int | None = None,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> Attempt:
        """Move attempt `number` of the job from `expected` to `to`, if it is
        still in `expected` (compare-and-set). Returns the updated attempt.

        Raises InvalidTransition (with the history) if the table forbids
        `expected -> to` or the attempt is found terminal; StaleState if it is
        found in another non-terminal state; UnknownJob if there is no such
        job or attempt. `placements` is required for -> STARTING (and only
        then): stored on the attempt and as one active allocation per node;
        a terminal state deactivates the attempt's allocations. pid,
        exit_code and reason are set when given (None leaves them)."""
        expected = JobState(expected)
        to = JobState(to)
        if not lifecycle.is_legal(expected, to):
            lifecycle.check(job_id, expected, to, self.history(job_id))
        if to is JobState.STARTING:
            if placements is None:
                raise ValueError("a move to starting needs its placements")
            placements = tuple(placements)
        elif placements is not None:
            raise ValueError(f"placements are given on the move to starting, not to {to}")
        params = {
            "to": to.value,
            "placements": _placements_json(placements) if placements is not None else None,
            "pid": pid,
            "exit_code": exit_code,
            "reason": reason,
            "running": to is JobState.RUNNING,
            "terminal": to.is_terminal(),
            "now": now,
            "job_id": job_id,
            "number": number,
            "expected": expected.value,
        }
        with self._write() as conn:
            if conn.execute(_CAS_ATTEMPT, params).rowcount != 1:
                row = conn.execute(
                    "SELECT state FROM attempts WHERE job_id = ? AND number = ?",
                    (job_id, number),
                ).fetchone()
                if row is None:
                    exists = conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone()
                    raise UnknownJob(job_id, number if exists else None)
                current = _STATE[row[0]]
                if current.is_terminal():
                    raise InvalidTransition(job_id, current, to, self._history(conn, job_id))
                raise StaleState(job_id, number, expected, current)
            if placements:
                conn.executemany(
                    "INSERT INTO allocations (job_id, attempt, node, gpus_json, cpus, active)"
                    " VALUES (?, ?, ?, ?, ?, 1)",
                    [
                        (job_id, number, p.node, json.dumps([int(g) for g in p.gpus]), int(p.cpus))
                        for p in placements
                    ],
                )
            if to.is_terminal():
                conn.execute(
                    "UPDATE allocations SET active = 0"
                    " WHERE job_id = ? AND attempt = ? AND active = 1",
                    (job_id, number),
                )
            attempt = _attempt(
                conn.execute(
                    _SELECT_ATTEMPTS + " WHERE job_id = ? AND number = ?", (job_id, number)
                ).fetchone()
            )
            conn.execute(
                _MIRROR_JOB,
                (to.value, now, attempt.reason, attempt.exit_code, job_id, number),
            )
            conn.execute(
                _INSERT_EVENT, (job_id, number, now, expected.value, to.value, cause, actor)
            )
        return attempt

    def new_attempt(self, job_id: int, *, cause: str, actor: str, now: float,
                    not_before: float | None = None) -> Attempt:
        """Start the job over: attempt number+1 in QUEUED, made the job's
        current one, with an event (from None to QUEUED, `cause`). Only when
        the current attempt is terminal, else InvalidTransition. Earlier
        attempts and their events are left as they are. `not_before`: the
        scheduler leaves it queued until then (a retry's backoff); None, at
        once."""
        if not_before is not None and (isinstance(not_before, bool) or not isinstance(
                not_before, (int, float)) or not math.isfinite(not_before)):
            raise TypeError(f"not_before must be a finite time or None, not {not_before!r}")
        with self._write() as conn:
            row = conn.execute(
                "SELECT j.attempt, a.state FROM jobs j"
                " JOIN attempts a ON a.job_id = j.id AND a.number = j.attempt"
                " WHERE j.id = ?",
                (job_id,),
            ).fetchone()
            if row is None:
                raise UnknownJob(job_id)
            current = _STATE[row[1]]
            if not current.is_terminal():
                raise InvalidTransition(
                    job_id, current, JobState.QUEUED, self._history(conn, job_id)
                )
            number = row[0] + 1
            conn.execute(_INSERT_RETRY, (job_id, number, JobState.QUEUED.value, now, not_before))
            conn.execute(
                "UPDATE jobs SET attempt = ?, state = ?, updated_at = ?, reason = NULL,"
                " exit_code = NULL WHERE id = ?",
                (number, JobState.QUEUED.value, now, job_id),
            )
            conn.execute(
                _INSERT_EVENT, (job_id, number, now, None, JobState.QUEUED.value, cause, actor)
            )
        return Attempt(job_id=job_id, number=number, state=JobState.QUEUED, created_at=now,
                       not_before=not_before)

    def set_priority(self, job_id: int, priority: int, *, cause: str, actor: str,
                     now: float) -> bool:
        """Change a waiting (HELD or QUEUED) job's priority, in its column
        and its spec, with an event (state to itself, `cause`). False, and
        nothing written, when the job is no longer waiting."""
        priority = _int_arg("priority", priority)
        with self._write() as conn:
            row = conn.execute(
                "SELECT spec_json, state, attempt FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise UnknownJob(job_id)
            if row[1] not in (JobState.HELD.value, JobState.QUEUED.value):
                return False
            spec = json.loads(row[0])
            spec["priority"] = priority
            conn.execute(
                "UPDATE jobs SET priority = ?, spec_json = ?, updated_at = ? WHERE id = ?",
                (priority, _SPEC_ENCODER.encode(spec), now, job_id),
            )
            conn.execute(_INSERT_EVENT, (job_id, row[2], now, row[1], row[1], cause, actor))
        return True

    def note(self, job_id: int, number: int, *, cause: str, actor: str, now: float) -> None:
        """An event in the job's history that changes no state (the attempt's
        state to itself), e.g. "log copy stopped: no space left on device"."""
        with self._write() as conn:
            row = conn.execute("SELECT state FROM attempts WHERE job_id = ? AND number = ?",
                               (job_id, number)).fetchone()
            if row is None:
                raise UnknownJob(job_id)
            conn.execute(_INSERT_EVENT, (job_id, number, now, row[0], row[0], cause, actor))

    def request_cancel(self, job_id: int) -> Attempt:
        """Flag the current attempt for cancellation (no state change, no
        event; whoever runs it acts on the flag). A terminal attempt is left
        unflagged. Returns the current attempt."""
        with self._write() as conn:
            number = _current_number(conn, job_id)
            conn.execute(
                "UPDATE attempts SET cancel_requested = 1"
                " WHERE job_id = ? AND number = ? AND state IN (?, ?, ?, ?)",
                (job_id, number, *_OPEN_STATES),
            )
            row = conn.execute(
                _SELECT_ATTEMPTS + " WHERE job_id = ? AND number = ?", (job_id, number)
            ).fetchone()
        return _attempt(row)

    # --- what holds resources ----------------------------------------------

    def active_allocations(self) -> list[tuple[int, int, Placement]]:
        """(job_id, attempt, placement) of every attempt in STARTING/RUNNING."""
        rows = self._rows(
            "SELECT al.job_id, al.attempt, al.node, al.gpus_json, al.cpus"
            " FROM allocations al"
            " JOIN attempts a ON a.job_id = al.job_id AND a.number = al.attempt"
            " WHERE al.active = 1 AND a.state IN (?, ?)"
            " ORDER BY al.id",
            _ACTIVE_STATES,
        )
        return [
            (r[0], r[1], Placement(node=r[2], gpus=tuple(json.loads(r[3])), cpus=r[4]))
            for r in rows
        ]

    def active_attempts(self) -> list[Attempt]:
        """Attempts in STARTING/RUNNING, by job id."""
        rows = self._rows(
            _SELECT_ATTEMPTS + " WHERE state IN (?, ?) ORDER BY job_id, number", _ACTIVE_STATES
        )
        return [_attempt(r) for r in rows]

    # --- metrics and telemetry -------------------------------------------

    def record_metrics(self, points: Iterable[MetricPoint]) -> None:
        """Append points in one transaction. A point for an attempt that does
        not exist raises StoreError and writes none of them."""
        rows = [
            (
                p.job_id,
                p.attempt,
                p.step,
                p.name,
                None if math.isnan(p.value) else float(p.value),
                p.time,
            )
            for p in points
        ]
        if not rows:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO metrics (job_id, attempt, step, name, value, time)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(_UPSERT_PROGRESS, _progress_rows(rows))

    def progress(self, keys: Collection[tuple[int, int]]) -> dict[tuple[int, int], Progress]:
        """The latest progress of each (job id, attempt) asked for that has
        reported any metric point."""
        if not keys:
            return {}
        rows = self._rows(
            "SELECT p.job_id, p.attempt, p.step, p.total, p.loss, p.tokens_per_s, p.time"
            " FROM job_progress p JOIN json_each(?) k"
            " ON p.job_id = json_extract(k.value, '$[0]')"
            " AND p.attempt = json_extract(k.value, '$[1]')",
            (json.dumps([[int(j), int(a)] for j, a in keys]),))
        return {(r[0], r[1]): Progress(*r[2:]) for r in rows}

    def run_times(self, keys: Collection[tuple[int, int]]
                  ) -> dict[tuple[int, int], tuple[float | None, float | None]]:
        """(started_at, ended_at) of each (job id, attempt) asked for."""
        if not keys:
            return {}
        rows = self._rows(
            "SELECT a.job_id, a.number, a.started_at, a.ended_at FROM attempts a"
            " JOIN json_each(?) k ON a.job_id = json_extract(k.value, '$[0]')"
            " AND a.number = json_extract(k.value, '$[1]')",
            (json.dumps([[int(j), int(a)] for j, a in keys]),))
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    def metrics(
        self,
        job_id: int,
        *,
        attempt: int | None = None,
        names: Collection[str] | None = None,
        since_step: int | None = None,
        limit: int | None = None,
    ) -> list[MetricPoint]:
        """Points of the job ordered by (step, insertion): only `attempt`'s if
        given, only `names` if given, only steps > `since_step` if given; the
        first `limit` of them."""
        clauses = ["job_id = ?"]
        params: list[Any] = [job_id]
        if attempt is not None:
            clauses.append("attempt = ?")
            params.append(attempt)
        if names is not None:
            if not names:
                return []
            clauses.append("name IN (SELECT value FROM json_each(?))")
            params.append(_json_list(str(n) for n in names))
        if since_step is not None:
            clauses.append("step > ?")
            params.append(since_step)
        params.append(_limit(limit))
        sql = _SELECT_METRICS + " WHERE " + " AND ".join(clauses) + " ORDER BY step, id LIMIT ?"
        return [
            MetricPoint(r[0], r[1], r[2], r[3], _float_or_nan(r[4]), r[5])
            for r in self._rows(sql, params)
        ]

    def record_telemetry(self, rows: Iterable[TelemetryRow]) -> None:
        """Append samples in one transaction, each also added to its node's
        minute (the sums and counts the one-minute averages are read from)."""
        values = []
        minutes: dict[tuple[str, float], list[float]] = {}
        gpu_minutes: dict[tuple[str, float, int], list[float | None]] = {}
        for r in rows:
            values.append((r.node, r.time, r.cpu_percent, r.memory_percent, r.load1,
                           json.dumps(list(r.gpus))))
            minute = _minute_of(r.time)
            host = minutes.get((r.node, minute))
            if host is None:
                host = minutes[(r.node, minute)] = [0, 0.0, 0, 0.0, 0, 0.0, 0]
            host[0] += 1
            _add(host, 1, r.cpu_percent)
            _add(host, 3, r.memory_percent)
            _add(host, 5, r.load1)
            for gpu in r.gpus:
                index = gpu.get("index")
                if type(index) is not int:
                    continue  # a GPU the averages cannot name (bool is not int here)
                acc = gpu_minutes.get((r.node, minute, index))
                if acc is None:
                    acc = gpu_minutes[(r.node, minute, index)] = [
                        0.0, 0, 0.0, 0, 0.0, 0, 0.0, 0, None, None]
                _add(acc, 0, gpu.get("util_percent"))
                _add(acc, 2, gpu.get("memory_used_mb"))
                _add(acc, 4, gpu.get("temperature_c"))
                _add(acc, 6, gpu.get("power_w"))
                acc[8] = _larger(acc[8], gpu.get("memory_total_mb"))
                acc[9] = _larger(acc[9], gpu.get("power_limit_w"))
        if not values:
            return
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO telemetry (node, time, cpu_percent, memory_percent, load1, gpus_json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                values,
            )
            conn.executemany(_ADD_MINUTE, [(*key, *acc) for key, acc in minutes.items()])
            conn.executemany(_ADD_MINUTE_GPU, [(*key, *acc) for key, acc in gpu_minutes.items()])

    def prune_telemetry(self, before: float, *, now: float | None = None) -> int:
        """Keep telemetry from `before` on: every sample of the last
        TELEMETRY_FULL_RATE_S before `now` (default: the newest sample held),
        and one-minute averages (made as samples are recorded) of all of it;
        returns how many full-rate samples went. One transaction. A minute is
        dropped by its start. Later reads know which full-rate samples went
        (telemetry_history)."""
        before = _finite("before", before)
        with self._write() as conn:
            if now is None:
                newest = conn.execute("SELECT max(time) FROM telemetry").fetchone()[0]
                now = before if newest is None else float(newest)
            full_rate_from = max(before, _finite("now", now) - TELEMETRY_FULL_RATE_S)
            cur = conn.execute("DELETE FROM telemetry WHERE time < ?", (full_rate_from,))
            conn.execute("DELETE FROM telemetry_minute WHERE time < ?", (before,))
            conn.execute("DELETE FROM telemetry_minute_gpu WHERE time < ?", (before,))
            conn.execute(_SET_HORIZON, {"from": full_rate_from})
            return int(cur.rowcount)

    def telemetry_history(self, node: str, start: float, end: float) -> TelemetryHistory:
        """The node's telemetry over [start, end), at the finest resolution
        held for all of it: every sample (`resolution_s` None) when the range
        is at most TELEMETRY_FULL_RATE_S long and no sample of it was pruned;
        else one row per minute (`resolution_s` 60, the range widened to
        whole minutes, each row's time the start of its minute): the average
        of the host's cpu, memory and load1 and of each GPU's util, memory
        used, temperature and power draw, with its largest memory total and
        power limit (no processes). Rows by time, GPUs by index; an empty
        list for a range without telemetry."""
        start, end = _finite("start", start), _finite("end", end)
        if end < start:
            raise ValueError(f"the range ends ({end}) before it starts ({start})")
        horizon = self._rows("SELECT full_rate_from FROM telemetry_horizon")
        full_rate_from = float(horizon[0][0]) if horizon else -math.inf
        params: dict[str, Any] = {"node": node, "start": start, "end": end}
        if end - start <= TELEMETRY_FULL_RATE_S and start >= full_rate_from:
            return TelemetryHistory(node, None, [
                TelemetryRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))
                for r in self._rows(_TELEMETRY_FULL_RATE, params)])
        params["start"] = _minute_of(start)
        gpus: dict[float, list[dict[str, Any]]] = {}
        for t, index, util, used, total, temp, power, limit in self._rows(
                _SELECT_MINUTE_GPUS, params):
            gpus.setdefault(t, []).append({
                "index": index, "util_percent": _rounded(util, 1),
                "memory_used_mb": None if used is None else int(round(used)),
                "memory_total_mb": None if total is None else int(total),
                "temperature_c": _rounded(temp, 1), "power_w": _rounded(power, 1),
                "power_limit_w": limit})
        return TelemetryHistory(node, float(TELEMETRY_AVERAGE_S), [
            TelemetryRow(node, float(t), _rounded(cpu, 2), _rounded(memory, 2),
                         _rounded(load1, 2), gpus.get(t, []))
            for t, cpu, memory, load1 in self._rows(_SELECT_MINUTES, params)])

    def telemetry(
        self, node: str, *, since: float | None = None, limit: int | None = None
    ) -> list[TelemetryRow]:
        """The node's samples ordered by time: only those with time > `since`
        if given; the first `limit` of them."""
        params: list[Any] = [node]
        sql = _SELECT_TELEMETRY + " WHERE node = ?"
        if since is not None:
            sql += " AND time > ?"
            params.append(since)
        sql += " ORDER BY time, id LIMIT ?"
        params.append(_limit(limit))
        return [
            TelemetryRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))
            for r in self._rows(sql, params)
        ]

    # --- maintenance -------------------------------------------------------

    def checkpoint_wal(self, min_bytes: int = WAL_CHECKPOINT_BYTES) -> tuple[int, int, int]:
        """Copy the write-ahead log into the database and truncate it to
        nothing (`PRAGMA wal_checkpoint(TRUNCATE)`) without waiting: with no
        busy timeout, a reader still on an older snapshot (or another
        writer) makes it a PASSIVE checkpoint of what it can copy, and a
        later call truncates. Returns SQLite's (busy, log frames,
        frames checkpointed): busy 1 when it could not truncate; (0, 0, 0)
        after a truncation. Does nothing, returning (0, -1, -1), while the
        -wal file is under `min_bytes` (so that the engine may call it every
        flush: a stat); 0 checkpoints whatever the size."""
        if min_bytes > 0:
            try:
                if os.stat(f"{self.path}-wal").st_size < min_bytes:
                    return (0, -1, -1)
            except FileNotFoundError:
                return (0, -1, -1)
            except OSError as exc:
                raise StoreError(f"{self.path}-wal: {exc}") from exc
        conn = self._connection()
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: checkpoint: {exc}") from exc
        return (int(row[0]), int(row[1]), int(row[2]))

    def integrity_check(self) -> str:
        """SQLite's `PRAGMA integrity_check`: "ok", or its findings, one a line."""
        return "\n".join(str(r[0]) for r in self._rows("PRAGMA integrity_check"))

    def schema_versions(self) -> list[int]:
        """The migrations applied to this file."""
        try:
            return migrations.applied_versions(self._connection())
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from exc
