"""The screen's own behaviour over fixed engine data (no daemon): the job
detail follows new log lines and metric points, switches rank and searches;
the command palette runs actions; NO_COLOR turns colour off."""

from __future__ import annotations

import re
from typing import Any

import pytest
from textual.widgets import RichLog, Static

from console.app import LlmConsole
from console.bridge import FixedBridge, Snapshot
from console.chart import MetricChart, thin
from console.screens import JobScreen, SubmitScreen
from tests.console.test_snapshots import DETAILS, JOBS, NODES, NOW, settle


def make_app(logs: list[str]) -> tuple[LlmConsole, FixedBridge]:
    bridge = FixedBridge([Snapshot(NODES, JOBS)], logs, details=DETAILS)
    return LlmConsole(bridge=bridge, clock=lambda: NOW), bridge  # type: ignore[arg-type]


async def open_logs(pilot: Any, job_id: int, lines: int) -> JobScreen:
    """Load the fixed data, open `job_id`'s log and wait for `lines` lines."""
    pilot.app.drain()
    pilot.app.select(job_id)
    await pilot.press("l")
    await settle(pilot, lines=lines)
    screen = pilot.app.screen
    assert isinstance(screen, JobScreen) and screen.job_id == job_id
    return screen


def shown(screen: Any) -> list[str]:
    return [str(line.text) for line in screen.query_one("#log", RichLog).lines]


async def test_job_screen_follows_lines_and_points_and_filters_by_rank() -> None:
    app, bridge = make_app(["launcher up", "[0]<stdout>:a 1", "[1]<stdout>:b 1"])
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_logs(pilot, 3, lines=3)
        assert shown(screen) == ["launcher up", "[0]<stdout>:a 1", "[1]<stdout>:b 1"]
        assert "ranks 0, 1" in str(screen.query_one("#loginfo", Static).render())

        # new lines arrive on the followed log, points on the event stream
        bridge.live_logs.put("[0]<stdout>:a 2")
        bridge.live_logs.put("[2]<stdout>:c 1")
        bridge.items = [{"type": "metric", "job": 3, "attempt": 1, "step": 5,
                         "values": {"loss": 2.5, "lr": 1e-4, "tokens_per_s": 800.0}}]
        await settle(pilot, lines=5)
        assert shown(screen)[-2:] == ["[0]<stdout>:a 2", "[2]<stdout>:c 1"]
        assert app.state.series[3].points["tokens_per_s"][-1] == (5, 800.0)
        assert "ranks 0, 1, 2" in str(screen.query_one("#loginfo", Static).render())

        await pilot.press("right_square_bracket")  # all -> rank 0
        assert shown(screen) == ["launcher up", "[0]<stdout>:a 1", "[0]<stdout>:a 2"]
        # search keeps every line (less); & shows only the matches
        await pilot.press("slash", *"a 2", "enter", "ampersand")
        await pilot.pause(0.1)
        assert shown(screen) == ["[0]<stdout>:a 2"]
        await pilot.press("escape")  # clears the search first
        assert shown(screen) == ["launcher up", "[0]<stdout>:a 1", "[0]<stdout>:a 2"]
        assert not app.check_action("toggle_ended", ())  # a dashboard key, off here
        await pilot.press("escape")
        assert not isinstance(app.screen, JobScreen)
        assert app.check_action("toggle_ended", ())
        await app.workers.wait_for_complete()  # closing the screen ended its follower


async def test_command_palette_runs_actions_by_name() -> None:
    app, _ = make_app([])
    async with app.run_test(size=(120, 40)) as pilot:
        app.drain()
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Submit (s)", "Cancel (c)", "Priority (p)", "Details (d)"} <= set(titles)
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"details")  # a dashboard-only action is offered from there
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, JobScreen)
        await pilot.press("escape")
        await pilot.pause(0.1)
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"submit")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert isinstance(app.screen, SubmitScreen)


async def test_no_color_makes_the_screen_monochrome(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app, _ = make_app([])
    async with app.run_test(size=(100, 30)) as pilot:
        app.drain()
        await pilot.pause(0.1)
        svg = app.export_screenshot()
    assert app.no_color
    colours = set(re.findall(r"fill: #([0-9a-f]{6})", svg))
    assert len(colours) > 3, "expected styled text in the picture"

    def channels(c: str) -> list[int]:
        return [int(c[i:i + 2], 16) for i in (0, 2, 4)]

    # grey: equal channels (the picture's own default text colour is c5c8c6)
    tinted = sorted(c for c in colours if max(channels(c)) - min(channels(c)) > 8)
    assert not tinted, f"colours under NO_COLOR: {tinted[:5]}"


def test_thin_keeps_the_newest_point_and_at_most_n() -> None:
    pts = [(i, float(i)) for i in range(1000)]
    out = thin(pts, 50)
    assert len(out) == 50 and out[-1] == (999, 999.0) and out[0] == (0, 0.0)
    assert thin(pts[:10], 50) == pts[:10]
    assert MetricChart.DEFAULT_CSS  # the widget styles itself


async def test_a_flood_of_log_lines_is_skipped_through_with_a_note() -> None:
    from console.screens import DRAIN_LINES

    app, _ = make_app([])
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_logs(pilot, 3, lines=0)
        screen.inbox.extend(f"line {i}" for i in range(DRAIN_LINES + 500))
        screen.take_lines()
        lines = shown(screen)
        assert lines[0].startswith("... 500 lines skipped here (llmconsole logs 3")
        assert lines[1] == "line 500" and lines[-1] == f"line {DRAIN_LINES + 499}"
