"""The job state machine: every legal transition is accepted, every illegal
one raises InvalidTransition carrying the history, terminal states have no
way out."""

from __future__ import annotations

import itertools

import pytest

from engine.lifecycle import (
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    JobState,
    check,
    is_legal,
)

LEGAL = {
    (JobState.HELD, JobState.QUEUED),
    (JobState.HELD, JobState.FAILED),
    (JobState.HELD, JobState.CANCELLED),
    (JobState.QUEUED, JobState.STARTING),
    (JobState.QUEUED, JobState.FAILED),
    (JobState.QUEUED, JobState.CANCELLED),
    (JobState.STARTING, JobState.RUNNING),
    (JobState.STARTING, JobState.FAILED),
    (JobState.STARTING, JobState.CANCELLED),
    (JobState.STARTING, JobState.LOST),
    (JobState.RUNNING, JobState.SUCCEEDED),
    (JobState.RUNNING, JobState.FAILED),
    (JobState.RUNNING, JobState.CANCELLED),
    (JobState.RUNNING, JobState.LOST),
}
ALL_PAIRS = list(itertools.product(JobState, JobState))


@pytest.mark.parametrize(("src", "dst"), sorted(LEGAL))
def test_every_legal_transition_is_accepted(src: JobState, dst: JobState) -> None:
    assert is_legal(src, dst)
    assert check(1, src, dst) is dst


@pytest.mark.parametrize(("src", "dst"), [p for p in ALL_PAIRS if p not in LEGAL])
def test_every_illegal_transition_raises_with_history(src: JobState, dst: JobState) -> None:
    history = ["queued", "starting", src.value]
    with pytest.raises(InvalidTransition) as err:
        check(7, src, dst, history)
    assert err.value.job_id == 7
    assert err.value.from_state is src and err.value.to_state is dst
    assert err.value.history == tuple(history)
    assert "queued -> starting" in str(err.value)


def test_table_is_exactly_the_documented_one() -> None:
    table = {(s, d) for s, targets in TRANSITIONS.items() for d in targets}
    assert table == LEGAL


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_are_never_left(state: JobState) -> None:
    assert state.is_terminal()
    assert TRANSITIONS[state] == frozenset()
    for dst in JobState:
        assert not is_legal(state, dst)


def test_only_placed_states_hold_resources() -> None:
    assert {s for s in JobState if s.is_active()} == {JobState.STARTING, JobState.RUNNING}
