"""console.plot: the chart's cells, drawn from lines without a screen."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from console.plot import PALETTE, Line, draw, legend, log_ticks, nice_ticks, tick_text


def text(rows: list[list[tuple[str, object]]]) -> list[str]:
    return ["".join(run for run, _ in row) for row in rows]


def plot_area(rows: list[str]) -> list[str]:
    """The rows between the title and the x axis, without the y axis."""
    return [r.split("┤", 1)[-1] if "┤" in r else r.split("│", 1)[-1] for r in rows[1:-2]]


@given(st.floats(-1e6, 1e6), st.floats(1e-6, 1e6), st.integers(2, 10))
def test_nice_ticks_are_round_evenly_spaced_and_inside(low: float, span: float, most: int
                                                       ) -> None:
    high = low + span
    ticks = nice_ticks(low, high, most)
    if ticks == [low, high]:  # no 2 round values fit in `most`: the ends
        return
    assert 2 <= len(ticks) <= most
    assert all(low - span * 1e-6 <= t <= high + span * 1e-6 for t in ticks)
    gaps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
    step = min(gaps) if gaps else 0
    assert len(gaps) <= 2 or max(gaps) - min(gaps) < abs(step) * 1e-6
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6


def test_log_ticks_are_decades_or_their_halves() -> None:
    assert [round(10 ** t, 9) for t in log_ticks(-3.3, -0.03, 5)] == [0.001, 0.01, 0.1]
    narrow = [round(10 ** t, 6) for t in log_ticks(math.log10(2), math.log10(3), 5)]
    assert narrow[0] >= 2 and narrow[-1] <= 3 and len(narrow) >= 2


def test_tick_text_is_as_short_as_the_spacing_allows() -> None:
    assert tick_text(1500, 500) == "1.5k" or tick_text(1500, 500) == "1500"
    assert tick_text(0.25, 0.05) == "0.25"
    assert tick_text(2.0, 1.0) == "2"
    assert tick_text(3e-5, 1e-5) == "3e-05"
    assert tick_text(20000, 5000) == "20k"


@given(st.integers(10, 240), st.integers(1, 60),
       st.lists(st.tuples(st.floats(-1e9, 1e9), st.floats(-1e9, 1e9)), max_size=50))
def test_any_data_fits_the_size_it_is_given(width: int, height: int,
                                            points: list[tuple[float, float]]) -> None:
    rows = draw([Line("a", points), Line("b", points[::-1], marker="─"),
                 Line("c", points[:3], scatter=True, marker="◆")], width, height, title="t")
    assert len(rows) == height
    assert all(sum(len(run) for run, _ in row) <= width for row in rows)


def test_a_rising_line_rises_and_the_axes_name_its_range() -> None:
    rows = text(draw([Line("up", [(x, x * 2.0) for x in range(91)])], 60, 12, title="up",
                     xlabel="step"))
    area = plot_area(rows)
    width = max(len(r) for r in area)
    first_col = [k for k, r in enumerate(area) if r[:1].strip()]
    last_col = [k for k, r in enumerate(area) if r.ljust(width)[-1:].strip()]
    assert first_col and last_col and min(first_col) > max(last_col)  # bottom left, top right
    assert "150┤" in "".join(rows) and "  0┤" in "".join(rows)  # y from 0 to 180
    assert rows[-1].rstrip().endswith("step") and "50" in rows[-1]
    assert rows[-2].lstrip().startswith("└") and "┬" in rows[-2]


def test_series_differ_by_glyph_and_colour_and_the_legend_says_which() -> None:
    lines = [Line("loss", [(x, 10.0 - x) for x in range(10)]),
             Line("smoothed", [(x, 9.0 - x) for x in range(10)], marker="─"),
             Line("held-out", [(5, 5.0)], scatter=True, marker="◆")]
    rows = draw(lines, 50, 12, title="loss")
    assert text(rows)[0] == "loss   ⠤ loss  ─ smoothed  ◆ held-out"
    body = "".join(text(rows)[1:])
    assert "─" in body and "◆" in body and any(0x2800 < ord(c) <= 0x28ff for c in body)
    colours = {color for row in rows[1:] for run, color in row if run.strip("│┤ ")}
    assert PALETTE[0] in colours and PALETTE[1] in colours and PALETTE[2] in colours
    assert legend(lines[:1] + [Line("none", [])]) == "⠤ loss"


def test_a_log_scale_is_labelled_with_real_values_and_leaves_out_what_it_cannot_show() -> None:
    rows = "".join(text(draw([Line("lr", [(s, 10 ** (-s / 30)) for s in range(0, 100)]
                                   + [(100, 0.0), (101, -1.0)])], 60, 12, log_y=True)))
    assert "0.1┤" in rows and "0.01┤" in rows and "0.001┤" in rows and "-1" not in rows


def test_flat_missing_and_non_finite_data_still_draw() -> None:
    flat = text(draw([Line("lr", [(s, 1e-3) for s in range(50)])], 40, 8))
    assert any("⠒" in r or "⠤" in r or "⠉" in r or "⣀" in r for r in flat)
    assert len(text(draw([Line("a", [])], 40, 8, title="empty"))) == 8
    odd = text(draw([Line("a", [(0, math.nan), (1, math.inf), (2, 1.0), (3, 2.0)])], 40, 8))
    assert "nan" not in "".join(odd).lower() and "inf" not in "".join(odd).lower()


def test_many_runs_keep_their_glyphs_on_a_short_title_line() -> None:
    runs = [Line(f"{k} a-rather-long-run-name", [(x, float(k + x)) for x in range(5)],
                 marker=m) for k, m in enumerate(("braille", "dot", "+", "x"))]
    title = text(draw(runs, 40, 10, title="loss"))[0]
    assert title.startswith("loss") and "•" in title and "+" in title and len(title) <= 40
