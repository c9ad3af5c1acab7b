"""How the screen words the loss guard and the stall watch (the job view's
`stalled` and `guard`, engine.guard_book): the state cell's reason, the job
detail's title, and the guard's notes as rows of the history."""

from __future__ import annotations

from console import detail
from console.state import guard_words

GUARDED = {
    "id": 7, "state": "running", "attempt": 2,
    "stalled": {"since": 1000.0, "last_step": 800},
    "guard": {
        "stalled": {"since": 1000.0, "last_step": 800},
        "restart": "restart 1 of 2 by loss guard: lr x0.5",
        "notes": [{"attempt": 1, "time": 950.0,
                   "text": "loss guard: loss was nan at step 120: restart"},
                  {"attempt": 2, "time": 1720.0, "text": "stalled 12m at step 800"},
                  {"attempt": 2, "time": 1725.0,
                   "text": "stack dumps: rank 0 on n1 -> /r/stacks/x/rank-0-n1-pid9.txt"}],
    },
    "history": [{"attempt": 1, "time": 900.0, "from": "queued", "to": "starting",
                 "cause": "placed on n1", "actor": "scheduler"},
                {"attempt": 1, "time": 960.0, "from": "running", "to": "failed",
                 "cause": "loss guard: loss was nan at step 120", "actor": "agent@n1"},
                {"attempt": 2, "time": 961.0, "from": None, "to": "queued",
                 "cause": "restart 1 of 2 by loss guard: lr x0.5 (loss guard: loss was nan "
                          "at step 120)", "actor": "engine"}],
}


def test_stalled_words_then_the_restart_words() -> None:
    assert guard_words(GUARDED, now=1000.0 + 12 * 60 + 20) == "stalled 12m at step 800"
    cleared = {**GUARDED, "stalled": None}
    assert guard_words(cleared, now=2000.0) == "restart 1 of 2 by loss guard: lr x0.5"
    never = {"stalled": {"since": 0.0, "last_step": None}}
    assert guard_words(never, now=45.0) == "stalled 45s before its first step"
    assert guard_words({"state": "running", "guard": None, "stalled": None}, 0.0) is None
    assert guard_words({"state": "running"}, 0.0) is None  # an engine from before guards


def test_the_guard_notes_are_rows_of_the_history() -> None:
    # the engine writes each note as an event that changes no state (Store.note)
    job = {**GUARDED, "history": [*GUARDED["history"], {
        "attempt": 2, "time": 1720.0, "from": "running", "to": "running",
        "cause": "stalled 12m at step 800", "actor": "engine"}]}
    rows = detail.history_rows(job)
    assert [r[2] for r in rows] == ["queued -> starting", "running -> failed",
                                    "(new) -> queued", "running -> running"]
    assert rows[-1][3] == "stalled 12m at step 800" and rows[-1][1] == "2"
    assert rows[2][3].startswith("restart 1 of 2 by loss guard: lr x0.5")


async def test_the_dashboard_and_the_detail_show_the_stall_and_the_restart() -> None:
    from textual.widgets import Static

    from console.app import LlmConsole
    from console.bridge import FixedBridge, Snapshot
    from console.screens import JobScreen
    from tests.console.test_app import job_cells, until
    from tests.console.test_snapshots import NOW, _job

    stalled = {**_job(7, "pretrain", "train", "running"), "attempt": 2,
               "stalled": {"since": NOW - 12 * 60 - 5, "last_step": 800},
               "guard": {**GUARDED["guard"], "stalled": {"since": NOW - 725, "last_step": 800}}}
    restarted = {**_job(8, "finetune", "train", "running"), "attempt": 2, "stalled": None,
                 "guard": {"stalled": None, "restart": "restart 1 of 2 by loss guard: lr x0.5",
                           "restarts": [], "notes": []}}
    details = {7: {**stalled, "spec": {"argv": ["python"], "resources": {}}, "attempts": [],
                   "history": GUARDED["history"]}}
    bridge = FixedBridge([Snapshot([], [stalled, restarted])], details=details)
    app = LlmConsole(bridge=bridge, clock=lambda: NOW)  # type: ignore[arg-type]
    async with app.run_test(size=(120, 40)) as pilot:
        app.drain()
        await until(pilot, lambda: job_cells(app, 7) != [])
        assert "stalled" in job_cells(app, 7) and "running" not in job_cells(app, 7)
        assert "running" in job_cells(app, 8)
        app.select(7)
        label = app.query_one("#losslabel", Static)
        await until(pilot, lambda: "stalled 12m at step 800" in str(label.render()))
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, JobScreen))
        title = app.screen.query_one("#jobtitle", Static)
        await until(pilot, lambda: "stalled 12m at step 800" in str(title.render()))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, JobScreen))
        app.select(8)
        await until(pilot, lambda: "restart 1 of 2 by loss guard: lr x0.5"
                    in str(label.render()))
