"""Rows of the store's two time series: training metrics (per job attempt and
step) and node telemetry. Plain frozen values; `TelemetryRow.gpus` is whatever
list of JSON objects the node agent reported, stored as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MetricPoint:
    """One value of one named metric at one step of one attempt. A NaN value
    (a diverged loss) is stored and read back as NaN."""

    job_id: int
    attempt: int
    step: int
    name: str
    value: float
    time: float


@dataclass(frozen=True)
class TelemetryRow:
    """One sample of one node. A None percentage was not measured."""

    node: str
    time: float
    cpu_percent: float | None
    memory_percent: float | None
    load1: float | None
    gpus: list[dict[str, Any]] = field(default_factory=list)
