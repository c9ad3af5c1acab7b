"""A metric chart: plotext drawn by textual-plotext, fed (step, value)
points thinned to what the widget's width can show, and redrawn only when
its data changes.

Series differ by glyph as well as colour, so they read under NO_COLOR
(Textual's monochrome filter keeps only each colour's brightness): the raw
loss is fine braille dots, the smoothed loss a line of box-drawing strokes
drawn over it, held-out loss a diamond at each point, each in a colour of
its own brightness well above the background. `loss_lines` builds the
three for every loss chart. The legend is written on the title line (glyph,
name), not inside the plot where it covered the start of the curve (plotext's
box only for a legend longer than LEGEND_MOST, e.g. many compared runs)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.app import RenderResult
from textual.timer import Timer
from textual_plotext import PlotextPlot

Points = Sequence[tuple[float, float]]  # (step or seconds, value)


@dataclass(frozen=True)
class Line:
    label: str
    points: Points
    scatter: bool = False  # points (held-out loss) rather than a line
    marker: str | None = None  # a glyph of its own (series differ without colour too)
    color: tuple[int, int, int] | None = None  # RGB; None: plotext's sequence


#: (plotext marker, the glyph the legend shows for it, colour) of each loss
#: series; the colours' brightness (Rec. 709 luma about 150, 190, 130 of 255)
#: stays far from the dark backgrounds' under NO_COLOR.
RAW = ("braille", "⠤", (90, 160, 230))
SMOOTHED = ("─", "─", (250, 190, 40))
HELD_OUT = ("◆", "◆", (240, 90, 200))
LEGEND_GLYPH = {"braille": "⠤", "hd": "▄", "fhd": "▄", "dot": "•", "sd": "█"}


LEGEND_MOST = 60  # longer (many runs): plotext's own legend box


def loss_lines(loss: Points, smooth: Points, held_out: Points) -> list[Line]:
    """The three loss series, each with its own glyph and colour."""
    return [Line("loss", loss, marker=RAW[0], color=RAW[2]),
            Line("smoothed", smooth, marker=SMOOTHED[0], color=SMOOTHED[2]),
            Line("held-out", held_out, scatter=True, marker=HELD_OUT[0], color=HELD_OUT[2])]


def legend(lines: Sequence[Line]) -> str:
    """'⠤ loss  ▄ smoothed  ◆ held-out': the series that have points."""
    def glyph(line: Line) -> str:
        marker = line.marker or ("dot" if line.scatter else "braille")
        return LEGEND_GLYPH.get(marker, marker[:1])
    return "  ".join(f"{glyph(ln)} {ln.label}" for ln in lines if ln.points)


def thin(points: Points, most: int) -> list[tuple[float, float]]:
    """At most `most` evenly spaced points, always keeping the newest."""
    pts = list(points)
    if most <= 0 or len(pts) <= most:
        return pts
    stride = len(pts) / most
    picked = [pts[int(i * stride)] for i in range(most - 1)]
    return [*picked, pts[-1]]


class MetricChart(PlotextPlot):
    """One chart; `show` replaces what it draws."""

    DEFAULT_CSS = "MetricChart { height: 1fr; min-height: 5; }"

    #: New data for a chart whose frame (title, width, scale, x label) is
    #: unchanged is drawn at most this often (seconds), the last of it when the
    #: time comes: a plotext build and its ANSI parse cost 20-30 ms a chart at
    #: 160 columns, and streaming metrics redrew the job detail's three charts
    #: at every drain (4 a second: 13 % of a core). A frame change, a first
    #: curve or `at_once` draws at once.
    REDRAW_EVERY = 1.0

    def __init__(self, title: str = "", *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.chart_title = title
        self._drawn: object = None
        self._empty: str | None = "no data yet"
        self._chart_drawn_at = 0.0
        self._chart_later: tuple[Sequence[Line], object, str, bool, str | None] | None = None
        self._chart_timer: Timer | None = None

    def _draw_later(self) -> None:
        self._chart_timer = None
        later, self._chart_later = self._chart_later, None
        if later is not None:
            lines, key, title, log_y, xlabel = later
            self.show(lines, key, title, log_y=log_y, xlabel=xlabel, at_once=True)

    def show(self, lines: Sequence[Line], key: object = None, title: str | None = None,
             *, log_y: bool = False, xlabel: str | None = None, at_once: bool = False
             ) -> None:
        """Draw `lines`; `key` (data version) skips the work when unchanged.
        `log_y`: a log scale (values <= 0 are left out); `xlabel` names x.
        New data in the same frame within REDRAW_EVERY of the last draw is
        drawn when that time is up (unless `at_once`)."""
        title = self.chart_title if title is None else title
        frame = (title, self.size.width, log_y, xlabel)
        if key is not None and (key, *frame) == self._drawn:
            return
        wait = self._chart_drawn_at + self.REDRAW_EVERY - time.monotonic()
        if (not at_once and wait > 0 and self._empty is None and isinstance(self._drawn, tuple)
                and self._drawn[1:] == frame):
            self._chart_later = (lines, key, title, log_y, xlabel)
            if self._chart_timer is None:
                self._chart_timer = self.set_timer(wait, self._draw_later)
            return
        self._chart_later = None
        self._chart_drawn_at = time.monotonic()
        self._drawn = (key, *frame)
        if log_y:  # drawn as log10 with the real values on the axis: plotext's own log
            # scale transforms its data in place at every build, so a second paint
            # without new data took the log of the log (and failed under 1)
            lines = [Line(ln.label, [(x, math.log10(y)) for x, y in ln.points if y > 0],
                          ln.scatter, ln.marker, ln.color) for ln in lines]
        if not any(line.points for line in lines):
            self._empty = f"{title}: no points yet"  # plotext would draw an empty frame
            self.refresh()
            return
        self._empty = None
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        drawn = [line for line in lines if line.points]
        # the legend on the title line: plotext's own box sits over the curve's start
        # (kept as plotext's box only where the title line is too short for it)
        key_text = legend(drawn) if len(drawn) > 1 else ""
        boxed = len(key_text) > LEGEND_MOST
        plt.title(f"{title}   {key_text}" if key_text and not boxed else title)
        if xlabel:
            plt.xlabel(xlabel)
        if log_y:
            ys = [p[1] for line in lines for p in line.points]
            low, high = min(ys), max(ys)
            ticks = [low + (high - low) * k / 4 for k in range(5)] if high > low else [low]
            plt.yticks(ticks, [f"{10 ** t:.3g}" for t in ticks])
        most = max(20, self.size.width * 2)
        for line in lines:
            pts = thin(line.points, most)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            label = line.label if boxed else None
            if line.scatter:
                plt.scatter(xs, ys, label=label, marker=line.marker or "dot", color=line.color)
            else:
                plt.plot(xs, ys, label=label, marker=line.marker or "braille", color=line.color)
        self.refresh()

    def render(self) -> RenderResult:
        if self._empty is not None:
            return Text(self._empty, style="dim")
        return super().render()
