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
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from engine.agent.protocol import Log, Metric, Telemetry
from engine.hub import EventHub
from engine.model import JobSpec, Placement, attempt_key
from engine.store import MetricPoint, Store, TelemetryRow


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
    log_file: TextIO | None = None
    start_error: str | None = None  # the agent could not start it: why
    cancelled_by: str | None = None
    failure: str | None = None  # the first part that failed, while the others stop

    def __post_init__(self) -> None:
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
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.logs_dir = logs_dir
        self.hub = hub
        self.clock = clock
        self._metrics: list[MetricPoint] = []
        self._telemetry: list[TelemetryRow] = []
        self._dirty: set[str] = set()

    def log_path(self, job_id: int, number: int) -> Path:
        return self.logs_dir / attempt_key(job_id, number) / "output.log"

    # ------------------------------------------------------------- events
    def log(self, run: Running, part: Part, event: Log) -> None:
        if event.offset <= part.log_offset:
            return  # already have it (re-attach replays from the last offset)
        part.log_offset = event.offset
        self._dirty.add(run.key)
        if run.skip_lines > 0:  # written before a crash, after the last saved offset
            run.skip_lines -= 1
            return
        self.append_log(run, event.line)

    def append_log(self, run: Running, line: str) -> None:
        if run.log_file is None:
            path = self.log_path(run.job_id, run.number)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            run.log_file = open(path, "a", encoding="utf-8",  # noqa: SIM115
                                errors="surrogateescape")
        run.log_file.write(line + "\n")
        run.log_file.flush()
        run.log_lines += 1
        self.hub.publish({"type": "log", "job": run.job_id, "attempt": run.number,
                          "line": _displayable(line)})

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
    def flush(self, running: dict[str, Running]) -> None:
        if self._metrics:
            points, self._metrics = self._metrics, []
            self.store.record_metrics(points)
        if self._telemetry:
            rows, self._telemetry = self._telemetry, []
            self.store.record_telemetry(rows)
        for key in list(self._dirty):
            run = running.get(key)
            if run is not None:
                self.save_offsets(run)
        self._dirty.clear()

    def close(self, run: Running) -> None:
        if run.log_file is not None:
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
                         for p in run.parts.values()}}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)

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
