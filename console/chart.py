"""A metric chart: plotext drawn by textual-plotext, fed (step, value)
points thinned to what the widget's width can show, and redrawn only when
its data changes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.app import RenderResult
from textual_plotext import PlotextPlot

Points = Sequence[tuple[float, float]]  # (step or seconds, value)


@dataclass(frozen=True)
class Line:
    label: str
    points: Points
    scatter: bool = False  # points (held-out loss) rather than a line
    marker: str | None = None  # a glyph of its own (series differ without colour too)


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

    def __init__(self, title: str = "", *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.chart_title = title
        self._drawn: object = None
        self._empty: str | None = "no data yet"

    def show(self, lines: Sequence[Line], key: object = None, title: str | None = None,
             *, log_y: bool = False, xlabel: str | None = None) -> None:
        """Draw `lines`; `key` (data version) skips the work when unchanged.
        `log_y`: a log scale (values <= 0 are left out); `xlabel` names x."""
        title = self.chart_title if title is None else title
        if key is not None and (key, title, self.size.width, log_y, xlabel) == self._drawn:
            return
        self._drawn = (key, title, self.size.width, log_y, xlabel)
        if log_y:  # drawn as log10 with the real values on the axis: plotext's own log
            # scale transforms its data in place at every build, so a second paint
            # without new data took the log of the log (and failed under 1)
            lines = [Line(ln.label, [(x, math.log10(y)) for x, y in ln.points if y > 0],
                          ln.scatter, ln.marker) for ln in lines]
        if not any(line.points for line in lines):
            self._empty = f"{title}: no points yet"  # plotext would draw an empty frame
            self.refresh()
            return
        self._empty = None
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(title)
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
            if line.scatter:
                plt.scatter(xs, ys, label=line.label, marker=line.marker or "dot")
            else:
                plt.plot(xs, ys, label=line.label, marker=line.marker or "braille")
        self.refresh()

    def render(self) -> RenderResult:
        if self._empty is not None:
            return Text(self._empty, style="dim")
        return super().render()
