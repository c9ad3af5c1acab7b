"""The engine's durable store: jobs, attempts, history, allocations, metrics
and telemetry in one SQLite file (WAL). See `engine.store.db` for the
contracts and `engine.store.migrations` for the schema.

    with Store(default_path()) as store:
        job = store.submit(spec, os.getuid(), actor="alice", now=time.time())
        store.transition(job.id, 1, JobState.QUEUED, JobState.STARTING,
                         cause="placed", actor="scheduler", now=time.time(),
                         placements=[Placement("node1", (0, 1), 8)])
"""

from engine.store.db import Progress, Store, TelemetryHistory, default_path
from engine.store.errors import StaleState, StoreError, UnknownJob
from engine.store.records import MetricPoint, TelemetryRow

__all__ = [
    "MetricPoint",
    "Progress",
    "StaleState",
    "Store",
    "StoreError",
    "TelemetryHistory",
    "TelemetryRow",
    "UnknownJob",
    "default_path",
]
