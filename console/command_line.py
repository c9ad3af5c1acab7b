"""The `:` command line: a one-line input at the bottom of the dashboard,
and the line under it that answers (an error, or the candidates of a Tab).

It shows what it is given and runs nothing itself: `complete` of
`console.commands` for Tab, `parse` for enter, and then the app's `runner`
with the `Command`; the runner's answer (None when done, else one line of
why not) keeps the line open with that answer under it. Escape closes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Input, Static

from console.commands import Command, CommandError, complete, parse
from engine import pipelines, profiles
from engine.paths import outputs_dir

Runner = Callable[[Command], "str | None"]


def profile_names() -> list[str]:
    """What :submit takes (and Tab offers): the profiles the submit form lists."""
    return [i.name for i in profiles.list_profiles() if i.kind != "cluster" and not i.error]


def prepare(profile: str, overrides: list[str],
            find_output: Callable[[str], str | None]) -> pipelines.Submission:
    """:submit's checks, the submit form's: `pipelines.prepare` raises a
    UserError before anything is sent."""
    return pipelines.prepare(profile, overrides, outputs_dir(),
                             pipelines.make_stamp(time.time(), pipelines.submission_salt()),
                             find_output)


class CommandInput(Input):
    """The input itself: Tab completes rather than moving the focus."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "complete", "Complete", show=False, priority=True),
        Binding("escape", "close", "Close", show=False),
    ]

    def action_complete(self) -> None:
        parent = self.parent
        if isinstance(parent, CommandLine):
            parent.complete_line()

    def action_close(self) -> None:
        parent = self.parent
        if isinstance(parent, CommandLine):
            parent.close()


class CommandLine(Vertical):
    """Hidden until `open`; `runner` runs a parsed command, `profiles` and
    `job_ids` give Tab its candidates."""

    DEFAULT_CSS = """
    CommandLine { height: auto; display: none; }
    CommandLine.shown { display: block; }
    CommandLine Input { border: none; height: 1; padding: 0 1; }
    CommandLine #cmdanswer { height: auto; max-height: 3; color: $text-muted; padding: 0 1; }
    CommandLine #cmdanswer.error { color: $error; }
    """

    def __init__(self, runner: Runner, profiles: Callable[[], Iterable[str]],
                 job_ids: Callable[[], Iterable[int]], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.runner = runner
        self.profiles = profiles
        self.job_ids = job_ids
        self._after_close: Callable[[], None] | None = None

    def compose(self) -> ComposeResult:
        yield CommandInput(placeholder=":jobs :nodes :job ID :logs ID :submit PROFILE "
                           "key=value :cancel ID :q   (tab completes, esc closes)",
                           id="cmdinput", select_on_focus=False)
        yield Static("", id="cmdanswer")

    @property
    def input(self) -> CommandInput:
        return self.query_one(CommandInput)

    def open(self, after_close: Callable[[], None] | None = None) -> None:
        self._after_close = after_close
        self.input.value = ":"
        self.input.cursor_position = 1
        self.answer("")
        self.add_class("shown")
        self.input.focus()

    def close(self) -> None:
        self.remove_class("shown")
        self.answer("")
        if self._after_close is not None:
            self._after_close()

    def answer(self, text: str, error: bool = False) -> None:
        line = self.query_one("#cmdanswer", Static)
        line.update(Text(text))
        line.set_class(error, "error")

    @property
    def answer_text(self) -> str:
        return str(self.query_one("#cmdanswer", Static).render())

    def complete_line(self) -> None:
        box = self.input
        line, candidates = complete(box.value, self.profiles(), self.job_ids())
        box.value = line
        box.cursor_position = len(line)
        if len(candidates) > 1:
            self.answer("  ".join(candidates[:40]))
        elif not candidates:
            self.answer("nothing to complete here")
        else:
            self.answer("")

    @on(Input.Submitted, "#cmdinput")
    def _entered(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            command = parse(event.value)
        except CommandError as exc:
            self.answer(str(exc), error=True)
            return
        problem = self.runner(command)
        if problem:
            self.answer(problem, error=True)
            return
        self.close()
