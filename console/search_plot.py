"""A compress --search job's candidates as a scatter of perplexity against
latency, the frontier highlighted: `P` on the job's Results tab (shift+p:
`p` stays the priority key, which the job screen keeps).

Each candidate is a point at (latency ms, perplexity); the glyph says what
it is, so it reads without colour: ``•`` a candidate off the frontier,
``◆`` one on the size/latency/perplexity frontier, ``R`` the fp32
reference and ``@`` the one whose model was saved (drawn last, on top).
The frontier is over size too, so a frontier point may sit above and to the
right of another point (it is smaller). Under the chart each frontier row is
listed with its numbers. `plot_lines` and `frontier_notes` are pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static

from console.chart import Line, MetricChart
from engine.workloads import compare

OTHER = ("•", (120, 160, 200))
FRONTIER = ("◆", (250, 190, 40))
REFERENCE = ("R", (230, 230, 230))
PICKED = ("@", (240, 90, 200))


def _point(row: Mapping[str, Any]) -> tuple[float, float] | None:
    x, y = row.get("latency_ms"), row.get("perplexity")
    if isinstance(x, int | float) and isinstance(y, int | float) \
            and not isinstance(x, bool) and not isinstance(y, bool):
        return float(x), float(y)
    return None


def plot_lines(rows: Sequence[Mapping[str, Any]]) -> list[Line]:
    """The scatter's series, in drawing order (a later one wins a shared
    cell): off the frontier, on it, the reference, the picked row."""
    groups: dict[str, list[tuple[float, float]]] = {k: [] for k in ("other", "frontier",
                                                                    "reference", "picked")}
    for row in rows:
        point = _point(row)
        if point is None:
            continue
        groups["frontier" if row.get("pareto") else "other"].append(point)
        if row.get("reference"):
            groups["reference"].append(point)
        if row.get("picked"):
            groups["picked"].append(point)
    names = (("other", "candidate", OTHER), ("frontier", "frontier", FRONTIER),
             ("reference", "fp32", REFERENCE), ("picked", "picked", PICKED))
    return [Line(label, groups[key], scatter=True, marker=glyph, color=color)
            for key, label, (glyph, color) in names]


def frontier_notes(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A line per frontier row, fastest first: glyph, label, size, latency,
    perplexity and its change against the reference (under 80 columns)."""
    front = sorted((r for r in rows if r.get("pareto")),
                   key=lambda r: (_point(r) or (float("inf"), 0.0))[0])
    lines = []
    for r in front:
        change = r.get("perplexity_change")
        delta = f" ({change:+.1%})" if isinstance(change, int | float) else ""
        glyph = PICKED[0] if r.get("picked") else REFERENCE[0] if r.get("reference") \
            else FRONTIER[0]
        row = compare.row_from_results("", "results.json", {"after": r})
        cells = [compare.render_cell(f, getattr(row, f))
                 for f in ("size_bytes", "latency_ms", "perplexity")]
        lines.append(f"{glyph} {str(r.get('label')):<15} {cells[0]:>6} MB {cells[1]:>6} ms  "
                     f"perplexity {cells[2]}{delta}" + ("  saved" if r.get("picked") else ""))
    return lines


class SearchPlotScreen(Screen[None]):
    """The scatter of one search's candidates and its frontier's rows."""

    DEFAULT_CSS = """
    SearchPlotScreen #plottitle { height: auto; background: $panel; }
    SearchPlotScreen #plot { height: 1fr; min-height: 8; }
    SearchPlotScreen #plotnotes { height: auto; max-height: 9; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,P", "close", "Back")]

    def __init__(self, data: Mapping[str, Any], title: str) -> None:
        super().__init__()
        self.rows = [r for r in data.get("rows") or [] if isinstance(r, Mapping)]
        self.title_text = title
        pick = data.get("pick") or {}
        self.pick_rule = str(pick.get("rule") or "-")

    def compose(self) -> ComposeResult:
        yield Static(Text(f"{self.title_text}: perplexity against latency, "
                          f"{len(self.rows)} candidates (esc: back)"), id="plottitle")
        yield MetricChart("perplexity", id="plot")
        notes = frontier_notes(self.rows)
        yield Static(Text("\n".join([f"frontier (size, latency, perplexity), picked by "
                                     f"{self.pick_rule}:", *notes])), id="plotnotes")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#plot", MetricChart).show(plot_lines(self.rows), key=1,
                                                  xlabel="latency ms", at_once=True)

    def action_close(self) -> None:
        self.dismiss(None)
