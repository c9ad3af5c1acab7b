"""The screen tells the truth: the real screen against a real engine daemon,
driven by Pilot. A job already training when the screen opens shows its whole
loss curve (the same points as `llmconsole metrics`); the GPU panel's JOB
column follows jobs as they start and end; a screen opened after jobs ended
has every LOSS and sorts by it; a cancel's toasts say what happened; the
screen is back within a second of the engine's return; RUN time is run time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from textual.widgets import Static

from chaos.engine_handle import EngineHandle
from console import bridge
from console.app import LlmConsole
from console.screens import ConfirmScreen
from console.table import VirtualTable
from tests.console.test_app import engine, job_cells, notes, press_on, until

__all__ = ["engine"]  # the fixture, shared with test_app

#: A job that writes a metric point per step (loss falling from `start`),
#: `first` of them at once, then waits for `gate` to exist before the rest.
TRAINER = """
import json, os, sys, time
start, first, total, gate = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
path = os.path.join(os.environ["LLMCONSOLE_RUN_DIR"], "metrics.jsonl")
with open(path, "a") as m:
    for step in range(1, total + 1):
        if step == first + 1:
            while not os.path.exists(gate):
                time.sleep(0.02)
        m.write(json.dumps({"step": step, "loss": start / step, "total_steps": total,
                            "tokens_per_s": 1000.0 + step}) + "\\n")
        m.flush()
        if step > first:
            time.sleep(0.02)
"""


def trainer(engine: EngineHandle, name: str, start: float, first: int, total: int,
            gate: Path) -> None:
    argv = ["python3", "-c", TRAINER, str(start), str(first), str(total), str(gate)]
    engine.write_profile(name, f'kind = "command"\ncommand = {json.dumps(argv)}\n')


def losses(engine: EngineHandle, job_id: int) -> list[tuple[int, float]]:
    return [(p["step"], p["value"]) for p in engine.json("metrics", str(job_id))
            if p["name"] == "loss"]


def label(app: LlmConsole) -> str:
    return str(app.query_one("#losslabel", Static).render())


async def test_a_job_already_training_shows_its_whole_curve(engine: EngineHandle,
                                                            tmp_path: Path) -> None:
    gate = tmp_path / "go"
    trainer(engine, "train", 8.0, 15, 60, gate)
    job_id = engine.submit("train")
    await_points = time.monotonic() + 30
    while len(losses(engine, job_id)) < 15:
        assert time.monotonic() < await_points, "the job wrote no metrics"
        time.sleep(0.1)
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, job_id)))
        gate.touch()  # live points from now on, while the history is fetched
        await until(pilot, lambda: app.selected == job_id and job_id in app.state.series)
        engine.wait_state(job_id, ["succeeded"])
        await until(pilot, lambda: (app.state.series[job_id].step or 0) >= 60)
        series = app.state.series[job_id]
        assert list(series.loss) == losses(engine, job_id)  # from step 1, each step once
        assert [s for s, _ in series.loss] == list(range(1, 61))
        assert job_cells(app, job_id)[-3:-1] == ["60/60", f"{8.0 / 60:.4f}"]
        assert "step 60/60" in label(app) and "1.1k tok/s" in label(app)


async def test_the_job_column_follows_three_jobs_in_turn(engine: EngineHandle,
                                                         tmp_path: Path) -> None:
    slots = engine.json("nodes")[0]["slots"]
    script = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n" \
             "    time.sleep(0.02)\n"
    gates = [tmp_path / f"done{i}" for i in range(3)]
    for i, gate in enumerate(gates):
        argv = ["python3", "-c", script, str(gate)]
        engine.write_profile(f"whole{i}", f'kind = "command"\ncommand = {json.dumps(argv)}\n'
                             f"resources = {{ cpus = {slots} }}\n")
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.connected)
        gpus = app.query_one("#gpus", VirtualTable)

        def owner() -> str:
            return gpus.row_text(gpus.keys[0])[5] if gpus.keys else ""

        ids = [engine.submit(f"whole{i}") for i in range(3)]
        await until(pilot, lambda: "queued" in " ".join(job_cells(app, ids[2])))
        app.select(ids[2])  # a queued job's line says why it waits, as the CLI does
        waiting = engine.job(ids[2])["waiting"]
        assert waiting
        await until(pilot, lambda: waiting in " ".join(label(app).split()))
        for i, job_id in enumerate(ids):
            # within the periodic refetch's 5 s: the job's event brought it
            await until(pilot, lambda job_id=job_id: owner() == str(job_id), timeout=3.0)
            assert job_cells(app, job_id)[4] in ("starting", "running")
            gates[i].touch()
        await until(pilot, lambda: owner() == "-", timeout=3.0)


async def test_a_screen_opened_after_the_jobs_ended_has_every_loss(
        engine: EngineHandle, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    gate.touch()
    ids = []
    for name, start in (("high", 9.0), ("low", 3.0), ("mid", 6.0)):
        trainer(engine, name, start, 5, 5, gate)
        ids.append(engine.submit(name))
        engine.wait_state(ids[-1], ["succeeded"])
    quiet = engine.submit("hello")  # no metrics at all
    engine.wait_state(quiet, ["succeeded"])
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.connected and len(app.state.jobs) == 4)
        await pilot.pause(0.1)
        # every row from the snapshot, none of them selected or fetched
        assert [job_cells(app, i)[-3:-1] for i in ids] == \
            [["5/5", f"{s / 5:.4f}"] for s in (9.0, 3.0, 6.0)]
        assert all(i not in app._backfilled for i in ids[:2])
        assert job_cells(app, quiet)[-3:-1] == ["-", "-"]
        while app.sort_by != "loss":
            app.action_sort_jobs()
        table = app.query_one("#jobs", VirtualTable)
        assert table.keys == [str(ids[1]), str(ids[2]), str(ids[0]), str(quiet)]
        # a filter puts the cursor on another job: its chart loads
        app.action_filter()
        await pilot.press(*"mid")
        await until(pilot, lambda: app.selected == ids[2] and ids[2] in app.state.series)
        assert list(app.state.series[ids[2]].loss) == losses(engine, ids[2])
        await until(pilot, lambda: f"job {ids[2]} step 5/5" in label(app))


async def test_the_cancel_toast_says_requested_then_cancelled(engine: EngineHandle) -> None:
    job_id = engine.submit("sleep")
    engine.wait_state(job_id, ["running"])
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, job_id)))
        await press_on(pilot, job_id, "c", ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: f"job {job_id}: cancel requested" in notes(app))
        await until(pilot, lambda: f"job {job_id}: cancelled" in notes(app))
        assert f"job {job_id}: running" not in notes(app)
    assert engine.job(job_id)["state"] == "cancelled"


async def test_reconnects_within_a_second_of_the_engines_return(
        engine: EngineHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the quick retries too: the backoff's wait ends when the engine's
    socket appears again (the quick phase made short here, 0.5 s)."""
    monkeypatch.setattr(bridge, "QUICK_FOR_S", 0.5)
    app = LlmConsole()
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.connected)
        engine.cli("engine", "stop")
        await until(pilot, lambda: not app.state.connected)
        jobs = app.query_one("#jobs", VirtualTable)
        await until(pilot, lambda: jobs.has_class("stale"))
        status = str(app.query_one("#status", Static).render())
        assert "DISCONNECTED (stale since" in status
        assert "data stale since" in str(app.query_one("#banner", Static).render())
        banner = app.query_one("#banner", Static)
        await until(pilot, lambda: "retrying in 1.0s" in str(banner.render()))  # backing off
        engine.cli("engine", "start")
        back = time.monotonic()
        await until(pilot, lambda: app.state.connected, timeout=5.0)
        took = time.monotonic() - back
        assert took < 1.0, f"reconnected {took:.2f}s after the engine was back"
        assert not jobs.has_class("stale")


async def test_run_time_is_the_attempts_and_stops_when_it_ends(engine: EngineHandle) -> None:
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    slots = engine.json("nodes")[0]["slots"]
    engine.write_profile("whole", f'kind = "command"\ncommand = ["sleep", "60"]\n'
                         f"resources = {{ cpus = {slots} }}\n")
    done = engine.submit("hello")
    engine.wait_state(done, ["succeeded"])
    running = engine.submit("whole")
    engine.wait_state(running, ["running"])
    queued = engine.submit("whole")
    app = LlmConsole(clock=clock)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "queued" in " ".join(job_cells(app, queued)))
        view = engine.job(done)
        seconds = int(view["ended_at"] - view["started_at"])
        expect = f"{seconds // 60}:{seconds % 60:02d}"
        assert job_cells(app, done)[-1] == expect
        assert job_cells(app, queued)[-1] == "-"  # never ran: no time
        before = job_cells(app, running)[-1]
        offset[0] = 3600.0  # an hour later
        app.render_jobs()
        await pilot.pause(0.1)
        assert job_cells(app, done)[-1] == expect  # ended: does not grow
        assert job_cells(app, queued)[-1] == "-"
        assert job_cells(app, running)[-1] != before and "h" in job_cells(app, running)[-1]
        engine.cli("cancel", str(running), str(queued))


async def test_the_dashboard_under_a_job_screen_catches_up_when_it_closes() -> None:
    """A job's detail covers the dashboard: what changed meanwhile (steps,
    losses, a new job) is drawn when the dashboard shows again, not lost."""
    from console.bridge import FixedBridge, Snapshot

    now = time.time()
    job = {"id": 1, "name": "train", "kind": "train", "owner": "ann", "state": "running",
           "priority": 0, "attempt": 1, "submitted_at": now - 60, "started_at": now - 50,
           "resources": {"nodes": 1, "gpus_per_node": 0, "cpus_per_node": 1}}
    fixed = FixedBridge([Snapshot([{"name": "n1", "up": True, "gpus": []}], [job])],
                        details={1: job})
    app = LlmConsole(bridge=fixed)
    async with app.run_test(size=(120, 36)) as pilot:
        app.drain()
        await pilot.pause()
        await pilot.press("d")
        await until(pilot, lambda: app._job_screen is not None)
        for step in range(1, 41):
            fixed.items.append({"type": "metric", "job": 1, "attempt": 1, "step": step,
                                "values": {"loss": 5.0 - step / 10}, "time": now + step})
        fixed.items.append({"type": "job", "job": {**job, "id": 2, "name": "later",
                                                   "state": "queued", "started_at": None}})
        app.drain()
        await pilot.pause()
        assert app._behind  # kept for later: the dashboard is covered
        await pilot.press("escape")
        await until(pilot, lambda: app._job_screen is None)
        await until(pilot, lambda: not app._behind)
        table = app.query_one("#jobs", VirtualTable)
        rows = {key: " ".join(table.row_text(key)) for key in ("1", "2")}
        assert "40" in rows["1"] and "1.0000" in rows["1"], rows
        assert "later" in rows["2"] and "queued" in rows["2"], rows
