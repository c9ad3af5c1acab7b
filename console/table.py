"""A virtual table: fixed-width columns, a header that stays put, and rows
that exist only as keys until they scroll into view. Cells come from a
callback, so 10,000 jobs cost a list of ids, and a refresh repaints the
few dozen visible lines from plain segments (Textual's DataTable renders
every cell through Rich and drops its whole cache on any change).

A cell is text, (text, style) where style is a Rich style string, or a
list of such (text, style) parts drawn one after another (a word styled
inside plain text), cut or padded to the column as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import ClassVar

from rich.cells import set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

Cell = str | tuple[str, str] | list[tuple[str, str]]
Column = tuple[str, int]  # label, width in cells


def _text(cell: Cell) -> str:
    if isinstance(cell, str):
        return cell
    if isinstance(cell, list):
        return "".join(text for text, _ in cell)
    return cell[0]


@lru_cache(maxsize=256)
def _style(text: str) -> Style:
    return Style.parse(text) if text else Style()


class VirtualTable(ScrollView, can_focus=True):
    """Rows are keys; `cells(key)` draws one when it is on screen."""

    DEFAULT_CSS = """
    VirtualTable { background: $surface; }
    VirtualTable > .vtable--header { text-style: bold; background: $panel; }
    VirtualTable > .vtable--cursor { background: $block-cursor-background;
                                     color: $block-cursor-foreground; }
    VirtualTable:blur > .vtable--cursor { background: $block-cursor-blurred-background; }
    VirtualTable > .vtable--even { background: $surface-lighten-1 20%; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"vtable--header", "vtable--cursor", "vtable--even"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "Up", show=False),
        Binding("down", "move(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Select", show=False),
    ]

    cursor = reactive(0, always_update=True, repaint=False)

    class Highlighted(Message):
        def __init__(self, table: VirtualTable, key: str) -> None:
            super().__init__()
            self.table, self.key = table, key

        @property
        def control(self) -> VirtualTable:
            return self.table

    class Selected(Highlighted):
        """Enter (or a click on the cursor row)."""

    def __init__(self, columns: Sequence[Column], cells: Callable[[str], Sequence[Cell]],
                 *, show_cursor: bool = True, flex: int | None = None, flex_max: int = 48,
                 id: str | None = None) -> None:  # noqa: A002
        """`flex`: the column that takes spare width (up to `flex_max`)."""
        super().__init__(id=id)
        self.columns = list(columns)
        self.cells = cells
        self.show_cursor = show_cursor
        self.flex, self.flex_max = flex, flex_max
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self._widths = [w for _, w in self.columns]
        self._width = sum(self._widths) + len(self._widths) - 1

    def watch_show_vertical_scrollbar(self) -> None:
        """The scrollbar takes width from the flex column, not a horizontal
        scrollbar's line from the rows (it comes after the last resize when
        rows outgrow the height)."""
        self.on_resize()

    def set_columns(self, columns: Sequence[Column], flex: int | None = None,
                    flex_max: int | None = None) -> None:
        """Draw these columns from now on (another set for another width);
        `cells` must give cells for them."""
        self.columns = list(columns)
        self.flex = flex
        if flex_max is not None:
            self.flex_max = flex_max
        self._widths = []
        self.on_resize()
        self.refresh()

    def on_resize(self) -> None:
        widths = [w for _, w in self.columns]
        if self.flex is not None:
            base = sum(widths) + len(widths) - 1
            spare = self.scrollable_content_region.width - base
            widths[self.flex] = min(self.flex_max, widths[self.flex] + max(0, spare))
        if widths != self._widths:
            self._widths = widths
            self._width = sum(widths) + len(widths) - 1
            self.virtual_size = Size(self._width, len(self.keys) + 1)
            self.refresh()

    # ------------------------------------------------------------ content
    def set_keys(self, keys: Sequence[str]) -> None:
        """Show these rows, in this order; the cursor stays on its key."""
        current = self.cursor_key
        keys = list(keys)
        if keys != self.keys:
            self.keys = keys
            self._index = {k: i for i, k in enumerate(keys)}
            self.virtual_size = Size(self._width, len(keys) + 1)
            if current is not None and current in self._index:
                self.set_reactive(VirtualTable.cursor, self._index[current])
            else:
                self.set_reactive(VirtualTable.cursor, min(self.cursor, max(0, len(keys) - 1)))
        self.refresh()

    @property
    def cursor_key(self) -> str | None:
        return self.keys[self.cursor] if 0 <= self.cursor < len(self.keys) else None

    def move_to(self, key: str) -> bool:
        """Put the cursor on `key`; False if it is not shown."""
        if key not in self._index:
            return False
        if self._index[key] != self.cursor:
            self.cursor = self._index[key]
        return True

    def row_text(self, key: str) -> list[str]:
        """A row's cells as plain text (for tests and the CLI's eye)."""
        return [_text(c) for c in self.cells(key)]

    def column_width(self, index: int) -> int:
        """The width column `index` is drawn at now (the flex one grows)."""
        return self._widths[index]

    # ------------------------------------------------------------ cursor
    def watch_cursor(self, old: int, new: int) -> None:
        if not self.keys:
            return
        clamped = max(0, min(new, len(self.keys) - 1))
        if clamped != new:
            self.set_reactive(VirtualTable.cursor, clamped)
        if not self._scroll_to_cursor():  # the same rows: repaint only the two lines
            top, width = self.scroll_offset.y, self.size.width
            self.refresh(*(Region(0, i - top + 1, width, 1) for i in {old, clamped}))
        self.post_message(self.Highlighted(self, self.keys[clamped]))

    def _scroll_to_cursor(self) -> bool:
        """Scroll the cursor row into view; True if that scrolled."""
        rows = max(1, self.size.height - 1)
        top = self.scroll_offset.y
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False, immediate=True)
        else:
            return False
        return True

    def action_move(self, step: int) -> None:
        if self.keys:
            self.cursor = max(0, min(len(self.keys) - 1, self.cursor + step))

    def action_page(self, direction: int) -> None:
        self.action_move(direction * max(1, self.size.height - 2))

    def action_jump(self, where: int) -> None:
        if self.keys:
            self.cursor = where % len(self.keys)

    def action_select(self) -> None:
        key = self.cursor_key
        if key is not None:
            self.post_message(self.Selected(self, key))

    def on_click(self, event: events.Click) -> None:
        if event.y < 1:
            return
        index = self.scroll_offset.y + event.y - 1
        if 0 <= index < len(self.keys):
            if index == self.cursor and event.chain > 1:
                self.action_select()
            self.cursor = index

    # ------------------------------------------------------------ drawing
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        if y == 0:
            cells: Sequence[Cell] = [label for label, _ in self.columns]
            style = base + self.get_component_rich_style("vtable--header")
        else:
            index = scroll_y + y - 1
            if index >= len(self.keys):
                return Strip.blank(width, base)
            cells = self.cells(self.keys[index])
            style = base
            if self.show_cursor and index == self.cursor:
                style += self.get_component_rich_style("vtable--cursor")
            elif index % 2:
                style += self.get_component_rich_style("vtable--even")
        segments: list[Segment] = []
        for i, (w, cell) in enumerate(zip(self._widths, cells, strict=False)):
            if i:
                segments.append(Segment(" ", style))
            if isinstance(cell, list):
                parts = [Segment(text, style + _style(extra) if extra else style)
                         for text, extra in cell]
                segments.extend(Segment.adjust_line_length(parts, w, style))
                continue
            text, extra = (cell, "") if isinstance(cell, str) else cell
            segments.append(Segment(set_cell_size(text, w), style + _style(extra)
                                    if extra else style))
        strip = Strip(segments, self._width)
        return strip.crop_extend(scroll_x, scroll_x + width, style).simplify()
