"""Every size: the dashboard's panel toggle (z) gives the chart the rows the
GPU panel had, and the dialogs show all they say at 80 and 160 columns
(the submit form's profile list wraps, the priority prompt is whole, a Tab
typed right after the profile name moves to the overrides). The real app
against a real engine, driven by Pilot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual import events
from textual.widget import Widget
from textual.widgets import Input

from chaos.engine_handle import EngineHandle
from console.app import LlmConsole
from console.screens import PriorityScreen, SubmitScreen
from tests.console.test_app import engine, job_cells, press_on, until

__all__ = ["engine"]  # the fixture, shared with test_app

SHIPPED = Path(__file__).resolve().parents[2] / "profiles"
#: Long profile names: with the shipped ones, far over one line of the form.
LONG = ["finetune-llama-7b-long-context", "distill-teacher-13b-student-1b",
        "quantize-awq-int4-group-128", "pretrain-small-shakespeare-char"]


def screen_lines(widget: Widget) -> list[str]:
    """The text the widget shows, line by line, as drawn at its size."""
    region = widget.content_region
    strips = widget.render_lines(region.reset_offset)
    return [strip.text.rstrip() for strip in strips]


def burst(app: LlmConsole, keys: list[str]) -> None:
    """Every key into the driver's queue at once, none waited for (Pilot's
    press lets the app go idle after each key; a fast typist does not)."""
    driver = app._driver
    assert driver is not None
    for key in keys:
        char = key if len(key) == 1 else "\t" if key == "tab" else None
        name = {"=": "equals_sign"}.get(key, key)
        event = events.Key(name, char)
        event.set_sender(app)
        driver.send_message(event)


def visible(widget: Widget) -> bool:
    return widget.display and widget.size.height > 0


async def test_z_cycles_the_panels_and_the_chart_gets_the_rows(engine: EngineHandle) -> None:
    app = LlmConsole()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.state.connected)
        gpus, jobs = app.query_one("#gpus"), app.query_one("#jobs")
        chart = app.query_one("#losspanel")
        rows_before = chart.size.height
        assert visible(gpus) and visible(chart)

        await pilot.press("z")  # jobs and chart
        await pilot.pause()
        assert not visible(gpus) and not visible(app.query_one("#nodeline"))
        assert visible(jobs) and chart.size.height > rows_before + 2
        assert "panels: jobs and chart" in " ".join(str(n.message) for n in app._notifications)

        await pilot.press("z")  # jobs only
        await pilot.pause()
        assert not visible(gpus) and not visible(chart)
        assert jobs.size.height >= 24 - 4  # header, status line, footer, no more

        await pilot.press("z")  # all again
        await pilot.pause()
        assert visible(gpus) and chart.size.height == rows_before

        # in the palette and the help, like every key with an id
        commands = [c.title for c in app.get_system_commands(app.screen)]
        assert any(t.startswith("Panels (z)") for t in commands)
        await pilot.press("question_mark")
        await pilot.pause()
        assert any("Panels" in line for w in app.screen.query(Widget)
                   for line in _texts(w))


def _texts(widget: Widget) -> list[str]:
    try:
        return screen_lines(widget)
    except Exception:  # a container without lines of its own
        return []


@pytest.mark.parametrize("width", [80, 160])
async def test_the_submit_form_lists_every_profile(engine: EngineHandle, width: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for path in SHIPPED.glob("*.toml"):
        shutil.copy(path, engine.profiles / path.name)
    for name in LONG:
        shutil.copy(SHIPPED / "sleep.toml", engine.profiles / f"{name}.toml")
    monkeypatch.setenv("LLMCONSOLE_PROFILES", str(engine.profiles))
    app = LlmConsole()
    async with app.run_test(size=(width, 40)) as pilot:
        await until(pilot, lambda: app.state.connected)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen))
        await pilot.pause()
        names = app.screen.query_one("#names")
        shown = " ".join(screen_lines(names))
        assert len(screen_lines(names)) > 1  # wrapped, not cut
        for name in [p.stem for p in SHIPPED.glob("*.toml")] + LONG:
            assert name in shown.replace(" ", "").split(":")[1].split(","), name


async def test_a_fast_tab_after_the_profile_name_moves_on(engine: EngineHandle,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    shutil.copy(SHIPPED / "sleep.toml", engine.profiles / "sleep.toml")
    monkeypatch.setenv("LLMCONSOLE_PROFILES", str(engine.profiles))
    app = LlmConsole()
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: app.state.connected)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen))
        burst(app, [*"sleep", "tab", *"priority=3"])  # as fast as a paste
        await until(pilot, lambda: isinstance(app.screen, SubmitScreen)
                    and app.screen.query_one("#overrides", Input).value == "priority=3",
                    timeout=10)
        assert isinstance(app.screen, SubmitScreen)
        assert app.screen.query_one("#profile", Input).value == "sleep"
        assert app.screen.query_one("#overrides", Input).value == "priority=3"


@pytest.mark.parametrize("width", [80, 160])
async def test_the_priority_prompt_is_whole(engine: EngineHandle, width: int) -> None:
    engine.write_profile("slow", 'kind = "command"\ncommand = ["sleep", "60"]\n')
    first = engine.submit("slow")
    name = "a-long-job-name-that-waits-for-its-turn"
    job_id = engine.submit("slow", "--name", name, "--after", str(first))  # held
    app = LlmConsole()
    async with app.run_test(size=(width, 30)) as pilot:
        await until(pilot, lambda: "held" in " ".join(job_cells(app, job_id)))
        screen = await press_on(pilot, job_id, "p", PriorityScreen)
        await pilot.pause()
        text = " ".join(" ".join(screen_lines(w)) for w in screen.query("Label"))
        words = " ".join(text.split())
        assert f"Priority of job {job_id} ({name}), now 0; higher starts first" in words
        assert words.endswith("-1000..1000")
