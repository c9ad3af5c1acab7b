"""The real screen against a real engine daemon on a temporary home,
driven by Textual's Pilot."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from textual import events
from textual.widgets import DataTable, Input, Static

from chaos.engine_handle import EngineHandle, new_engine
from console.app import LlmConsole
from console.screens import ConfirmScreen, JobScreen, PriorityScreen, SubmitScreen
from console.table import VirtualTable
from engine.errors import EngineError


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[EngineHandle]:
    handle = new_engine()
    monkeypatch.setenv("LLMCONSOLE_HOME", str(handle.home))
    monkeypatch.delenv("LLMCONSOLE_SOCKET", raising=False)
    handle.cli("engine", "start")
    try:
        yield handle
    finally:
        handle.close()


async def until(pilot: Any, predicate: Any, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out waiting on the screen"
        await pilot.pause(0.1)


async def press_on(pilot: Any, job_id: int, key: str, opens: type) -> Any:
    """Select `job_id`, press `key`, and wait for the `opens` screen."""
    pilot.app.select(job_id)
    await pilot.press(key)
    await until(pilot, lambda: isinstance(pilot.app.screen, opens))
    return pilot.app.screen


def job_cells(app: LlmConsole, job_id: int) -> list[str]:
    table = app.query_one("#jobs", VirtualTable)
    if str(job_id) not in table.keys:
        return []
    return table.row_text(str(job_id))


async def test_jobs_appear_run_and_finish_live(engine: EngineHandle) -> None:
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.connected)
        job_id = engine.submit("hello")
        await until(pilot, lambda: "succeeded" in " ".join(job_cells(app, job_id)))
        cells = job_cells(app, job_id)
        assert cells[1] == "hello" and cells[2] == "command"
        status = str(app.query_one("#status", Static).render())
        assert "engine: connected" in status
        gpus = app.query_one("#gpus", VirtualTable)
        assert len(gpus.keys) >= 1  # the head node, as a CPU row
        assert gpus.row_text(gpus.keys[0])[1] == "cpu"

        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, JobScreen))
        screen = app.screen
        log = screen.query_one("RichLog")
        await until(pilot, lambda: any("hello from" in str(line.text)
                                       for line in log.lines))  # type: ignore[attr-defined]
        # its history, from the engine: queued -> starting -> running -> succeeded
        events = screen.query_one("#events", DataTable)
        await until(pilot, lambda: events.row_count == 4)
        assert [str(events.get_row_at(i)[2]) for i in range(4)][-1] == "running -> succeeded"
        attempts = screen.query_one("#attempts", DataTable)
        assert [str(c) for c in attempts.get_row_at(0)][:2] == ["1", "succeeded"]
        assert "socket.gethostname()" in str(screen.query_one("#spec", Static).render())
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, JobScreen))


async def test_a_followed_log_has_every_line_once_in_order(engine: EngineHandle) -> None:
    """Opened mid-run: the lines written before and after the screen opened
    meet without a gap or a repeat."""
    script = "import time\nfor i in range(40):\n    print('line', i, flush=True)\n" \
             "    time.sleep(0.05)\n"
    engine.write_profile("count", 'kind = "command"\n'
                         f'command = ["python3", "-c", {json.dumps(script)}]\n')
    job_id = engine.submit("count")
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, job_id)))
        await until(pilot, lambda: len(engine.cli("logs", str(job_id)).stdout.split("\n")) > 5)
        app.select(job_id)
        await pilot.press("l")
        # mounted (pushed is not enough: under load the query came before compose)
        await until(pilot, lambda: isinstance(app.screen, JobScreen)
                    and bool(app.screen.query("RichLog")))
        log = app.screen.query_one("RichLog")

        def text() -> list[str]:
            return [str(line.text) for line in log.lines]  # type: ignore[attr-defined]

        await until(pilot, lambda: "line 39" in text())
        assert text() == [f"line {i}" for i in range(40)]


async def test_a_job_event_while_the_log_screen_mounts_starts_no_second_follower(
        engine: EngineHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flake of the test above, made certain: the drain is a timer's
    callback and runs while the app awaits the job screen's mount; the job's
    event then (it ended) started a second follower of the same attempt
    ("--- attempt 1 ---" and every line twice). A mount that takes 3 s, as
    under load, and a job that ends meanwhile (it runs 2 s)."""
    script = "import time\nfor i in range(40):\n    print('line', i, flush=True)\n" \
             "    time.sleep(0.05)\n"
    engine.write_profile("count", 'kind = "command"\n'
                         f'command = ["python3", "-c", {json.dumps(script)}]\n')
    real_push = LlmConsole.push_screen

    def slow_push(app: LlmConsole, screen: Any, *args: Any, **kwargs: Any) -> Any:
        mounted = real_push(app, screen, *args, **kwargs)
        if not isinstance(screen, JobScreen):
            return mounted

        async def slowly() -> None:
            await mounted
            await asyncio.sleep(3.0)  # the drain's timer ticks meanwhile

        return slowly()

    monkeypatch.setattr(LlmConsole, "push_screen", slow_push)
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        job_id = engine.submit("count")
        await until(pilot, lambda: "running" in " ".join(job_cells(app, job_id)))
        app.select(job_id)
        await pilot.press("l")
        await until(pilot, lambda: "succeeded" in " ".join(job_cells(app, job_id)))
        await until(pilot, lambda: app._job_screen is not None)
        log = app.screen.query_one("RichLog")

        def text() -> list[str]:
            return [str(line.text) for line in log.lines]  # type: ignore[attr-defined]

        await until(pilot, lambda: "line 39" in text())
        await pilot.pause(0.5)  # a second follower's lines would have come by now
        assert text() == [f"line {i}" for i in range(40)]


def typed_at_once(app: LlmConsole, keys: str) -> None:
    """Every key into the driver's queue at once, as a terminal delivers a
    fast typist's (Pilot's press lets the app go idle after each key)."""
    driver = app._driver
    assert driver is not None
    for char in keys:
        event = events.Key({"-": "minus"}.get(char, char), char)
        event.set_sender(app)
        driver.send_message(event)


async def test_keys_typed_with_s_land_in_the_profile_field(engine: EngineHandle) -> None:
    """`s` and a profile name typed in one instant: the name is in the form
    (its keys had reached the jobs table, then the app's bindings: the r of
    "pretrain-tiny" retried the selected job, its a hid the ended ones)."""
    done = engine.submit("hello")
    engine.wait_state(done, ["succeeded"])
    app = LlmConsole()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "succeeded" in " ".join(job_cells(app, done)))
        app.select(done)
        typed_at_once(app, "spretrain-tiny")
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen)
                    and app.screen.query_one("#profile", Input).value == "pretrain-tiny")
        await pilot.pause(0.3)  # a key that went astray has acted by now
        assert app.screen.query_one("#profile", Input).value == "pretrain-tiny"
        assert app.show_ended and app.marks.ids == []
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, SubmitScreen))
    job = engine.job(done)
    assert (job["state"], job["attempt"]) == ("succeeded", 1)  # not retried
    assert len(engine.json("jobs", "--all")) == 1  # nothing submitted


def notes(app: LlmConsole) -> str:
    return " | ".join(n.message for n in app._notifications)


async def test_priority_of_a_queued_job_and_the_engines_refusal(engine: EngineHandle) -> None:
    slots = engine.json("nodes")[0]["slots"]
    engine.write_profile("whole", f'kind = "command"\ncommand = ["sleep", "60"]\n'
                         f"resources = {{ cpus = {slots} }}\n")
    running = engine.submit("whole")
    engine.wait_state(running, ["running"])
    waiting = engine.submit("whole")
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "queued" in " ".join(job_cells(app, waiting)))
        box = (await press_on(pilot, waiting, "p", PriorityScreen)).query_one(Input)
        box.value = "abc"
        await pilot.press("enter")
        assert isinstance(app.screen, PriorityScreen)  # refused here, nothing sent
        assert "whole number from -1000 to 1000" in str(
            app.screen.query_one("#priority-error", Static).render())
        box.value = "7"
        await pilot.press("enter")
        await until(pilot, lambda: engine.job(waiting)["priority"] == 7)
        await until(pilot, lambda: "priority 7" in notes(app))

        # a running job's priority no longer orders anything: the key is off
        app.select(running)
        await pilot.press("p")
        await pilot.pause(0.2)
        assert app.screen is app.screen_stack[0]
        assert app.check_action("change_priority", ()) is None  # shown disabled
        with pytest.raises(EngineError, match="priority only orders jobs"):
            app.bridge.set_priority(running, 3)  # the engine's own refusal, had it been asked
        assert engine.job(running)["priority"] == 0
        engine.cli("cancel", str(running), str(waiting))


async def test_cancel_asks_first_then_stops_the_job(engine: EngineHandle) -> None:
    job_id = engine.submit("sleep")
    engine.wait_state(job_id, ["running"])
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: "running" in " ".join(job_cells(app, job_id)))
        await press_on(pilot, job_id, "c", ConfirmScreen)
        await pilot.press("n")  # no: nothing happens
        await pilot.pause(0.3)
        assert engine.job(job_id)["state"] == "running"
        await press_on(pilot, job_id, "c", ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: "cancelled" in " ".join(job_cells(app, job_id)))
    assert engine.job(job_id)["state"] == "cancelled"


async def test_losing_the_engine_shows_a_banner_and_reconnects(engine: EngineHandle) -> None:
    app = LlmConsole()
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.connected)
        engine.cli("engine", "stop")
        banner = app.query_one("#banner", Static)
        await until(pilot, lambda: banner.has_class("shown"))
        assert "engine unreachable" in str(banner.render())
        engine.cli("engine", "start")
        await until(pilot, lambda: not banner.has_class("shown") and app.state.connected)


async def test_submit_form_queues_a_valid_job_and_refuses_bad_input(
        engine: EngineHandle) -> None:
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.connected)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen))
        form = app.screen
        error = form.query_one("#submit-error", Static)
        for overrides, fragment in [("bogus=1", "bogus: unknown field"),
                                    ("resources.gpus_per_node=-1",
                                     "resources.gpus_per_node: input should be greater")]:
            form.query_one("#profile", Input).value = "hello"
            form.query_one("#overrides", Input).value = overrides
            await pilot.press("enter")
            await until(pilot, lambda fragment=fragment: fragment in str(error.render()))
            assert isinstance(app.screen, SubmitScreen)  # still open, nothing queued
        assert engine.json("jobs", "--all") == []

        form.query_one("#overrides", Input).value = "priority=5"
        form.query_one("#profile", Input).focus()
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, SubmitScreen))
        await until(pilot, lambda: len(engine.json("jobs", "--all")) == 1)
        job = engine.json("jobs", "--all")[0]
        assert job["name"] == "hello" and job["priority"] == 5
        await until(pilot, lambda: "succeeded" in " ".join(job_cells(app, job["id"])))
