"""A metric chart: console.plot's cells in a widget, fed (step, value)
points thinned to what the widget's width can show, and drawn again only
when its data or its size changes.

Series differ by glyph as well as colour, so they read under NO_COLOR
(Textual's monochrome filter keeps only each colour's brightness): the raw
loss is fine braille dots, the smoothed loss a line of box-drawing strokes
drawn over it, held-out loss a diamond at each point, each in a colour of
its own brightness well above the background. `loss_lines` builds the
three for every loss chart. The legend is on the title line (glyph, name),
not inside the plot where it would cover the start of the curve."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.timer import Timer
from textual.widget import Widget

from console.plot import Line, Points, draw, legend

#: What a chart is given: its lines, or a function that builds them.
Lines = Sequence[Line] | Callable[[], Sequence[Line]]

__all__ = ["Line", "MetricChart", "Points", "legend", "loss_lines", "thin"]

#: (marker, colour) of each loss series; the colours' brightness (Rec. 709
#: luma about 150, 190, 130 of 255) stays far from the dark backgrounds'
#: under NO_COLOR.
RAW = ("braille", (90, 160, 230))
SMOOTHED = ("─", (250, 190, 40))
HELD_OUT = ("◆", (240, 90, 200))


def loss_lines(loss: Points, smooth: Points, held_out: Points) -> list[Line]:
    """The three loss series, each with its own glyph and colour."""
    return [Line("loss", loss, marker=RAW[0], color=RAW[1]),
            Line("smoothed", smooth, marker=SMOOTHED[0], color=SMOOTHED[1]),
            Line("held-out", held_out, scatter=True, marker=HELD_OUT[0], color=HELD_OUT[1])]


def thin(points: Points, most: int) -> list[tuple[float, float]]:
    """At most `most` evenly spaced points, always keeping the newest."""
    pts = list(points)
    if most <= 0 or len(pts) <= most:
        return pts
    stride = len(pts) / most
    picked = [pts[int(i * stride)] for i in range(most - 1)]
    return [*picked, pts[-1]]


class MetricChart(Widget):
    """One chart; `show` replaces what it draws."""

    DEFAULT_CSS = "MetricChart { height: 1fr; min-height: 5; }"

    #: New data for a chart whose frame (title, width, scale, x label) is
    #: unchanged is drawn at most this often (seconds), the last of it when the
    #: time comes: streaming metrics arrive at every drain (4 a second), a
    #: reader does not follow a curve faster (TensorBoard reloads every 30 s),
    #: and each redraw of a job's three charts at 160 columns costs about 12
    #: ms with Textual's compositing. A frame change, a first curve or
    #: `at_once` (a key's answer) draws at once.
    REDRAW_EVERY = 2.0

    def __init__(self, title: str = "", *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.chart_title = title
        self._drawn: object = None
        self._empty: str | None = "no data yet"
        self._chart_drawn_at = 0.0
        self._chart_later: tuple[Lines, object, str, bool, str | None] | None = None
        self._chart_timer: Timer | None = None
        self._plot: tuple[list[Line], str, bool, str | None] = ([], title, False, None)
        self._text: tuple[tuple[int, int], list[Strip]] | None = None  # (size, rows)
        self._styles: dict[object, Style] = {}

    def _draw_later(self) -> None:
        self._chart_timer = None
        later, self._chart_later = self._chart_later, None
        if later is not None:
            lines, key, title, log_y, xlabel = later
            self.show(lines, key, title, log_y=log_y, xlabel=xlabel, at_once=True)

    def show(self, lines: Lines, key: object = None, title: str | None = None,
             *, log_y: bool = False, xlabel: str | None = None, at_once: bool = False
             ) -> None:
        """Draw `lines` (or what a function of none returns, called only when
        the chart draws: streamed data that a throttled chart would not draw
        is not built either); `key` (data version) skips the work when
        unchanged. `log_y`: a log scale (values <= 0 are left out); `xlabel`
        names x. New data in the same frame within REDRAW_EVERY of the last
        draw is drawn when that time is up (unless `at_once`)."""
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
        self._text = None
        if callable(lines):
            lines = lines()
        if not any(line.points for line in lines):
            self._empty = f"{title}: no points yet"
            self.refresh()
            return
        self._empty = None
        most = max(20, self.size.width * 2)  # two points a column: a braille cell's dots
        self._plot = ([Line(ln.label, thin(ln.points, most), ln.scatter, ln.marker, ln.color)
                       for ln in lines], title, log_y, xlabel)
        self.refresh()

    def _style(self, base: Style, color: object) -> Style:
        style = self._styles.get(color)
        if style is None:
            style = base + Style(color="rgb({},{},{})".format(*color)) \
                if isinstance(color, tuple) else base + Style(dim=True) if color == "dim" else base
            self._styles[color] = style
        return style

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._text = None  # the background (a class, the theme) changed: draw again
        self._styles.clear()

    def _lines(self) -> list[Strip]:
        """The chart's rows as strips, drawn again only for new data, a new
        size or new styles (strips, not Text: the conversion of a Text to
        Textual's content cost more than drawing it)."""
        width, height = self.size.width, self.size.height
        if self._text is None or self._text[0] != (width, height):
            base = self.rich_style
            if self._empty is not None:
                rows: list[list[tuple[str, object]]] = [[(self._empty, "dim")]]
            else:
                lines, title, log_y, xlabel = self._plot
                rows = draw(lines, max(10, width), max(1, height), title=title,  # type: ignore[assignment]
                            xlabel=xlabel, log_y=log_y)
            strips = [Strip([Segment(text, self._style(base, color)) for text, color in row])
                      .adjust_cell_length(width, base) for row in rows]
            strips += [Strip.blank(width, base)] * (height - len(strips))
            self._text = ((width, height), strips)
        return self._text[1]

    def render_line(self, y: int) -> Strip:
        strips = self._lines()
        return strips[y] if y < len(strips) else Strip.blank(self.size.width)

    def rendered_text(self) -> str:
        """What the chart shows, as plain text (for tests and the tmux walk)."""
        return "\n".join(strip.text.rstrip() for strip in self._lines())
