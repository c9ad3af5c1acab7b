"""Line charts in terminal cells: a title line with the legend, a y axis
with ticks, braille dots (2x4 a cell) for curves, a glyph a cell for series
that must read without colour, and an x axis with ticks. Pure: lines in,
rows of (text, colour) runs out; no screen library.

Why not plotext: a plotext build and the parse of its ANSI output cost
40-60 ms a chart at 160 columns, so a job detail's three charts took a third
of a core while metrics streamed. Drawing the cells directly costs a few
milliseconds, and the output needs no parse.

A series is drawn by its marker:
- "braille": a line through every point, dot by dot (consecutive points are
  joined, so a step or a spike is a stroke, not a gap);
- a glyph ("─", "•" for "dot", "+", ...): the glyph in each cell the line
  passes through, one a column, over the braille;
- `scatter`: the glyph at each point only (held-out loss).
Each cell takes the colour of the last series drawn into it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Points = Sequence[tuple[float, float]]  # (step or seconds, value)
Color = tuple[int, int, int]
Run = tuple[str, Color | None]  # text and its colour (None: the default)
Row = list[Run]


@dataclass(frozen=True)
class Line:
    label: str
    points: Points
    scatter: bool = False  # points (held-out loss) rather than a line
    marker: str | None = None  # a glyph of its own (series differ without colour too)
    color: Color | None = None  # RGB; None: PALETTE by the line's place


#: Colours of lines without one, by their place: distinct hues, each well
#: above a dark background's brightness (so they read under NO_COLOR too).
PALETTE: tuple[Color, ...] = ((90, 160, 230), (250, 190, 40), (240, 90, 200), (120, 220, 120),
                              (240, 120, 80), (170, 140, 250), (80, 210, 210), (230, 230, 230))
AXIS: Color = (140, 140, 140)
GLYPH = {"dot": "•", "braille": "⠤", "hd": "▄", "fhd": "▄", "sd": "█"}
# bit of each dot in a braille cell: DOTS[row][column], rows top to bottom
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


def glyph(line: Line) -> str:
    """The character a series is drawn (and named in the legend) with."""
    marker = line.marker or ("dot" if line.scatter else "braille")
    return GLYPH.get(marker, marker[:1])


def legend(lines: Sequence[Line]) -> str:
    """'⠤ loss  ─ smoothed  ◆ held-out': the series that have points."""
    return "  ".join(f"{glyph(ln)} {ln.label}" for ln in lines if ln.points)


def nice_ticks(low: float, high: float, most: int) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) inside [low,
    high]: the narrowest spacing that gives at most `most` of them (and at
    least 2); [low] for an empty range, [low, high] when none fit (or the
    range is too narrow for its magnitude to hold round values)."""
    if not high > low:
        return [low]
    if high - low <= max(abs(low), abs(high)) * 1e-9:
        return [low, high]  # a range finer than a float's steps there: no round values
    most = max(2, most)
    top = math.floor(math.log10(high - low))
    best: list[float] = []
    for step in (m * 10.0 ** p for p in range(top, top - 4, -1) for m in (5, 2, 1)):
        first = math.ceil(low / step - 1e-9)
        count = math.floor(high / step + 1e-9) - first + 1
        if count > most:
            break
        if count >= 2:
            best = [(first + k) * step for k in range(count)]
    return best or [low, high]


def log_ticks(low: float, high: float, most: int) -> list[float]:
    """Ticks of a log10 axis (in log10 units) at powers of ten, or at 1, 2
    and 5 times them when the range spans less than two decades."""
    decades = range(math.floor(low), math.ceil(high) + 1)
    for mantissas in ((1,), (1, 2, 5), (1, 3)):
        ticks = [d + math.log10(m) for d in decades for m in mantissas
                 if low - 1e-9 <= d + math.log10(m) <= high + 1e-9]
        if 2 <= len(ticks) <= max(2, most):
            return ticks
    return [math.log10(t) for t in nice_ticks(10 ** low, 10 ** high, most) if t > 0]


def tick_text(value: float, step: float) -> str:
    """A tick's label, as short as its spacing allows: 1.5k, 0.25, 3e-05."""
    if value == 0:
        return "0"
    size = abs(value)
    if size >= 1e4 and step >= 100:
        for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if size >= div:
                return f"{value / div:.{_decimals(step / div)}f}{suffix}"
    if size < 1e-3 or size >= 1e7:
        return f"{value:.2g}"
    return f"{value:.{_decimals(step)}f}"


def _decimals(step: float) -> int:
    return 0 if step >= 1 else min(6, max(0, -math.floor(math.log10(step) + 1e-9)))


class _Canvas:
    """Braille dots and glyphs over a grid of cells, with a colour a cell."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.dots = bytearray(width * height)
        self.glyphs: dict[int, str] = {}
        self.colors: list[int] = [-1] * (width * height)

    def put(self, cx: int, cy: int, char: str, series: int) -> None:
        if 0 <= cx < self.width and 0 <= cy < self.height:
            cell = cy * self.width + cx
            self.glyphs[cell] = char
            self.colors[cell] = series

    def row(self, cy: int, colors: Sequence[Color | None]) -> Row:
        base = cy * self.width
        cells = range(base, base + self.width)
        glyphs, dots, owner = self.glyphs, self.dots, self.colors
        chars = [glyphs.get(c) or (chr(0x2800 + dots[c]) if dots[c] else " ") for c in cells]
        series = [owner[c] if ch != " " else -1 for c, ch in zip(cells, chars, strict=True)]
        runs: Row = []
        start = 0
        for k in range(1, self.width + 1):
            if k == self.width or series[k] != series[start]:
                who = series[start]
                runs.append(("".join(chars[start:k]), colors[who] if who >= 0 else None))
                start = k
        return runs


def _braille(canvas: _Canvas, pts: Sequence[tuple[float, float]], series: int) -> None:
    """Join consecutive points (in dot coordinates) column by column."""
    width, rows = canvas.width, canvas.height * 4
    cells, owner = canvas.dots, canvas.colors

    def column(px: int, y0: int, y1: int) -> None:
        if not 0 <= px < width * 2:
            return
        bit_col, cx = px & 1, px >> 1
        for py in range(max(0, min(y0, y1)), min(rows - 1, max(y0, y1)) + 1):
            cell = (py >> 2) * width + cx
            cells[cell] |= _DOTS[py & 3][bit_col]
            owner[cell] = series

    prev: tuple[int, int] | None = None
    for fx, fy in pts:
        x, y = round(fx), round(fy)
        if prev is None or x == prev[0]:
            column(x, y if prev is None else prev[1], y)
        else:
            x0, y0 = prev
            span = abs(x - x0)
            sign = 1 if x > x0 else -1
            last = y0
            for k in range(1, span + 1):
                py = round(y0 + (y - y0) * k / span)
                column(x0 + sign * k, last, py)
                last = py
        prev = (x, y)


def _glyphs(canvas: _Canvas, pts: Sequence[tuple[float, float]], char: str, series: int) -> None:
    """The glyph in every cell the line crosses (from dot coordinates)."""
    cells = [(int(fx) >> 1, int(fy) >> 2) for fx, fy in pts]
    if len(cells) == 1:
        canvas.put(*cells[0], char, series)
    for (x0, y0), (x1, y1) in zip(cells, cells[1:], strict=False):
        span = max(1, abs(x1 - x0), abs(y1 - y0))  # a steep stretch fills its rows too
        for k in range(span + 1):
            canvas.put(x0 + round((x1 - x0) * k / span), y0 + round((y1 - y0) * k / span),
                       char, series)


def draw(lines: Sequence[Line], width: int, height: int, *, title: str = "",
         xlabel: str | None = None, log_y: bool = False) -> list[Row]:
    """The chart as `height` rows of (text, colour) runs, each row at most
    `width` cells. `log_y`: a log10 scale labelled with the real values
    (values <= 0 are left out). Lines without points are left out; with no
    points at all the plot area stays empty."""
    colors = [ln.color or PALETTE[k % len(PALETTE)] for k, ln in enumerate(lines)]
    data = [[(float(x), math.log10(y) if log_y else float(y)) for x, y in ln.points
             if not log_y or y > 0] for ln in lines]
    data = [[(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)] for pts in data]
    rows: list[Row] = []
    key_text = legend([ln for ln, pts in zip(lines, data, strict=True) if pts]) \
        if sum(1 for pts in data if pts) > 1 else ""
    rows.append(_title(title, key_text, lines, data, colors, width))
    # the x axis: its line and labels from 8 rows, the labels alone from 4
    # (a short chart keeps its rows for the curve), none below
    axes = 2 if height >= 8 else 1 if height >= 4 else 0
    plot_h = max(1, height - 1 - axes)
    xs = [x for pts in data for x, _ in pts]
    ys = [y for pts in data for _, y in pts]
    xlow, xhigh = (min(xs), max(xs)) if xs else (0.0, 1.0)
    ylow, yhigh = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if yhigh - ylow < 1e-12 * max(1.0, abs(ylow)):  # flat: a band around the value
        pad = abs(ylow) * 0.05 if abs(ylow) > 1e-100 else 0.5
        ylow, yhigh = ylow - pad, yhigh + pad
    if xhigh - xlow < 1e-12 * max(1.0, abs(xlow)):
        pad = abs(xlow) * 0.05 if abs(xlow) > 1e-100 else 0.5
        xlow, xhigh = xlow - pad, xhigh + pad
    most = max(2, min(5, plot_h // 2 + 1))
    yticks = log_ticks(ylow, yhigh, most) if log_y else nice_ticks(ylow, yhigh, most)
    ystep = yticks[1] - yticks[0] if len(yticks) > 1 else abs(yticks[0]) or 1.0
    if log_y:  # the real values: a decade's own size, or the real spacing in a narrow range
        real = [10 ** t for t in yticks]
        gaps = [b - a for a, b in zip(real, real[1:], strict=False)]
        round_ = all(abs(m - round(m)) < 1e-6 for m in (10 ** (t - math.floor(t)) for t in yticks))
        ylabels = [tick_text(v, v if round_ else min(v, min(gaps, default=v))) for v in real]
    else:
        ylabels = [tick_text(t, ystep) for t in yticks]
    gutter = max(len(s) for s in ylabels) + 1
    plot_w = max(1, width - gutter - 1)
    canvas = _Canvas(plot_w, plot_h)
    sx = (plot_w * 2 - 1) / (xhigh - xlow)
    sy = (plot_h * 4 - 1) / (yhigh - ylow)
    for k, (line, pts) in enumerate(zip(lines, data, strict=True)):
        if not pts:
            continue
        dots = [((x - xlow) * sx, (yhigh - y) * sy) for x, y in pts]
        if line.scatter:
            char = glyph(line)
            for fx, fy in dots:
                canvas.put(int(fx) >> 1, int(fy) >> 2, char, k)
        elif (line.marker or "braille") == "braille":
            _braille(canvas, dots, k)
        else:
            _glyphs(canvas, dots, glyph(line), k)
    tick_rows: dict[int, str] = {}
    for t, text in zip(yticks, ylabels, strict=True):
        cy = int((yhigh - t) * sy) >> 2
        if 0 <= cy < plot_h and cy not in tick_rows:
            tick_rows[cy] = text
    for cy in range(plot_h):
        label = tick_rows.get(cy)
        side = (label.rjust(gutter - 1) + "┤") if label is not None else " " * (gutter - 1) + "│"
        rows.append([(side, AXIS), *canvas.row(cy, colors)])
    if axes:
        rows.extend(_x_axis(xlow, xhigh, sx, plot_w, gutter, xlabel)[-axes:])
    return rows[:height]


def _title(title: str, key_text: str, lines: Sequence[Line], data: Sequence[Sequence[object]],
           colors: Sequence[Color], width: int) -> Row:
    row: Row = [(title, None)]
    used = len(title)
    if key_text and used + 3 + len(key_text) <= width:
        row.append(("   ", None))
        first = True
        for k, (line, pts) in enumerate(zip(lines, data, strict=True)):
            if not pts:
                continue
            row.append((("" if first else "  ") + glyph(line), colors[k]))
            row.append((f" {line.label}", None))
            first = False
    elif key_text:  # too many names for the line: the glyphs alone, as many as fit
        row.append(("  ", None))
        used += 2
        for k, (line, pts) in enumerate(zip(lines, data, strict=True)):
            if pts and used + 2 <= width:
                row.append((glyph(line) + " ", colors[k]))
                used += 2
    return _cut(row, width)


def _x_axis(low: float, high: float, scale: float, plot_w: int, gutter: int,
            xlabel: str | None) -> list[Row]:
    ticks = nice_ticks(low, high, max(2, min(8, plot_w // 12)))
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    axis = ["─"] * plot_w
    labels = [" "] * (plot_w + gutter + 1)
    end = -1
    for t in ticks:
        cx = int((t - low) * scale) >> 1
        if not 0 <= cx < plot_w:
            continue
        axis[cx] = "┬"
        text = tick_text(t, step)
        start = max(0, min(gutter + cx - len(text) // 2, len(labels) - len(text)))
        if start > end + 1:
            labels[start:start + len(text)] = text
            end = start + len(text) - 1
    label_row = "".join(labels)
    if xlabel:  # after the last tick's label, else before the first one
        first = next((k for k, c in enumerate(labels) if c != " "), len(labels))
        if len(label_row) - (end + 2) >= len(xlabel):
            label_row = label_row[:len(label_row) - len(xlabel)] + xlabel
        elif first > len(xlabel):
            label_row = xlabel + label_row[len(xlabel):]
    return [[(" " * (gutter - 1) + "└" + "".join(axis), AXIS)], [(label_row.rstrip(), AXIS)]]


def _cut(row: Row, width: int) -> Row:
    out: Row = []
    left = width
    for text, color in row:
        if left <= 0:
            break
        out.append((text[:left], color))
        left -= len(text[:left])
    return out
