"""The `?` help: the app's own keys first, grouped (dashboard, job detail,
logs, compare, command line), as they are bound now (a user's keys.toml included), then
the keys of the widget that had the focus (Textual's). `?` and Esc close
it. It shows the rows it is given; `key_rows` makes them from bindings."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from console.commands import COMMANDS
from console.keymap import section_of

Group = tuple[str, Sequence[tuple[str, str]]]  # (title, [(keys, what)])


def key_rows(bindings: Iterable[BindingType], keymap: Mapping[str, str],
             display: Callable[[str], str] = str, section: str | None = None
             ) -> list[tuple[str, str]]:
    """(keys, description) of each binding with a description, its keys
    taken from `keymap` by binding id when remapped, each as `display`
    writes it ("ctrl+d" -> "^d"); only those of keys.toml's `section`
    ("job", "logs": one screen's bindings in two groups) when given."""
    rows = []
    for binding in bindings:
        if not isinstance(binding, Binding) or not binding.description:
            continue
        if section is not None and section_of(binding.id or "") != section:
            continue
        keys = keymap.get(binding.id or "", binding.key) if binding.id else binding.key
        shown = ", ".join(display(k.strip()) for k in keys.split(","))
        what = binding.description + (f": {binding.tooltip}" if binding.tooltip else "")
        rows.append((shown, what))
    return rows


def command_rows() -> list[tuple[str, str]]:
    return [(usage, "") for _kind, usage in COMMANDS.values()]


def help_text(groups: Sequence[Group]) -> Text:
    text = Text()
    for title, rows in groups:
        if not rows:
            continue
        text.append(f"{title}\n", style="bold underline")
        width = max(len(k) for k, _ in rows)
        for keys, what in rows:
            text.append(f"  {keys.ljust(width)}  ", style="bold")
            text.append(f"{what}\n")
        text.append("\n")
    return text


class HelpScreen(ModalScreen[None]):
    """Every key, the app's first; `?` or Esc closes."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen #help { width: 100; max-width: 100%; height: 90%; border: thick $accent;
                       background: $surface; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "Close"),
    ]

    def __init__(self, groups: Sequence[Group]) -> None:
        super().__init__()
        self.groups = list(groups)

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Label("[b]keys[/b]  (? or esc closes; ctrl+p: every action by name)")
            with VerticalScroll():
                yield Static(help_text(self.groups), id="helptext")

    def action_close(self) -> None:
        self.dismiss(None)
