"""What the agents stream back, made durable: each attempt's output lines
(the engine's copy under <home>/logs/<attempt>/output.log), its metric
points (the store, in batches) and node telemetry (the store, in batches),
with the byte offsets that let a re-attach resume without gaps or repeats.

Contract:
- `Running` is an attempt holding resources, as the runtime knows it
  without a query. An attempt has a `Part` on every node where a process of
  it was started (the launching node, or every node for torchrun across
  nodes); offsets are kept per part, because each node's files have their
  own.
- A line or point whose offset is at or before the last one received from
  that part is a replay and is dropped. Offsets are saved with the metric
  points they cover (`flush`), so after an engine crash metric points are
  neither lost nor doubled; output lines are written at once, so the lines
  the copy holds past the last saved offset are skipped on replay.
- Output bytes are kept exactly: the agent sends undecodable bytes as lone
  surrogates (surrogateescape) and the copy writes them back as bytes.
  Subscribers (the screen) get them as U+FFFD.
- The copy is capped per attempt (`log_cap` bytes; $LLMCONSOLE_LOG_CAP_MB,
  default 256 MiB): once it passes the cap it is rewritten (tmp + rename)
  as its first half (the start of a run matters), one marker line
  "[llmconsole: N bytes of output dropped here; the full log is on node X
  at PATH]" and its newest quarter, so it never holds more than the cap plus
  one line and always reads as one coherent log. A reader following the
  copy by byte position finds another file at the path then: where it goes
  on is `follow`.
- A full disk (or any write error) under the engine home never reaches the
  caller: the copy of that attempt stops (nothing half-written is left in
  it), engine.log gets one line and the job one event "log copy stopped: no
  space left on device"; lines keep reaching subscribers and the job's state
  is kept as before. Offsets and store writes that fail are retried on the
  next flush (metric points are kept, at most `MAX_PENDING_POINTS`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from engine import diskspace, paths, secrets
from engine.agent.protocol import Log, Metric, Telemetry
from engine.hub import EventHub
from engine.model import JobSpec, Placement, attempt_key
from engine.store import MetricPoint, Store, StoreError, TelemetryRow

log = logging.getLogger("llmconsole.ingest")

LOG_CAP_ENV = "LLMCONSOLE_LOG_CAP_MB"
DEFAULT_LOG_CAP_MB = 256.0
MIN_LOG_CAP = 4096  # bytes: room for a head, the marker and a tail
MAX_PENDING_POINTS = 200_000  # metric points held while the store cannot take them
COPY_CHUNK = 1 << 20
MAX_MOVES = 64  # rewrites of one copy remembered for readers following it
# A run whose metric offsets have not moved (output only) has its offsets
# saved at most this often: a stale output offset only makes a re-attach
# replay lines that `skip_lines` then drops, whereas a stale metric offset
# would store points twice, so those are saved with every flush of points.
# (Saving every dirty run every flush was 3/4 of a busy daemon's time with
# 100 chatty jobs.)
OUTPUT_OFFSETS_EVERY_S = 2.0
LAST_ERROR_MAX = 400  # characters of a job's own error line kept in its attempt's reason


def log_cap_from_env(environ: dict[str, str] | None = None) -> int:
    """The per-attempt cap of the engine's log copies, in bytes, from
    $LLMCONSOLE_LOG_CAP_MB (a number of MiB, fractions allowed; default 256).
    Raises `UserError` naming the fix for a value that is not a number."""
    mb = paths.number_from_env(
        LOG_CAP_ENV, DEFAULT_LOG_CAP_MB, lambda v: 0 < v < math.inf,
        "a positive number of MiB, such as 256 (the cap of the engine's copy of each "
        "attempt's output)", environ)
    return max(MIN_LOG_CAP, int(mb * (1 << 20)))


@dataclass
class Part:
    """An attempt's process on one node."""

    node: str
    log_offset: int = -1  # start of the last output line received
    metric_offset: int = -1  # start of the last metrics.jsonl line received
    ended: bool = False
    code: int | None = None
    signal: int | None = None
    lost: str | None = None  # why the node lost it, if it did


@dataclass
class Running:
    """An attempt holding resources."""

    job_id: int
    number: int
    spec: JobSpec
    placements: tuple[Placement, ...]
    owner_uid: int | None = None
    launch_nodes: tuple[str, ...] = ()  # where a process is started; default: the first
    parts: dict[str, Part] = field(default_factory=dict)
    log_lines: int = 0  # lines in the engine's copy of the output
    skip_lines: int = 0  # lines already in the copy that a re-attach will replay
    log_file: BinaryIO | None = None
    log_bytes: int = 0  # size of the engine's copy
    head_end: int | None = None  # the copy's kept first part ends here, once known
    marker_len: int = 0  # the "dropped" marker line after the head, once written
    dropped: int = 0  # bytes of output left out of the copy (the cap)
    copy_stopped: str | None = None  # why the copy stopped (a write failed), if it did
    start_error: str | None = None  # the agent could not start it: why
    cancelled_by: str | None = None
    failure: str | None = None  # the first part that failed, while the others stop
    masked: tuple[str, ...] = ()  # secret values of the spec's env, kept out of the copy
    saved_metrics: tuple[int, ...] | None = None  # metric offsets in the last saved offsets
    saved_at: float = 0.0  # when the offsets were last saved (the ingest's clock)

    def __post_init__(self) -> None:
        self.masked = secrets.masked_values(self.spec.env)
        if not self.launch_nodes:
            self.launch_nodes = (self.placements[0].node,)
        for name in self.launch_nodes:
            self.parts.setdefault(name, Part(name))

    @property
    def key(self) -> str:
        return attempt_key(self.job_id, self.number)

    @property
    def node(self) -> str:
        """The launching node (the first of the allocation)."""
        return self.launch_nodes[0]

    @property
    def nodes(self) -> tuple[str, ...]:
        """Every node the attempt holds, the launching node first."""
        return tuple(p.node for p in self.placements)

    def part(self, node: str) -> Part | None:
        return self.parts.get(node)


class Ingest:
    """Buffers and files for what the agents stream."""

    def __init__(self, store: Store, logs_dir: Path, hub: EventHub,
                 clock: Callable[[], float], *, log_cap: int | None = None,
                 node_root: Callable[[str], str] | None = None) -> None:
        """`log_cap`: bytes per attempt's copy (None: $LLMCONSOLE_LOG_CAP_MB);
        `node_root`: a node's run root by name, for the marker line."""
        self.store = store
        self.logs_dir = logs_dir
        self.hub = hub
        self.clock = clock
        self.log_cap = log_cap_from_env() if log_cap is None else max(MIN_LOG_CAP, log_cap)
        self.node_root = node_root
        self._metrics: list[MetricPoint] = []
        self._telemetry: list[TelemetryRow] = []
        self._dirty: set[str] = set()
        self._failing: set[str] = set()  # what already said it fails (said once)
        self._notes: list[tuple[int, int, str, float]] = []  # events the store has yet to take
        # attempt -> its copy's rewrites by the cap, the last MAX_MOVES as (head end, where
        # the kept tail began before, where it begins after), and how many there were:
        # for readers following the copy (`follow`)
        self._moves: dict[str, list[tuple[int, int, int]]] = {}
        self._rewrites: dict[str, int] = {}

    def log_path(self, job_id: int, number: int) -> Path:
        return self.logs_dir / attempt_key(job_id, number) / OUTPUT_NAME

    # ------------------------------------------------------------- events
    def log(self, run: Running, part: Part, event: Log) -> None:
        if event.offset <= part.log_offset:
            return  # already have it (re-attach replays from the last offset)
        part.log_offset = event.offset
        self._dirty.add(run.key)
        if run.skip_lines > 0:  # written before a crash, after the last saved offset
            run.skip_lines -= 1
            return
        self.append_log(run, secrets.mask(event.line, run.masked) if run.masked else event.line)

    def append_log(self, run: Running, line: str) -> None:
        """Add `line` to the attempt's copy (capped) and publish it. Never
        raises for a write that fails: the copy stops, once, with a reason."""
        if run.copy_stopped is None:
            try:
                self._write_line(run, line.encode("utf-8", "surrogateescape") + b"\n")
            except OSError as exc:
                self._stop_copy(run, exc)
        self.hub.publish({"type": "log", "job": run.job_id, "attempt": run.number,
                          "line": _displayable(line)})

    def _write_line(self, run: Running, data: bytes) -> None:
        if run.log_file is None:
            path = self.log_path(run.job_id, run.number)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            run.log_file = open(path, "a+b", buffering=0)  # noqa: SIM115
            run.log_bytes = os.fstat(run.log_file.fileno()).st_size
        if run.head_end is None and run.log_bytes + len(data) > self.log_cap // 2:
            run.head_end = run.log_bytes  # the first part ends before this line
        try:
            written = run.log_file.write(data)
            if written != len(data):
                raise OSError(28, os.strerror(28))  # a short write: the disk is full
        except OSError:
            with contextlib.suppress(OSError):  # no half line: cut back to the last one
                os.ftruncate(run.log_file.fileno(), run.log_bytes)
            raise
        run.log_bytes += len(data)
        run.log_lines += 1
        if run.log_bytes > self.log_cap:
            self._compact(run)

    def _compact(self, run: Running) -> None:
        """Rewrite the copy as head + marker + newest quarter (see the module
        docstring); the offsets are saved with it, so that a re-attach after
        a crash counts the lines of the new copy."""
        assert run.log_file is not None
        path = self.log_path(run.job_id, run.number)
        src = run.log_file
        head = run.head_end or 0
        body = head + run.marker_len  # where the lines after the marker start
        if head > self.log_cap // 2:  # a smaller cap since, or a head not saved before a crash
            src.seek(0)
            head = src.read(self.log_cap // 2).rfind(b"\n") + 1
            body = head
        keep_from = max(body, run.log_bytes - self.log_cap // 4)
        src.seek(keep_from)
        if keep_from > body:  # start the kept tail at a line
            chunk = src.read(COPY_CHUNK)
            newline = chunk.find(b"\n")
            keep_from = run.log_bytes if newline < 0 else keep_from + newline + 1
        dropped = run.dropped + keep_from - body
        marker = self._marker(run, dropped)
        tmp = path.with_name(f"{path.name}.tmp")
        lines = 0
        try:
            with open(tmp, "wb") as out:
                lines += _copy_range(src, out, 0, head)
                out.write(marker)
                lines += 1 + _copy_range(src, out, keep_from, run.log_bytes)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        moves = self._moves.setdefault(run.key, [])
        moves.append((head, keep_from, head + len(marker)))
        del moves[:-MAX_MOVES]
        self._rewrites[run.key] = self._rewrites.get(run.key, 0) + 1
        src.close()
        run.log_file = open(path, "a+b", buffering=0)  # noqa: SIM115
        run.log_bytes = os.fstat(run.log_file.fileno()).st_size
        run.log_lines = lines
        run.marker_len = len(marker)
        run.dropped = dropped
        run.head_end = head
        try:
            self.save_offsets(run)
        except OSError:
            self._dirty.add(run.key)  # the next flush saves them

    def follow(self, job_id: int, number: int, position: int,
               rewrites: int | None) -> tuple[int, int]:
        """For a reader following an attempt's copy: it has read up to byte
        `position` of the copy as it was after `rewrites` rewrites by the cap
        (None: its first read); -> (where to go on in the copy as it is now,
        how many rewrites that is). Called between reads with no await in
        between, so the answer is about the file the reader opens next. The
        head is the same bytes in every rewrite; a position in the kept tail
        moves with it; one in a dropped part goes on at the marker line."""
        key = attempt_key(job_id, number)
        now = self._rewrites.get(key, 0)
        if rewrites is None or rewrites == now:
            return position, now
        if rewrites > now:  # not this copy's count (cannot happen in one engine's life)
            return 0, now
        moves = self._moves.get(key, [])
        missed = moves[len(moves) - (now - rewrites):] if now - rewrites <= len(moves) else None
        if missed is None:  # more rewrites than are remembered: on at the marker
            return min(position, moves[-1][0]), now
        for head, kept_from, tail_now in missed:
            if position >= kept_from:
                position = tail_now + (position - kept_from)
            elif position > head:
                position = head
        return position, now

    def last_error(self, run: Running, within: int = 8192) -> str | None:
        """The job's own last "error: ..." line (how the workloads say why
        they failed, e.g. a full disk while saving a checkpoint) among the
        last `within` bytes of its copy, without the prefix; None if none."""
        path = self.log_path(run.job_id, run.number)
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - within))
                tail = f.read(within)
        except OSError:
            return None
        for raw in reversed(tail.splitlines()):
            if raw.startswith(b"error: "):
                said = raw[len(b"error: "):].decode("utf-8", "replace").strip()
                return said[:LAST_ERROR_MAX] or None
        return None

    def _marker(self, run: Running, dropped: int) -> bytes:
        where = f"runs/{run.key}/{OUTPUT_NAME} in its run root"
        if self.node_root is not None:
            with contextlib.suppress(Exception):  # a node since removed from the profile
                where = f"{self.node_root(run.node).rstrip('/')}/runs/{run.key}/{OUTPUT_NAME}"
        return (f"[llmconsole: {dropped} bytes of output dropped here; the full log is on "
                f"node {run.node} at {where}]\n").encode()

    def _stop_copy(self, run: Running, exc: OSError) -> None:
        """The copy cannot be written: close it, say so once (engine.log and
        an event on the job); the job itself is not touched."""
        why = "no space left on device" if diskspace.is_no_space(exc) else \
            (exc.strerror or str(exc)).lower()
        run.copy_stopped = why
        if run.log_file is not None:
            with contextlib.suppress(OSError):
                run.log_file.close()
            run.log_file = None
        path = self.log_path(run.job_id, run.number)
        log.error("job %d attempt %d: log copy %s stopped: %s (%s); the job goes on, its "
                  "full output stays on node %s", run.job_id, run.number, path, exc,
                  diskspace.where_free(path), run.node)
        self._notes.append((run.job_id, run.number, f"log copy stopped: {why}", self.clock()))
        self._write_notes()

    def _write_notes(self) -> None:
        """Events waiting for the store (on a full disk it takes none)."""
        while self._notes:
            job_id, number, cause, when = self._notes[0]
            try:
                self.store.note(job_id, number, cause=cause, actor="engine", now=when)
            except StoreError as err:
                if not _disk_trouble(err):
                    log.error("job %d: cannot record %r: %s", job_id, cause, err)
                    del self._notes[0]
                    continue
                return  # the flush tries again
            del self._notes[0]

    def metric(self, run: Running, part: Part, event: Metric) -> None:
        if event.offset <= part.metric_offset:
            return
        part.metric_offset = event.offset
        self._dirty.add(run.key)
        record = event.record
        step = _int(record.get("step"))
        if step is None:
            return
        t = record.get("time")
        when = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) \
            else self.clock()
        values: dict[str, float] = {}
        for name, value in record.items():
            if name in ("step", "time") or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                values[name] = float(value)
                self._metrics.append(
                    MetricPoint(run.job_id, run.number, step, name, float(value), when))
        if values:
            self.hub.publish({"type": "metric", "job": run.job_id, "attempt": run.number,
                              "step": step, "time": when, "values": values})

    def telemetry(self, node: str, event: Telemetry) -> dict[str, Any]:
        """Buffer a sample for the store and publish it; returns it as the
        dict the views show."""
        self._telemetry.append(TelemetryRow(
            node=node, time=event.time or self.clock(),
            cpu_percent=event.cpu_percent, memory_percent=event.memory_percent,
            load1=event.load[0] if event.load else None, gpus=[dict(g) for g in event.gpus],
        ))
        sample = event.to_wire()
        self.hub.publish({"type": "telemetry", **sample})
        return sample

    # -------------------------------------------------------- persistence
    def flush(self, running: dict[str, Running], *, force: bool = False) -> None:
        """Write buffered points and rows, then the offsets they cover. A
        write that fails for want of space (SQLite's "disk is full", ENOSPC)
        is logged once and retried on the next flush (telemetry samples are
        dropped); offsets are saved only after their points, so a crash
        meanwhile replays rather than loses. Any other store error drops the
        points and is raised, as before. A run's offsets when only its output
        moved are saved at most every `OUTPUT_OFFSETS_EVERY_S`, unless `force`
        (the engine stopping)."""
        try:
            if self._metrics:
                self.store.record_metrics(self._metrics)
                self._metrics = []
            if self._telemetry:
                rows, self._telemetry = self._telemetry, []
                self.store.record_telemetry(rows)  # samples: dropped, not retried
        except StoreError as err:
            self._telemetry = []
            if not _disk_trouble(err):
                self._metrics = []  # a bad point: retrying would fail forever
                raise
            self._failed("store", f"cannot write metric points to the store: {err}; "
                         f"{diskspace.where_free(self.logs_dir)}; retrying")
            del self._metrics[:-MAX_PENDING_POINTS]
            return
        self._recovered("store")
        self._write_notes()
        for key in list(self._dirty):
            run = running.get(key)
            if run is None:
                self._dirty.discard(key)
                continue
            metrics = tuple(p.metric_offset for p in run.parts.values())
            if not force and metrics == run.saved_metrics and self.clock() - run.saved_at < \
                    OUTPUT_OFFSETS_EVERY_S:
                continue  # output only, saved lately: stays dirty for a later flush
            try:
                self.save_offsets(run)
            except OSError as err:
                self._failed("offsets", f"cannot save log offsets under {self.logs_dir}: "
                             f"{err}; {diskspace.where_free(self.logs_dir)}; retrying")
                return
            self._dirty.discard(key)
        self._recovered("offsets")

    def _failed(self, what: str, message: str) -> None:
        if what not in self._failing:
            self._failing.add(what)
            log.error("%s", message)

    def _recovered(self, what: str) -> None:
        if what in self._failing:
            self._failing.discard(what)
            log.info("writing %s works again", what)

    def close(self, run: Running) -> None:
        if run.log_file is not None:
            with contextlib.suppress(OSError):
                run.log_file.close()
            run.log_file = None

    def _offsets_path(self, run: Running) -> Path:
        return self.logs_dir / run.key / "offsets.json"

    def save_offsets(self, run: Running) -> None:
        path = self._offsets_path(run)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        first = run.parts[run.node]
        doc = {"output": first.log_offset, "output_lines": run.log_lines,
               "metrics": first.metric_offset,
               "parts": {p.node: {"output": p.log_offset, "metrics": p.metric_offset}
                         for p in run.parts.values()},
               "head_end": run.head_end, "marker_len": run.marker_len,
               "dropped": run.dropped, "copy_stopped": run.copy_stopped}
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, path)
            run.saved_metrics = tuple(p.metric_offset for p in run.parts.values())
            run.saved_at = self.clock()
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()  # no partial file left on a full disk
            raise

    def load_offsets(self, run: Running) -> None:
        """After an engine restart: where to resume. Metric points and their
        offset are saved together; output lines are written at once, so the
        lines written after the last saved offset are skipped on replay."""
        try:
            data = json.loads(self._offsets_path(run).read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        try:
            with open(self.log_path(run.job_id, run.number), "rb") as f:
                in_copy = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except OSError:
            in_copy = 0
        parts = data.get("parts")
        if not isinstance(parts, dict):  # written before parts: the launching node's
            parts = {run.node: {"output": data.get("output", -1),
                                "metrics": data.get("metrics", -1)}}
        for name, saved in parts.items():
            part = run.parts.get(name)
            if part is not None and isinstance(saved, dict):
                part.log_offset = _offset(saved.get("output"))
                part.metric_offset = _offset(saved.get("metrics"))
        run.log_lines = in_copy
        run.skip_lines = max(0, in_copy - (_int(data.get("output_lines")) or 0))
        run.head_end = _int(data.get("head_end"))
        run.marker_len = _int(data.get("marker_len")) or 0
        run.dropped = _int(data.get("dropped")) or 0
        stopped = data.get("copy_stopped")
        run.copy_stopped = stopped if isinstance(stopped, str) else None


OUTPUT_NAME = "output.log"  # the node's file, as engine.agent.runs names it


def _disk_trouble(err: StoreError) -> bool:
    """SQLite's words for a full disk or a failing one."""
    text = f"{err} {err.__cause__}".lower()
    return "full" in text or "disk i/o" in text or "no space" in text


def _copy_range(src: BinaryIO, dst: BinaryIO, start: int, end: int) -> int:
    """Copy bytes [start, end) of `src` to `dst`; the number of lines copied."""
    src.seek(start)
    lines = 0
    left = end - start
    while left > 0:
        chunk = src.read(min(COPY_CHUNK, left))
        if not chunk:
            break
        dst.write(chunk)
        lines += chunk.count(b"\n")
        left -= len(chunk)
    return lines


def _offset(value: Any) -> int:
    number = _int(value)
    return -1 if number is None else number


def _displayable(line: str) -> str:
    """`line` with lone surrogates (undecodable bytes) as U+FFFD."""
    try:
        line.encode("utf-8")
        return line
    except UnicodeEncodeError:
        return line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None
