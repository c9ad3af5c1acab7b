"""A compress --search job on the screen (the real app, a recorded
results.json, no torch): the Results tab shows its candidates as
`llmconsole compare` does, the frontier marked and the saved one named, and
`P` plots perplexity against latency at 80x24 with the frontier's glyph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from textual.widgets import DataTable, Static

from console.chart import MetricChart
from console.search_plot import SearchPlotScreen, frontier_notes, plot_lines
from engine.workloads import compare
from tests.console.test_detail import _screen_app, results_tab

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "search-results.json"


def test_the_scatter_puts_each_candidate_in_one_series_by_what_it_is() -> None:
    rows = json.loads(FIXTURE.read_text())["rows"]
    lines = {ln.label: ln for ln in plot_lines(rows)}
    front = [r for r in rows if r["pareto"]]
    assert len(lines["frontier"].points) == len(front)
    assert len(lines["candidate"].points) == len(rows) - len(front)
    assert lines["fp32"].points == [(rows[0]["latency_ms"], rows[0]["perplexity"])]
    assert len(lines["picked"].points) == 1 and all(ln.scatter for ln in lines.values())
    notes = frontier_notes(rows)
    assert len(notes) == len(front) and sum(n.endswith("saved") for n in notes) == 1
    assert all(len(n) <= 78 for n in notes), notes


async def test_the_results_tab_shows_the_candidates_and_p_plots_them(tmp_path: Path) -> None:
    from tests.console.test_snapshots import DETAILS, JOBS

    output = tmp_path / "search-tiny"
    output.mkdir()
    shutil.copy(FIXTURE, output / "results.json")
    data = json.loads(FIXTURE.read_text())
    job = {**DETAILS[2], "resources": JOBS[1]["resources"], "id": 9, "name": "search-tiny",
           "state": "succeeded", "output": str(output),
           "spec": {**DETAILS[2]["spec"], "argv": ["python", "-m", "engine.workloads.compress",
                                                   "--search"]}}
    app = _screen_app([], job)
    async with app.run_test(size=(80, 24)) as pilot:
        screen, got = await results_tab(app, pilot, 9, "#resultstable")
        table = screen.query_one("#resultstable", DataTable)
        headers, cells = compare.search_table(compare.load_results([output]))
        assert got == cells and len(got) == len(data["rows"])
        assert [str(c.label) for c in table.columns.values()] == headers
        assert [row[-1] for row in got].count("* picked") == 1
        info = str(screen.query_one("#resultsinfo", Static).render())
        assert f"saved: {data['pick']['label']}" in info and "P: plot" in info
        await pilot.press("P")
        await pilot.pause(0.2)
        plot = app.screen
        assert isinstance(plot, SearchPlotScreen)
        text = plot.query_one("#plot", MetricChart).rendered_text()
        rows = text.splitlines()
        assert len(rows) >= 8 and max(len(r) for r in rows) <= 80
        assert "◆ frontier" in rows[0] and "@ picked" in rows[0]  # the legend
        assert "◆" in "".join(rows[1:]) and "@" in "".join(rows[1:]) and "latency ms" in text
        notes = str(plot.query_one("#plotnotes", Static).render())
        assert notes.count("\n") == sum(r["pareto"] for r in data["rows"])
        assert data["pick"]["label"] in notes and "saved" in notes
        notes_region = plot.query_one("#plotnotes", Static).region
        assert notes_region.bottom <= 23  # above the footer, on an 80x24 screen
        await pilot.press("escape")
        await pilot.pause(0.1)
        assert app.screen is screen
