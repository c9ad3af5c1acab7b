"""The job state machine: states, the table of legal (from, to) transitions,
and `InvalidTransition`. Pure: no I/O, no clock. The store enforces the same
table with compare-and-set, so a terminal state is never left.

    held ──► queued ──► starting ──► running ──► succeeded
      │        │           │            ├──────► failed
      │        │           │            ├──────► cancelled
      │        │           │            └──────► lost
      ├► failed (a dependency failed)  starting ─► failed | cancelled | lost
      └► cancelled      queued ─► cancelled | failed (cannot be placed)

A retry never moves a terminal attempt: it creates the job's next attempt in
`queued`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Any


class JobState(str, Enum):
    HELD = "held"
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    def is_terminal(self) -> bool:
        return self in TERMINAL

    def is_active(self) -> bool:
        """Holds resources on a node (placed and not yet ended)."""
        return self in (JobState.STARTING, JobState.RUNNING)

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.HELD: frozenset({JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.STARTING, JobState.FAILED, JobState.CANCELLED}),
    JobState.STARTING: frozenset(
        {JobState.RUNNING, JobState.FAILED, JobState.CANCELLED, JobState.LOST}
    ),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.LOST: frozenset(),
}

INITIAL = frozenset({JobState.HELD, JobState.QUEUED})


class InvalidTransition(Exception):
    """A move the table forbids. Carries the job's history so the log line
    that reports it tells the whole story."""

    def __init__(
        self,
        job_id: int,
        from_state: JobState | None,
        to_state: JobState,
        history: Sequence[Any] = (),
    ) -> None:
        self.job_id = job_id
        self.from_state = from_state
        self.to_state = to_state
        self.history = tuple(history)
        steps = " -> ".join(str(getattr(e, "to_state", e)) for e in self.history) or "none"
        super().__init__(
            f"job {job_id}: illegal transition {from_state} -> {to_state} (history: {steps})"
        )


def is_legal(from_state: JobState, to_state: JobState) -> bool:
    return to_state in TRANSITIONS[from_state]


def check(
    job_id: int, from_state: JobState, to_state: JobState, history: Iterable[Any] = ()
) -> JobState:
    """Return `to_state` if the move is legal, else raise InvalidTransition."""
    if not is_legal(from_state, to_state):
        raise InvalidTransition(job_id, from_state, to_state, tuple(history))
    return to_state
