"""The deterministic part of the fault campaign (chaos/engine_crash.py): a
real daemon killed with SIGKILL three times, at seeded moments, while 20
jobs are held, queued, starting and running, and restarted each time.
Nothing is lost or launched twice, every log line and metric step arrives
once and in order, nothing is left running, and the restarted daemon
answers promptly."""

from __future__ import annotations

from chaos import engine_crash

SEED = 13
RESTART_LIMIT_S = 5.0  # generous: the machine is loaded (make chaos targets 2 s)


def test_kill_9_of_the_engine_loses_nothing_and_launches_nothing_twice() -> None:
    r = engine_crash.run(SEED, jobs=20, kills=3)
    assert r.kills == 3 and len(r.restart_s) == 3
    assert r.states_at_kills["queued"] + r.states_at_kills["held"] > 0, r.states_at_kills
    assert r.states_at_kills["running"] + r.states_at_kills["starting"] > 0, r.states_at_kills
    assert r.lost == [], r.problems
    assert r.duplicates == 0, r.problems
    assert (r.log_gaps, r.log_repeats) == (0, 0), r.problems
    assert (r.metric_gaps, r.metric_repeats) == (0, 0), r.problems
    assert r.leftovers == []
    assert max(r.restart_s) < RESTART_LIMIT_S, r.restart_s
    assert r.ok and not r.problems


def test_the_checks_see_gaps_repeats_and_double_starts() -> None:
    # the campaign's figures are only as good as these: a gap, a repeat and
    # a reordering each count, and a clean run counts nothing
    assert engine_crash.sequence_faults([1, 2, 3], 3) == (0, 0)
    assert engine_crash.sequence_faults([1, 3], 3) == (1, 0)
    assert engine_crash.sequence_faults([1, 2, 2, 3], 3) == (0, 1)
    assert engine_crash.sequence_faults([2, 1, 3], 3) == (0, 1)
    starts = ["start 4 1 100", "start 5 1 101", "start 4 1 102", "garbage"]
    assert engine_crash.count_starts(starts) == {(4, 1): 2, (5, 1): 1}
    assert engine_crash.numbered_lines(["line 4 1", "line 44 2", "x", "line 4 2"], 4) == [1, 2]
