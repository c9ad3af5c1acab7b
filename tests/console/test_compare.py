"""Compare runs: marked jobs' loss curves overlaid (step or time, log
scale, smoothing, a step range) and their results table, the same as
`llmconsole compare`'s, against a real engine running command jobs that
write metrics.jsonl and a fabricated results.json."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import DataTable

from chaos.engine_handle import EngineHandle
from console import compare as cmp
from console.app import LlmConsole
from console.chart import MetricChart
from console.screens import JobScreen
from engine.workloads import compare
from tests.console.test_app import engine, until  # noqa: F401  (engine: the fixture)

#: A command job that writes loss points (falling from `start`).
SCRIPT = """\
import json, os, sys, time
start = float(sys.argv[1])
path = os.path.join(os.environ["LLMCONSOLE_RUN_DIR"], "metrics.jsonl")
with open(path, "a") as m:
    for step in range(1, 21):
        m.write(json.dumps({"step": step, "loss": start / step}) + "\\n")
        m.flush()
time.sleep(0.5)  # the agent reads the last points before the exit
"""


def fabricate(tmp_path: Path) -> list[str]:
    """Two finished runs' output folders: a training and a pruning."""
    folders = []
    for name, data in (("pretrain", {"kind": "train", "status": "ok", "parameters": 1000,
                                     "perplexity": 40.25, "eval_loss": 3.7}),
                       ("prune", {"kind": "compress", "method": "prune", "status": "ok",
                                  "after": {"parameters": 1000, "nonzero_parameters": 500,
                                            "size_bytes": 2_400_000, "latency_ms": 3.21,
                                            "perplexity": 42.5}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(data))
        folders.append(str(tmp_path / name))
    return folders


def test_curves_take_the_newest_attempt_each_step_once() -> None:
    points = [{"attempt": 1, "step": 1, "name": "loss", "value": 9.0, "time": 1.0},
              {"attempt": 2, "step": 2, "name": "loss", "value": 3.0, "time": 12.0},
              {"attempt": 2, "step": 1, "name": "loss", "value": 4.0, "time": 10.0},
              {"attempt": 2, "step": 2, "name": "loss", "value": 2.5, "time": 12.5},
              {"attempt": 2, "step": 2, "name": "lr", "value": 0.1}]
    assert cmp.curves(points) == [(1, 4.0, 10.0), (2, 2.5, 12.5)]
    assert cmp.curves([]) == []


def test_view_cuts_smooths_and_puts_time_on_x() -> None:
    runs = [("a", [(s, 10.0 / s, 100.0 + 2 * s) for s in range(1, 11)])]
    raw = cmp.view_lines(runs, cmp.View(smoothing=0.0))[0]
    assert raw.points[0] == (1.0, 10.0) and len(raw.points) == 10
    cut = cmp.view_lines(runs, cmp.View(smoothing=0.0, steps=(3, 5)))[0]
    assert [p[0] for p in cut.points] == [3.0, 4.0, 5.0]
    timed = cmp.view_lines(runs, cmp.View(by_time=True, smoothing=0.0))[0]
    assert timed.points[0] == (0.0, 10.0) and timed.points[-1] == (18.0, 1.0)
    smooth = cmp.view_lines(runs, cmp.View(smoothing=0.8))[0]
    assert smooth.points[0][1] == 10.0 and smooth.points[-1][1] > 1.0  # lags the raw curve
    two = cmp.view_lines([runs[0], ("b", runs[0][1])], cmp.View())
    assert two[0].marker != two[1].marker  # told apart without colour


def test_zoom_range_and_marks() -> None:
    assert cmp.zoom(None, (1, 100), 1) == (50, 100)
    assert cmp.zoom((50, 100), (1, 100), 1) == (75, 100)
    assert cmp.zoom((75, 100), (1, 100), -1) == (50, 100)
    assert cmp.zoom((50, 100), (1, 100), -1) is None  # all of it again
    assert cmp.zoom(None, None, 1) is None
    assert cmp.parse_range("100-500") == (100, 500) and cmp.parse_range(" 3 : 9") == (3, 9)
    assert cmp.parse_range("9-3") is None and cmp.parse_range("x") is None
    marks = cmp.Marks()
    assert marks.toggle(3) and marks.toggle(5) and not marks.toggle(3)
    assert marks.ids == [5] and cmp.mark_cell(5, marks) == "✓5" and cmp.mark_cell(3, marks) == "3"


def test_results_name_jobs_without_results(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"kind": "eval", "perplexity": 9.0}))
    rows, notes = cmp.results([{"id": 1, "output": str(folder)},
                               {"id": 2, "name": "hello", "kind": "command", "output": None},
                               {"id": 3, "output": str(tmp_path / "missing")}])
    assert [r.name for r in rows] == ["run"]
    assert "job 2 (hello) is a command job with no output folder" in notes[0]
    assert notes[1].startswith("job 3: compare ") and "no such file or folder" in notes[1]


def _submit(handle: EngineHandle, name: str, start: float) -> int:
    argv = ["python3", "-c", SCRIPT, str(start)]
    handle.write_profile(name, f'kind = "command"\ncommand = {json.dumps(argv)}\n')
    return handle.submit(name)


def test_the_table_is_llmconsole_compares_for_the_same_folders(engine: EngineHandle,  # noqa: F811
                                                               tmp_path: Path) -> None:
    folders = fabricate(tmp_path)
    cli = json.loads(engine.cli("compare", "--json", *folders).stdout)
    jobs = [{"id": i, "name": Path(f).name, "kind": "train", "output": f}
            for i, f in enumerate(folders, 1)]
    rows, notes = cmp.results(jobs)
    assert compare.to_json(rows) == cli and not notes
    assert compare.comparison_rows(rows)[0] == cli["columns"]


async def test_two_jobs_overlaid_and_the_table_of_llmconsole_compare(
        engine: EngineHandle, tmp_path: Path) -> None:  # noqa: F811
    """Two command jobs' loss curves, and an evaluate job comparing two
    fabricated runs (as a pipeline's last stage does): the table is
    `llmconsole compare --json` of that job, the command jobs are named as
    having no output folder, and the evaluate job's Results tab has the
    comparison."""
    folders = fabricate(tmp_path)
    a = _submit(engine, "run-a", 8.0)
    b = _submit(engine, "run-b", 4.0)
    evaluate = tmp_path / "evaluate"
    engine.write_profile("compare-only", 'kind = "eval"\n[args]\n'
                         f"compare = {json.dumps(folders)}\noutput = {json.dumps(str(evaluate))}\n")
    e = engine.submit("compare-only")
    for job in (a, b, e):
        engine.wait_state(job, ["succeeded"])
    cli = json.loads(engine.cli("compare", "--json", str(e)).stdout)
    by_cli = {j: [(p["step"], p["value"]) for p in engine.json("metrics", str(j))
                  if p["name"] == "loss"] for j in (a, b)}
    assert len(by_cli[a]) == 20 and len(by_cli[b]) == 20

    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: a in app.state.jobs and b in app.state.jobs)
        for job in (a, b, e):
            app.select(job)
            await pilot.press("space")
        assert app.marks.ids == [a, b, e]
        assert app.query_one("#jobs").row_text(str(a))[0] == f"✓{a}"  # type: ignore[attr-defined]
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, cmp.CompareScreen))
        screen = app.screen
        assert isinstance(screen, cmp.CompareScreen)
        await until(pilot, lambda: len(screen.runs) == 3)
        # the curves overlaid are the engine's points, one line per job
        assert {j: [(s, v) for s, v, _t in screen.runs[j]] for j in (a, b)} == by_cli
        assert screen.runs[e] == []  # compare-only: no points
        await pilot.press("minus", "minus", "minus")  # smoothing off: the raw points
        lines = screen.lines()
        assert [ln.label for ln in lines] == [f"{a} run-a", f"{b} run-b", f"{e} compare-only"]
        assert [(int(x), y) for x, y in lines[0].points] == by_cli[a]
        chart = screen.query_one("#overlay", MetricChart)
        assert chart._empty is None  # drawn
        # the table: the same rows and cells as `llmconsole compare --json`
        assert compare.to_json(screen.rows) == cli
        table = screen.query_one("#compareresults", DataTable)
        cells = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        headers, expected = compare.comparison_rows(compare.load_results([evaluate]))
        assert cells == expected and [str(c.label) for c in table.columns.values()] == headers
        assert headers == cli["columns"]
        notes = str(screen.query_one("#comparenotes").render())
        assert f"job {a} (run-a) is a command job with no output folder" in notes
        assert f"job {e}: no loss points yet" in notes

        # x by time, log scale, smoothing, zoom and a typed range
        await pilot.press("x", "l")
        assert screen.view.by_time and screen.view.log_y
        assert screen.lines()[0].points[0][0] == 0.0
        await pilot.press("x", "plus")
        assert not screen.view.by_time and screen.view.smoothing == cmp.SMOOTHING[1]
        await pilot.press("right_square_bracket")
        assert screen.view.steps == (10, 20)
        assert min(x for x, _ in screen.lines()[0].points) == 10.0
        await pilot.press("left_square_bracket")
        assert screen.view.steps is None
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, cmp.RangeScreen))
        await pilot.press(*"5-8", "enter")
        await until(pilot, lambda: isinstance(app.screen, cmp.CompareScreen))
        assert screen.view.steps == (5, 8)
        assert [x for x, _ in screen.lines()[1].points] == [5.0, 6.0, 7.0, 8.0]
        assert "steps 5-8" in screen._title()
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, cmp.CompareScreen))

        # the evaluate job's Results tab: the comparison of the runs before it
        app.select(e)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, JobScreen))
        job_screen = app.screen
        await pilot.press("5")
        table = job_screen.query_one("#comparisontable", DataTable)
        await until(pilot, lambda: table.row_count == 2)
        shown = [[str(c) for c in table.get_row_at(i)] for i in range(2)]
        assert shown == compare.comparison_rows(compare.load_results(folders))[1]
        board = str(job_screen.query_one("#tensorboard").render())
        assert f"tensorboard --logdir {evaluate / 'tensorboard'}" in board


async def test_compare_with_nothing_marked_says_how(engine: EngineHandle) -> None:  # noqa: F811
    app = LlmConsole()
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.state.connected)
        await pilot.press("m")
        await pilot.pause(0.1)
        assert not isinstance(app.screen, cmp.CompareScreen)
        assert any("space marks" in n.message for n in app._notifications)



async def test_a_log_scale_chart_paints_again_without_new_data() -> None:
    """A log scale is drawn from the data as given at every paint (plotext's
    own transformed its data in place: a second paint took the log of the
    log), labelled with the real values."""
    from textual.app import App, ComposeResult

    from console.chart import Line

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield MetricChart("loss", id="c")

    app = One()
    async with app.run_test(size=(80, 20)) as pilot:
        chart = app.query_one(MetricChart)
        chart.show([Line("a", [(s, 4.0 / s) for s in range(1, 200)])], key=1, log_y=True)
        await pilot.pause()
        first = chart.rendered_text()
        chart._text = None  # a repaint from the same data (resize, focus)
        again = chart.rendered_text()
        assert first == again
        axis = first
        assert "0.1┤" in axis and "1┤" in axis and "-1┤" not in axis  # real values, not logs
