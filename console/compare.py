"""Compare runs: the jobs marked on the dashboard (space), side by side.

`CompareScreen` overlays the marked jobs' loss curves in one chart (x by
step or by seconds from each run's first point: `x`; log scale: `l`;
smoothing stronger/weaker: `+`/`-`; a step range: `]` zooms in on the newest
half, `[` zooms out, `r` asks for a range such as 100-500, `0` shows all),
and under it the results table of the marked jobs built by
`engine.workloads.compare` from their output folders exactly as `llmconsole
compare ID ...` builds it (same rows, same cells). Jobs without an output
folder or results yet are named under the table rather than failing it.

It renders what it is given: the app hands it the jobs and a function that
fetches one job's metric points (the bridge's), called in a thread worker;
the results are read from the output folders, as the CLI does. The pure
parts (`curves`, `view`, `results`, `Marks`) are tested on their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Static

from console.chart import Line, MetricChart, thin
from console.screens import InputPrompt
from console.state import smoothed
from engine.errors import EngineError
from engine.workloads import compare
from engine.workloads.common import WorkloadError

#: Smoothing weights `+` and `-` step through (0: the raw curve).
SMOOTHING = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)
#: A glyph per run, so curves differ without colour (NO_COLOR) as well.
MARKERS = ("braille", "dot", "+", "x", "*", "o", "#", "@")

Point = tuple[int, float, float | None]  # step, value, time


# ------------------------------------------------------------------ marks
@dataclass
class Marks:
    """The jobs marked on the dashboard, in the order they were marked."""

    ids: list[int] = field(default_factory=list)

    def toggle(self, job_id: int) -> bool:
        """Mark or unmark; True when now marked."""
        if job_id in self.ids:
            self.ids.remove(job_id)
            return False
        self.ids.append(job_id)
        return True

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.ids

    def keep(self, known: Iterable[int]) -> None:
        """Forget marks of jobs no longer listed."""
        present = set(known)
        self.ids = [i for i in self.ids if i in present]


def mark_cell(job_id: int, marks: Marks) -> str:
    """The ID cell with its mark: a check mark before a marked job's id."""
    return f"✓{job_id}" if job_id in marks else str(job_id)


# ------------------------------------------------------------------ curves
def curves(points: Iterable[Mapping[str, Any]], name: str = "loss") -> list[Point]:
    """A job's (step, value, time) points of one metric as the API lists
    them, of its newest attempt, each step once (the newest value), in order."""
    by_attempt: dict[int, dict[int, tuple[float, float | None]]] = {}
    for p in points:
        if p.get("name") != name or not isinstance(p.get("value"), int | float):
            continue
        when = p.get("time")
        by_attempt.setdefault(int(p.get("attempt") or 1), {})[int(p["step"])] = (
            float(p["value"]), float(when) if isinstance(when, int | float) else None)
    if not by_attempt:
        return []
    newest = by_attempt[max(by_attempt)]
    return [(step, v, t) for step, (v, t) in sorted(newest.items())]


@dataclass(frozen=True)
class View:
    """How the overlay is drawn."""

    by_time: bool = False
    log_y: bool = False
    smoothing: float = 0.8
    steps: tuple[int, int] | None = None  # a step range, both ends kept

    def describe(self) -> str:
        x = "x: seconds from each run's start" if self.by_time else "x: step"
        rng = "all steps" if self.steps is None else f"steps {self.steps[0]}-{self.steps[1]}"
        return (f"{x}  y: {'log' if self.log_y else 'linear'}  smoothing "
                f"{self.smoothing:g}  {rng}")


def view_lines(runs: Sequence[tuple[str, Sequence[Point]]], view: View) -> list[Line]:
    """A chart line per run (label, points) as `view` says: the step range
    cut, smoothed, x by step or by seconds from the run's first point."""
    out = []
    for k, (label, pts) in enumerate(runs):
        if view.steps is not None:
            low, high = view.steps
            pts = [p for p in pts if low <= p[0] <= high]
        if view.by_time:
            timed = [(p[2], p[1]) for p in pts if p[2] is not None]
            start = timed[0][0] if timed else 0.0
            xs: list[float] = [t - start for t, _ in timed]
            values = [v for _, v in timed]
        else:
            xs, values = [float(p[0]) for p in pts], [p[1] for p in pts]
        ys = smoothed(values, view.smoothing) if view.smoothing and values else values
        out.append(Line(label, list(zip(xs, ys, strict=True)), marker=MARKERS[k % len(MARKERS)]))
    return out


def zoom(steps: tuple[int, int] | None, full: tuple[int, int] | None, step: int
         ) -> tuple[int, int] | None:
    """`]` (step 1): the newest half of the range shown; `[` (-1): twice
    the range, back to everything (None) when it covers the whole run."""
    if full is None:
        return None
    low, high = steps or full
    if step > 0:
        if high - low < 2:
            return low, high
        return low + (high - low) // 2, high
    wider = (max(full[0], high - 2 * (high - low)), high)
    return None if wider[0] <= full[0] and high >= full[1] else wider


def parse_range(text: str) -> tuple[int, int] | None:
    """'100-500' (or '100 500', '100:500') as a step range; None if not one."""
    match = re.fullmatch(r"\s*(\d+)\s*[-: ,]\s*(\d+)\s*", text)
    if not match:
        return None
    low, high = int(match.group(1)), int(match.group(2))
    return (low, high) if low <= high else None


# ------------------------------------------------------------------ results
def results(jobs: Sequence[Mapping[str, Any]]
            ) -> tuple[list[compare.Row], list[str]]:
    """The rows `llmconsole compare ID ...` prints for these jobs (through
    engine.workloads.compare, from their output folders), and a line for
    each job it leaves out and why (no output folder, no results yet)."""
    folders, notes = [], []
    for job in jobs:
        if not job.get("output"):
            notes.append(f"job {job['id']} ({job.get('name')}) is a {job.get('kind')} job with "
                         "no output folder: no results to compare")
            continue
        try:
            compare.load_results([str(job["output"])])
        except WorkloadError as err:
            notes.append(f"job {job['id']}: {err}")
            continue
        folders.append(str(job["output"]))
    return compare.load_results(folders), notes


# ------------------------------------------------------------------ screens
class RangeScreen(InputPrompt["tuple[int, int] | None"]):
    """A step range for the overlay, typed."""

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("Steps to show, e.g. 100-500 (enter: show, esc: cancel)")
            yield Input(placeholder="FIRST-LAST", id="range")
            yield Static("", id="range-error", classes="error")

    @on(Input.Submitted)
    def _entered(self, event: Input.Submitted) -> None:
        steps = parse_range(event.value)
        if steps is None:
            self.query_one("#range-error", Static).update(
                f"{event.value.strip()!r}: type two step numbers, the first not above the "
                "second, e.g. 100-500")
            return
        self.dismiss(steps)


MetricsFetch = Callable[[int], list[dict[str, Any]]]


class CompareScreen(Screen[None]):
    """The marked jobs' loss curves overlaid, and their results table."""

    DEFAULT_CSS = """
    CompareScreen #comparetitle { height: auto; background: $panel; }
    CompareScreen #overlay { height: 2fr; min-height: 8; }
    CompareScreen #compareresults { height: auto; max-height: 12; }
    CompareScreen #comparenotes { height: auto; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back", id="compare.back"),
        Binding("x", "toggle_x", "Step/time", id="compare.x"),
        Binding("l", "toggle_log", "Log scale", id="compare.log"),
        Binding("plus,equals_sign", "smoothing(1)", "Smooth+", id="compare.smooth-more"),
        Binding("minus", "smoothing(-1)", "Smooth-", id="compare.smooth-less"),
        Binding("right_square_bracket", "zoom(1)", "Zoom in", id="compare.zoom-in"),
        Binding("left_square_bracket", "zoom(-1)", "Zoom out", id="compare.zoom-out"),
        Binding("r", "ask_range", "Steps...", id="compare.range"),
        Binding("0", "all_steps", "All steps", show=False, id="compare.all"),
    ]

    def __init__(self, jobs: Sequence[Mapping[str, Any]], fetch: MetricsFetch) -> None:
        super().__init__()
        self.jobs = [dict(j) for j in jobs]
        self.fetch = fetch
        self.runs: dict[int, list[Point]] = {}
        self.errors: dict[int, str] = {}
        self.view = View()
        self._title_shown: str | None = None
        self._notes_shown: str | None = None
        self.version = 0
        self.rows: list[compare.Row] = []
        self.notes: list[str] = []
        self._lines: tuple[object, list[Line]] | None = None
        #: each run's line by (its points' identity, view, chart width): a new
        #: run's points or a view seen before recompute only what changed
        self._run_lines: dict[tuple[int, int, View, int], Line] = {}
        self._lines_view = View()
        self.run_versions: dict[int, int] = {}  # bumped when a run's points are replaced

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="comparetitle")
        yield MetricChart("loss", id="overlay")
        yield DataTable(id="compareresults", cursor_type="none", zebra_stripes=True)
        yield Static("", id="comparenotes")
        yield Footer()

    def on_mount(self) -> None:
        self.rows, self.notes = results(self.jobs)
        headers, cells = compare.comparison_rows(self.rows)
        table = self.query_one("#compareresults", DataTable)
        table.add_columns(*headers)
        table.add_rows([tuple(Text(c) for c in row) for row in cells])
        table.display = bool(self.rows)
        self._notes()
        self.load()

    def _title(self) -> str:
        ids = ", ".join(f"{j['id']} ({j.get('name')})" for j in self.jobs)
        return f"compare jobs {ids}\n{self.view.describe()}"

    def _notes(self) -> None:
        lines = list(self.notes) if self.rows else \
            ["no results table: none of these jobs has a results.json yet", *self.notes]
        lines += [f"job {i}: metrics not read ({e})" for i, e in self.errors.items()]
        lines += [f"job {j['id']}: no loss points yet" for j in self.jobs
                  if j["id"] in self.runs and not self.runs[j["id"]]]
        text = "\n".join(lines)
        if text != self._notes_shown:  # on change only, as the title
            self._notes_shown = text
            self.query_one("#comparenotes", Static).update(Text(text))

    @work(thread=True, exclusive=True, group="compare")
    def load(self) -> None:
        """Every job's metric points, through the app's bridge."""
        for job in self.jobs:
            try:
                points = self.fetch(int(job["id"]))
            except EngineError as err:
                self.app.call_from_thread(self._loaded, int(job["id"]), None, str(err))
                continue
            self.app.call_from_thread(self._loaded, int(job["id"]), curves(points), "")

    def _loaded(self, job_id: int, pts: list[Point] | None, error: str) -> None:
        if pts is None:
            self.errors[job_id] = error
        else:
            self.runs[job_id] = pts
            self.run_versions[job_id] = self.run_versions.get(job_id, 0) + 1
        self.version += 1
        self._notes()
        self.redraw()

    def full_range(self) -> tuple[int, int] | None:
        steps = [p[0] for pts in self.runs.values() for p in pts]
        return (min(steps), max(steps)) if steps else None

    def lines(self) -> list[Line]:
        """The chart's lines, computed once per data version and view (the
        log scale is the chart's: toggling it reuses them). Each run's line is
        cut, smoothed, then thinned to a point a column of the chart, and kept
        per run and view (this one and the last): 8 runs of 10,000 points took
        190 ms a redraw, smoothing every run and handing the chart 2 points a
        column of each."""
        view = View(**{**self.view.__dict__, "log_y": False})
        width = max(20, self.query_one("#overlay", MetricChart).size.width)  # a point a column
        key = (self.version, view, width)
        if self._lines is None or self._lines[0] != key:
            out, cache = [], {}
            for k, job in enumerate(self.jobs):
                pts = self.runs.get(int(job["id"]), [])
                run_key = (k, self.run_versions.get(int(job["id"]), 0), view, width)
                line = self._run_lines.get(run_key)
                if line is None:
                    drawn = view_lines([(f"{job['id']} {job.get('name')}", pts)], view)[0]
                    line = Line(drawn.label, thin(drawn.points, width),
                                marker=MARKERS[k % len(MARKERS)])
                cache[run_key] = line
                out.append(line)
            # this view's lines, and the last view's (x and smoothing toggle back)
            self._run_lines = {**{key_: ln for key_, ln in self._run_lines.items()
                                  if key_[2] == self._lines_view}, **cache} \
                if self._lines is not None else cache
            self._lines_view = view
            self._lines = (key, out)
        return self._lines[1]

    def redraw(self) -> None:
        title = self._title()
        if title != self._title_shown:  # an update lays the screen out again: on change only
            self._title_shown = title
            self.query_one("#comparetitle", Static).update(Text(title))
        self.query_one("#overlay", MetricChart).show(
            self.lines(), key=(self.version, self.view), title="loss",
            log_y=self.view.log_y, at_once=True,  # a key's answer, not a stream
            xlabel="seconds from each run's start" if self.view.by_time else "step")

    def _set(self, **changes: Any) -> None:
        self.view = View(**{**self.view.__dict__, **changes})
        self.redraw()

    def action_toggle_x(self) -> None:
        self._set(by_time=not self.view.by_time)

    def action_toggle_log(self) -> None:
        self._set(log_y=not self.view.log_y)

    def action_smoothing(self, step: int) -> None:
        here = min(range(len(SMOOTHING)), key=lambda k: abs(SMOOTHING[k] - self.view.smoothing))
        self._set(smoothing=SMOOTHING[max(0, min(len(SMOOTHING) - 1, here + step))])

    def action_zoom(self, step: int) -> None:
        self._set(steps=zoom(self.view.steps, self.full_range(), step))

    def action_all_steps(self) -> None:
        self._set(steps=None)

    def action_ask_range(self) -> None:
        def chosen(steps: tuple[int, int] | None) -> None:
            if steps is not None:
                self._set(steps=steps)

        self.app.push_screen(RangeScreen(), chosen)

    def action_close(self) -> None:
        self.dismiss(None)


def open_compare(app: Any, marks: Marks, selected: int | None) -> None:
    """The dashboard's compare key: the marked jobs (the selected one when
    none is marked) in a CompareScreen, their points through the app's bridge."""
    ids = list(marks.ids) or ([selected] if selected is not None else [])
    jobs = [app.state.jobs[i] for i in ids if i in app.state.jobs]
    if not jobs:
        app.notify("no job marked: space marks the selected job, then m compares",
                   severity="warning")
        return
    if len(jobs) == 1 and not marks.ids:
        app.notify("one job shown: space marks jobs to compare them", timeout=4)
    app.push_screen(CompareScreen(jobs, app.bridge.metrics))
