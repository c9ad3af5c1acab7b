"""The store's exceptions. Every failure the store reports is a `StoreError`
(or `lifecycle.InvalidTransition` for a move the state table forbids, and
`ValueError`/`TypeError` for arguments that make no sense); SQLite's own
errors (a lock held past the busy timeout, a full disk) come out wrapped in a
`StoreError` with the original as `__cause__`."""

from __future__ import annotations

from engine.lifecycle import JobState


class StoreError(Exception):
    """The store could not do what was asked; nothing was written."""


class UnknownJob(StoreError):
    """No such job (or no such attempt of an existing job)."""

    def __init__(self, job_id: int, attempt: int | None = None) -> None:
        self.job_id = job_id
        self.attempt = attempt
        if attempt is None:
            super().__init__(f"no job {job_id}")
        else:
            super().__init__(f"no attempt {attempt} of job {job_id}")


class StaleState(StoreError):
    """A compare-and-set lost: the attempt was not in `expected` any more.
    `current` is the state it was found in; re-read and decide again."""

    def __init__(
        self, job_id: int, attempt: int, expected: JobState, current: JobState
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.expected = expected
        self.current = current
        super().__init__(
            f"job {job_id} attempt {attempt}: expected {expected}, found {current}"
        )
