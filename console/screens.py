"""The screens stacked over the dashboard: a job's detail (logs, charts,
history, profile, results), the submit form, the priority prompt, a node's
drain reason, the result of `nodes check` and the yes/no confirmation. They
show what they are given; the app fetches."""

from __future__ import annotations

import os
import shlex
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from rich.segment import Segment
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.strip import Strip
from textual.suggester import SuggestFromList
from textual.widgets import (
    DataTable,
    Footer,
    Input,
    Label,
    RichLog,
    Static,
    TabbedContent,
    TabPane,
    Tabs,
)

from console import detail
from console.chart import Line, MetricChart, loss_lines
from console.search_plot import SearchPlotScreen
from console.state import Series, guard_words, progress_line, series_progress, smoothed
from engine import pipelines, profiles
from engine.errors import EngineError, UserError
from engine.model import LIMITS
from engine.paths import outputs_dir
from engine.workloads import compare

LOG_LINES = 20_000  # kept per open job screen, searched in place
CONTEXT = 3  # lines kept above a match the view jumps to
DRAIN_LINES = 2_000  # shown per drain (4 a second); a faster log is skipped through
#: The engine's limit on a drain reason (engine.runtime.MAX_DRAIN_REASON; the
#: runtime is not imported by the screen): the box takes no more.
MAX_DRAIN_REASON = 200


PromptResult = TypeVar("PromptResult")


class InputPrompt(ModalScreen[PromptResult]):
    """A one-line question in a dialog: its Input has the focus, and esc
    closes it with None. Subclasses compose it and answer Input.Submitted."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Cancel")]

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def action_close(self) -> None:
        self.dismiss(None)  # every prompt's result admits None


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no, for actions that stop work."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(Text(self.question), id="question")  # a name is not markup
            yield Label("[b]y[/b] yes    [b]n[/b] no", id="answers")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ReasonScreen(InputPrompt["str | None"]):
    """Why a node is drained (shown with its state; may be empty), checked
    as the engine will check it before anything is sent."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Drain node {self.node}: no new work starts there, running jobs go "
                        "on. Why? (enter: next, esc: cancel)")
            yield Input(placeholder="e.g. disk swap at 14:00", id="reason",
                        max_length=MAX_DRAIN_REASON)
            yield Static("", id="reason-error", classes="error")

    @on(Input.Submitted)
    def _entered(self, event: Input.Submitted) -> None:
        reason = event.value.strip()
        if not reason.isprintable():
            self.query_one("#reason-error", Static).update(
                "the reason must be printable text on one line")
            return
        self.dismiss(reason)


class CheckScreen(ModalScreen[None]):
    """The result of `nodes check`: every check of every node, ok or not,
    with its detail, and the verdict."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, results: list[dict[str, Any]]) -> None:
        super().__init__()
        self.results = results

    def compose(self) -> ComposeResult:
        with Vertical(id="checks"):
            yield Label(check_summary(self.results), id="verdict")
            yield DataTable(id="checktable", cursor_type="none", zebra_stripes=True)
            yield Label("[b]esc[/b] close", id="answers")

    def on_mount(self) -> None:
        table = self.query_one("#checktable", DataTable)
        table.add_columns("node", "check", "ok", "detail")
        table.add_rows([tuple(Text(c) for c in row) for row in check_rows(self.results)])

    def action_close(self) -> None:
        self.dismiss(None)


def check_rows(results: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(node, check, ok / FAIL / -, detail) for every check of every node."""
    rows = []
    for r in results:
        for c in r.get("checks") or []:
            mark = "ok" if c.get("ok") else "-" if c.get("ok") is None else "FAIL"
            rows.append((str(r.get("node")), str(c.get("check")), mark,
                         str(c.get("detail") or "")))
    return rows


def check_summary(results: Iterable[Mapping[str, Any]]) -> str:
    """The verdict in one line, naming the failed checks of each node."""
    failed = []
    for r in results:
        if not r.get("ok"):
            names = [str(c.get("check")) for c in r.get("checks") or [] if c.get("ok") is False]
            failed.append(f"{r.get('node')} ({', '.join(names) or 'failed'})")
    if not failed:
        return "nodes check: every check passed"
    return "nodes check: checks failed on " + ", ".join(failed)


class PriorityScreen(InputPrompt["int | None"]):
    """A new priority for a waiting job, checked before it is sent."""

    def __init__(self, job: Mapping[str, Any]) -> None:
        super().__init__()
        self.job = job

    def compose(self) -> ComposeResult:
        low, high = LIMITS["priority"]
        with Vertical(id="dialog"):
            yield Label(f"Priority of job {self.job['id']} ({self.job['name']}), now "
                        f"{self.job.get('priority', 0)}; higher starts first, {low}..{high}")
            yield Input(value=str(self.job.get("priority", 0)), id="priority")
            yield Static("", id="priority-error", classes="error")

    @on(Input.Submitted)
    def _entered(self, event: Input.Submitted) -> None:
        low, high = LIMITS["priority"]
        try:
            value = int(event.value.strip())
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            self.query_one("#priority-error", Static).update(
                f"{event.value.strip()!r}: type a whole number from {low} to {high}")
            return
        self.dismiss(value)


class FieldInput(Input):
    """An Input that moves on at Tab itself, at once: keys typed fast after
    the Tab were already queued here (the app's own Tab moves focus only
    once the key has bubbled up), and went into this field; those that
    reach it once it has lost the focus go to the field that has it (text
    and enter; other keys typed in that instant are dropped)."""

    async def _on_key(self, event: events.Key) -> None:
        focused = self.screen.focused
        if focused is not self and isinstance(focused, Input):  # typed after a Tab
            event.stop()
            event.prevent_default()
            if event.is_printable and event.character:
                focused.insert_text_at_cursor(event.character)
            elif event.key == "enter":
                await focused.action_submit()
            return
        if event.key in ("tab", "shift+tab"):
            event.stop()
            event.prevent_default()
            if event.key == "tab":
                self.screen.focus_next()
            else:
                self.screen.focus_previous()
            return
        await super()._on_key(event)




class SubmitScreen(ModalScreen["pipelines.Submission | None"]):
    """Pick a profile, give overrides, and see validation errors here,
    before anything is queued."""

    #: The form's lines wrap at its width: the profile list was cut at its end.
    DEFAULT_CSS = "SubmitScreen #form Label { width: 1fr; }"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Cancel"),
        Binding("ctrl+s", "submit", "Submit"),
    ]

    def __init__(self, find_output: Callable[[str], str | None]) -> None:
        super().__init__()
        self.find_output = find_output
        self.names = [i.name for i in profiles.list_profiles()
                      if i.kind != "cluster" and not i.error]

    def compose(self) -> ComposeResult:
        with Vertical(id="form"):
            yield Label("Submit a job  (enter: submit, tab: next field, esc: cancel)")
            yield Label("profiles: " + ", ".join(self.names), id="names")
            yield FieldInput(placeholder="profile name (right arrow completes)", id="profile",
                             suggester=SuggestFromList(self.names, case_sensitive=False))
            yield Input(placeholder="overrides: key=value ... e.g. args.max_steps=50 "
                        "resources.cpus=2", id="overrides")
            yield Static("", id="submit-error", classes="error")

    def on_mount(self) -> None:
        self.query_one("#profile", Input).focus()

    def action_close(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted, "#overrides, #profile")
    def _entered(self, _event: Input.Submitted) -> None:
        self.action_submit()

    def action_submit(self) -> None:
        error = self.query_one("#submit-error", Static)
        profile = self.query_one("#profile", Input).value.strip()
        if not profile:
            error.update("type a profile name first (see the list above)")
            return
        try:
            overrides = shlex.split(self.query_one("#overrides", Input).value)
            sub = pipelines.prepare(profile, overrides, outputs_dir(),
                                    pipelines.make_stamp(time.time(), pipelines.submission_salt()),
                                    self.find_output)
        except ValueError as exc:  # shlex: an unclosed quote
            error.update(f"overrides: {exc}")
            return
        except UserError as exc:
            error.update(str(exc))
            return
        self.dismiss(sub)


class SavePathScreen(InputPrompt["str | None"]):
    """Where to save a job's log: a path, with a default in the current folder."""

    def __init__(self, job_id: int, default: str) -> None:
        super().__init__()
        self.job_id, self.default = job_id, default

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(f"Save the log of job {self.job_id} to (enter: save, esc: cancel)")
            yield Input(value=self.default, id="savepath")
            yield Static("", id="save-error", classes="error")

    @on(Input.Submitted)
    def _entered(self, event: Input.Submitted) -> None:
        path = os.path.expanduser(event.value.strip())
        if not path or os.path.isdir(path):
            self.query_one("#save-error", Static).update(
                f"{path or '(empty)'}: give a file name, not a folder")
            return
        self.dismiss(path)


class LogView(RichLog):
    """The log: home/end (and g/G) go to the top or bottom through the
    screen, so going up pauses following and going down resumes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home", "screen.top", "Top", show=False, id="logs.top"),
        Binding("end", "screen.bottom", "Bottom", show=False, id="logs.bottom"),
    ]

    def restyle(self, row: int, text: Text) -> bool:
        """Draw row `row` (an unwrapped line) as `text`, in place: moving the
        current match does not rewrite the whole log. False when it cannot."""
        if self.wrap or not 0 <= row < len(self.lines) or not self._size_known:
            return False
        options = self.app.console.options.update(overflow="ignore", no_wrap=True)
        options = options.update_width(max(1, self.lines[row].cell_length))
        lines = list(Segment.split_lines(self.app.console.render(text, options)))
        if len(lines) != 1:
            return False
        strip = Strip(lines[0])
        strip.adjust_cell_length(self.lines[row].cell_length)
        self.lines[row] = strip
        self._line_cache.clear()
        self.refresh()
        return True


class JobScreen(Screen[None]):
    """One job: its logs (followed, searched like less: the whole log stays,
    matches highlighted, n/N jump between them; one rank or all, silent ranks
    listed; wrap; top/bottom; saved to a file), charts of loss, learning rate
    and throughput, attempts and events, the profile it came from, its
    results table (a pipeline's comparison in its evaluate job) and where its
    TensorBoard files are; its processes (every rank's, asked of the app with
    `ProcessesWanted` every PROCESSES_S while the tab is shown)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back", id="job.back"),
        Binding("slash", "search", "Search logs", id="logs.search"),
        Binding("n", "match(1)", "Next match", show=False, id="logs.next-match"),
        Binding("N", "match(-1)", "Prev match", show=False, id="logs.prev-match"),
        Binding("ampersand", "toggle_only", "Only matches", show=False, id="logs.only-matches"),
        Binding("right_square_bracket", "rank(1)", "Next rank", id="logs.next-rank"),
        Binding("left_square_bracket", "rank(-1)", "Prev rank", id="logs.prev-rank"),
        Binding("f", "toggle_follow", "Follow", id="logs.follow"),
        Binding("w", "toggle_wrap", "Wrap", show=False, id="logs.wrap"),
        Binding("g,home", "top", "Top", show=False, id="logs.top"),
        Binding("G,end", "bottom", "Bottom", show=False, id="logs.bottom"),
        Binding("ctrl+s", "save_log", "Save log", show=False, id="logs.save"),
        Binding("1,l", "tab('logs')", "Logs", show=False, id="job.logs"),
        Binding("2", "tab('charts')", "Charts", show=False, id="job.charts"),
        Binding("3", "tab('history')", "History", show=False, id="job.history"),
        Binding("4", "tab('profile')", "Profile", show=False, id="job.profile"),
        Binding("5", "tab('results')", "Results", show=False, id="job.results"),
        Binding("6", "tab('processes')", "Processes", show=False, id="job.processes"),
        Binding("P", "plot", "Plot", show=False, id="job.plot"),
    ]

    class ProcessesWanted(Message):
        """Posted every PROCESSES_S while the Processes tab is shown (and
        when it is opened): the app fetches and calls `set_processes`."""

        def __init__(self, screen: JobScreen) -> None:
            super().__init__()
            self.screen = screen

    def __init__(self, job: Mapping[str, Any], tab: str = "logs") -> None:
        super().__init__()
        self.job_id = int(job["id"])
        self.job: dict[str, Any] = dict(job)
        self.initial_tab = tab
        self.lines: deque[str] = deque(maxlen=LOG_LINES)
        self.rank: int | None = None
        self.ranks: list[int] = []
        self.rank_counts: dict[int, int] = {}
        self.needle = ""
        self.follow = True
        self.wrap = False
        self.only = False  # &: only the lines that match (as less's &pattern)
        self.shown: list[str] = []  # the lines in the view (of the chosen rank)
        self.found: list[int] = []  # indexes in `shown` of the search's matches
        self.current: int | None = None  # position in `found` of the match jumped to
        self._starts: list[int] = []  # each shown line's first row in the view (wrapped)
        self.inbox: deque[str] = deque()  # lines from the follower thread
        self.following_attempt = 0
        self._log_stream: Any = None
        self._log_lock = threading.Lock()
        self._gone = False
        self.prepared = ""  # a prepare job's progress in words (from its metrics)
        self.search: dict[str, Any] | None = None  # a compress --search job's results

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="jobtitle")
        with TabbedContent(initial=self.initial_tab, id="tabs"):
            with TabPane("Logs", id="logs"):
                yield Input(placeholder="search the log (enter: done, esc: clear)",
                            id="logsearch")
                yield Static(self._log_label(), id="loginfo")
                yield LogView(id="log", max_lines=LOG_LINES, wrap=False, markup=False)
            with TabPane("Charts", id="charts"):
                yield MetricChart("loss", id="chart-loss")
                yield MetricChart("learning rate", id="chart-lr")
                yield MetricChart("tokens/s", id="chart-tps")
            with TabPane("History", id="history"):
                yield Label("attempts")
                yield DataTable(id="attempts", cursor_type="none", zebra_stripes=True)
                yield Label("events")
                yield DataTable(id="events", cursor_type="none", zebra_stripes=True)
            with TabPane("Profile", id="profile"), VerticalScroll():
                yield Static(detail.describe(self.job), id="spec")
                yield Static(detail.tensorboard_line(self.job.get("output")),
                             id="profile-tensorboard")
            with TabPane("Results", id="results"), VerticalScroll():
                yield Static("", id="resultsinfo")
                yield DataTable(id="resultstable", cursor_type="none", zebra_stripes=True)
                yield Static("", id="comparisoninfo")
                yield DataTable(id="comparisontable", cursor_type="none", zebra_stripes=True)
                yield Static(detail.tensorboard_line(self.job.get("output")), id="tensorboard")
            with TabPane("Processes", id="processes"):
                yield Static("processes: asking the engine...", id="procsinfo")
                yield DataTable(id="procs", cursor_type="none", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        attempts = self.query_one("#attempts", DataTable)
        attempts.add_columns("#", "state", "where", "started", "ended", "exit", "reason")
        events = self.query_one("#events", DataTable)
        events.add_columns("time", "attempt", "change", "cause", "by")
        self.query_one("#procs", DataTable).add_columns(*PROCESS_COLUMNS)
        self.set_interval(PROCESSES_S, self._want_processes)
        if self.initial_tab == "logs":  # focus inside a pane would make it the active tab
            self.query_one("#log", RichLog).focus()
        else:
            self.query_one("#tabs", TabbedContent).query_one("Tabs").focus()

    # ------------------------------------------------------------ data in
    def _title(self) -> str:
        j = self.job
        reason = f" - {j['reason']}" if j.get("reason") else ""
        clock = getattr(self.app, "clock", time.time)  # the app's clock (fixed in tests)
        guarded = guard_words(j, clock())  # stalled, or a loss guard restart
        reason += f" - {guarded}" if guarded else ""
        progress = f"\n  {self.prepared}" if self.prepared else ""  # a prepare job's
        return (f"job {j['id']}  {j.get('name')}  [{j.get('kind')}]  {j.get('state')}  "
                f"attempt {j.get('attempt')}  priority {j.get('priority', 0)}{reason}{progress}")

    def set_job(self, job: Mapping[str, Any]) -> None:
        """A newer view of the job (from the event stream or `show`)."""
        self.job.update(job)
        try:
            title = self.query_one("#jobtitle", Static)
        except NoMatches:
            return  # the screen closed while the job was being read
        title.update(Text(self._title()))
        if "spec" in job:
            self._set_ranks(self.ranks)
        if "history" in job:
            self.query_one("#spec", Static).update(Text(detail.describe(self.job)))
            board = Text(detail.tensorboard_line(self.job.get("output")))
            self.query_one("#tensorboard", Static).update(board)
            self.query_one("#profile-tensorboard", Static).update(board)
            self._fill(self.query_one("#attempts", DataTable), detail.attempt_rows(self.job))
            self._fill(self.query_one("#events", DataTable), detail.history_rows(self.job))

    def set_results(self, data: dict[str, Any] | None, note: str) -> None:
        try:
            info = self.query_one("#resultsinfo", Static)
            table = self.query_one("#resultstable", DataTable)
        except NoMatches:
            return  # the screen closed while its results were being read
        info.update(Text(note))
        table.clear(columns=True)
        self.search = data if data is not None and compare.is_search(data) else None
        if self.search is not None:
            self._search_results(self.search, note, info, table)
        elif data is not None:
            headers, rows = detail.results_table(data)
            table.add_columns(*headers)
            table.add_rows(rows)
        self.set_comparison(detail.comparison(self.job))

    @staticmethod
    def _search_results(data: dict[str, Any], note: str, info: Static,
                        table: DataTable[Any]) -> None:
        """A search's candidates as `llmconsole compare` shows them, the
        frontier marked; `P` plots them."""
        rows = compare.search_rows("", "results.json", data)
        headers, cells = compare.search_table(rows)
        pick = data.get("pick") or {}
        info.update(Text(f"{note}: {len(rows)} candidates, * on the size/latency/perplexity "
                         f"frontier ({sum(bool(r.pareto) for r in rows)}), saved: "
                         f"{pick.get('label', '-')} ({pick.get('rule', '-')}); "
                         "P: plot perplexity against latency"))
        table.add_columns(*headers)
        table.add_rows([tuple(Text(c) for c in row) for row in cells])

    def action_plot(self) -> None:
        """P: a search's perplexity against latency (other jobs have no frontier)."""
        if self.search is None:
            self.notify("P plots the candidates of a compress --search job; this job's "
                        "results have none (open its Results tab once it has finished)",
                        severity="warning")
            return
        self.app.push_screen(SearchPlotScreen(self.search, f"job {self.job_id}"))

    def set_comparison(self, found: tuple[list[str], list[list[str]], str] | None) -> None:
        """The comparison of a pipeline's stages (its evaluate job's), if any."""
        info = self.query_one("#comparisoninfo", Static)
        table = self.query_one("#comparisontable", DataTable)
        table.clear(columns=True)
        table.display = bool(found and found[0])
        if found is None:
            info.update("")
            return
        headers, cells, source = found
        info.update(Text(f"comparison ({source})" if headers else f"comparison: {source}"))
        if headers:
            table.add_columns(*headers)
            table.add_rows([tuple(Text(c) for c in row) for row in cells])

    @staticmethod
    def _fill(table: DataTable[Any], rows: Iterable[tuple[str, ...]]) -> None:
        table.clear()
        table.add_rows([tuple(Text(c) for c in row) for row in rows])

    # ------------------------------------------------------------ following
    def follow_with(self, stream: Any) -> bool:
        """Adopt a log stream (closing the one before); False, with the
        stream closed, when the screen is already gone."""
        with self._log_lock:
            previous, self._log_stream = self._log_stream, stream
            closed = self._gone
        if previous is not None:
            previous.close()
        if closed:
            stream.close()
        return not closed

    def stop_following(self, final: bool = False) -> None:
        with self._log_lock:
            stream, self._log_stream = self._log_stream, None
            self._gone = self._gone or final
        if stream is not None:
            stream.close()

    def take_lines(self) -> None:
        """Show what the follower thread has received since the last call:
        at most DRAIN_LINES of the newest, so a job printing faster than
        anyone can read does not stall the screen."""
        lines = []
        while self.inbox:
            lines.append(self.inbox.popleft())
        if len(lines) > DRAIN_LINES:
            skipped = len(lines) - DRAIN_LINES
            lines = [f"... {skipped:,} lines skipped here (llmconsole logs {self.job_id} "
                     "has every line)", *lines[-DRAIN_LINES:]]
        if lines:
            try:
                self.add_lines(lines)
            except NoMatches:
                pass  # the screen is closing (its log view already removed)

    def add_lines(self, lines: Iterable[str]) -> None:
        fresh = list(lines)
        self.lines.extend(fresh)
        for line in fresh:
            r = detail.rank_of(line)
            if r is not None:
                self.rank_counts[r] = self.rank_counts.get(r, 0) + 1
        self._set_ranks(self.rank_counts)
        chosen = detail.select_lines(fresh, self.rank, self.needle if self.only else "")
        if len(self.shown) + len(chosen) > LOG_LINES:  # the view drops its oldest: again
            self._redraw_log()
            return
        base = len(self.shown)
        self.shown.extend(chosen)
        self.found.extend(base + i for i in detail.matches(chosen, self.needle))
        self._write(chosen)
        self.query_one("#loginfo", Static).update(self._log_label(), layout=False)

    def _set_ranks(self, seen: Iterable[int]) -> None:
        self.ranks = detail.rank_choices(seen, detail.world_size(self.job))

    def set_series(self, series: Series | None) -> None:
        progress = series_progress(series) if series is not None else None
        prepared = progress_line(progress) if progress is not None and progress.is_prepare \
            else ""
        if prepared != self.prepared:  # a prepare job's documents, rates, removed, ETA
            self.prepared = prepared
            self.query_one("#jobtitle", Static).update(Text(self._title()))
        charts = {c.id: c for c in self.query(MetricChart)}
        if series is None:
            for chart in charts.values():
                chart.show([], key=0)
            return
        def losses() -> list[Line]:  # built only when the chart draws
            loss = list(series.points["loss"])
            smooth = list(zip([s for s, _ in loss], smoothed([v for _, v in loss]), strict=True))
            return loss_lines(loss, smooth, series.points["eval_loss"])

        charts["chart-loss"].show(losses, key=series.version)
        charts["chart-lr"].show([Line("lr", series.points["lr"])], key=series.version)
        charts["chart-tps"].show([Line("tokens/s", series.points["tokens_per_s"])],
                                 key=series.version)

    # ------------------------------------------------------------ logs view
    def _log_label(self) -> str:
        ranks = detail.rank_note(self.rank, self.rank_counts)
        known = f" (ranks {', '.join(map(str, self.ranks))}; [ ] to switch)" if self.ranks else ""
        search = ""
        if self.needle:
            where = ("no match" if not self.found else
                     f"{len(self.found)} matches, n/N to jump" if self.current is None else
                     f"match {self.current + 1}/{len(self.found)}")
            search = f"  search {self.needle!r}: {where}"
        follow = "following" if self.follow else "paused (f to follow)"
        if self.needle and self.only:
            search += " (only matching lines; & for all)"
        wrap = "  wrap" if self.wrap else ""
        # the search first: on a narrow screen the end of the line is cut
        return f"{search.strip()}{'  ' if search else ''}{ranks}{known}  {follow}{wrap}"

    def _styled(self, index: int) -> Text:
        text = Text(self.shown[index])
        if self.needle:
            current = self.current is not None and self.found[self.current] == index
            text.highlight_words([self.needle], "bold underline reverse" if current
                                 else "reverse", case_sensitive=False)
        return text

    def _write(self, lines: list[str]) -> None:
        """Write the last `len(lines)` lines of `shown` at the bottom."""
        log = self.query_one("#log", LogView)
        for index in range(len(self.shown) - len(lines), len(self.shown)):
            self._starts.append(len(log.lines))
            log.write(self._styled(index), scroll_end=self.follow)

    def _redraw_log(self) -> None:
        log = self.query_one("#log", LogView)
        log.clear()
        log.wrap = self.wrap
        self.shown = detail.select_lines(self.lines, self.rank,
                                         self.needle if self.only else "")
        self.found = detail.matches(self.shown, self.needle)
        if self.current is not None and self.current >= len(self.found):
            self.current = None
        self._starts = []
        self._write(self.shown)
        self.query_one("#loginfo", Static).update(self._log_label(), layout=False)

    def _row_of(self, index: int) -> int:
        """The view's row where shown line `index` starts (lines wrap)."""
        if self.wrap and index < len(self._starts) and (self._starts[-1] > 0 or index == 0):
            return self._starts[index]
        return index

    def action_match(self, step: int) -> None:
        """n/N: the next or previous match, with CONTEXT lines above it kept;
        following pauses so the view stays there."""
        if not self.needle:
            self.notify("no search: / to search the log", severity="warning")
            return
        if not self.found:
            self.notify(f"no line matches {self.needle!r}", severity="warning")
            return
        log = self.query_one("#log", LogView)
        before = self.current
        self.current = detail.next_match(self.found, self.current, step,
                                         start=self._line_at(int(log.scroll_y)))
        self._jump(before)

    def _line_at(self, row: int) -> int:
        """The shown line at a row of the view."""
        if not self.wrap:
            return row
        import bisect
        return max(0, bisect.bisect_right(self._starts, row) - 1)

    def _jump(self, before: int | None = None) -> None:
        """Scroll to the current match (pausing following) and draw it as
        the current one, the one before as any other."""
        if self.current is None:
            return
        log = self.query_one("#log", LogView)
        if self.follow:
            self.follow = False
            log.auto_scroll = False
        offset = len(self.shown) - len(log.lines)  # rows the view has dropped
        moved = [self.found[k] for k in (before, self.current) if k is not None]
        if not all(log.restyle(i - offset, self._styled(i)) for i in moved):
            self._redraw_log()
        self.query_one("#loginfo", Static).update(self._log_label(), layout=False)
        log.scroll_to(y=max(0, self._row_of(self.found[self.current]) - CONTEXT),
                      animate=False, immediate=True)

    def action_toggle_only(self) -> None:
        """&: only the matching lines, or the whole log again."""
        self.only = not self.only
        self.current = None
        self._redraw_log()

    def action_toggle_wrap(self) -> None:
        self.wrap = not self.wrap
        top = self._line_at(int(self.query_one("#log", LogView).scroll_y))
        self._redraw_log()
        if not self.follow:
            self.query_one("#log", LogView).scroll_to(y=self._row_of(top), animate=False,
                                                      immediate=True)

    def action_top(self) -> None:
        """g / home: the first line; following pauses."""
        self.follow = False
        log = self.query_one("#log", LogView)
        log.auto_scroll = False
        log.scroll_home(animate=False, immediate=True)
        self.query_one("#loginfo", Static).update(self._log_label(), layout=False)

    def action_bottom(self) -> None:
        """G / end: the last line, and following again."""
        self.follow = True
        log = self.query_one("#log", LogView)
        log.auto_scroll = True
        log.scroll_end(animate=False, immediate=True)
        self.query_one("#loginfo", Static).update(self._log_label(), layout=False)

    def action_save_log(self) -> None:
        """ctrl+s: ask where (a default in the current folder), then write
        the attempt's log as the engine holds it."""
        attempt = self.following_attempt or int(self.job.get("attempt") or 1)
        default = detail.default_log_path(self.job, attempt, os.getcwd())

        def chosen(path: str | None) -> None:
            if path:
                self.save_log(path, attempt)

        self.app.push_screen(SavePathScreen(self.job_id, default), chosen)

    @work(thread=True, group="save-log")
    def save_log(self, path: str, attempt: int) -> None:
        """The attempt's bytes from the engine, through the app's bridge: its
        whole log once the attempt has ended; while it runs, what the screen
        has received (the newest LOG_LINES lines) unless the bridge can give
        the bytes so far (`log_bytes`)."""
        bridge = getattr(self.app, "bridge", None)
        ended = self.job.get("state") in ("succeeded", "failed", "cancelled", "lost")
        data: bytes | None = None
        source = "the engine's copy"
        try:
            fetch = getattr(bridge, "log_bytes", None)
            if fetch is not None:
                data = bytes(fetch(self.job_id, attempt))
            elif ended and bridge is not None:
                stream = bridge.follow_logs(self.job_id, attempt, tail=10**9)
                raw = getattr(stream, "raw", None)
                data = b"".join(raw()) if raw is not None else \
                    "".join(f"{line}\n" for line in stream).encode()
        except EngineError as err:
            self.app.call_from_thread(self.notify, f"save log: {err}", severity="error",
                                      timeout=8)
            return
        if data is None:
            data = "".join(f"{line}\n" for line in list(self.lines)).encode()
            source = f"the {len(self.lines):,} lines received so far"
        try:
            with open(path, "wb") as out:
                out.write(data)
        except OSError as err:
            self.app.call_from_thread(self.notify, f"save log: {path}: {err.strerror or err}",
                                      severity="error", timeout=8)
            return
        self.app.call_from_thread(self.notify, f"job {self.job_id} attempt {attempt}: "
                                  f"{len(data):,} bytes ({source}) saved to {path}")

    def action_search(self) -> None:
        self.query_one("#tabs", TabbedContent).active = "logs"
        box = self.query_one("#logsearch", Input)
        box.add_class("shown")
        box.focus()

    @on(Input.Changed, "#logsearch")
    def _search_changed(self, event: Input.Changed) -> None:
        self.needle = event.value
        self.current = None
        self._redraw_log()

    @on(Input.Submitted, "#logsearch")
    def _search_done(self, _event: Input.Submitted) -> None:
        """enter: to the first match from the view's top (wrapping), as less."""
        log = self.query_one("#log", LogView)
        log.focus()
        if self.found:
            self.current = detail.next_match(self.found, None, 1,
                                             start=self._line_at(int(log.scroll_y)))
            self._jump(None)

    def action_rank(self, step: int) -> None:
        choices: list[int | None] = [None, *self.ranks]
        self.rank = choices[(choices.index(self.rank) + step) % len(choices)]
        self.current = None
        self._redraw_log()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        log = self.query_one("#log", LogView)
        log.auto_scroll = self.follow
        if self.follow:
            log.scroll_end(animate=False)
        self.query_one("#loginfo", Static).update(self._log_label(), layout=False)

    def action_tab(self, name: str) -> None:
        """To tab `name`, the focus with it: left in the log (or its search
        box), the focus would bring the Logs tab back."""
        tabs = self.query_one("#tabs", TabbedContent)
        if name == "logs":
            tabs.active = name
            self.query_one("#log", LogView).focus()
        else:
            tabs.query_one(Tabs).focus()
            tabs.active = name

    def action_close(self) -> None:
        box = self.query_one("#logsearch", Input)
        if box.value or self.needle:  # esc ends the search first (its box, highlights)
            box.value = ""
            self.needle, self.current, self.only = "", None, False
            box.remove_class("shown")
            self.query_one("#log", LogView).focus()
            self._redraw_log()
            return
        self.dismiss(None)

    # ------------------------------------------------------------ processes
    def _want_processes(self) -> None:
        if self.query_one("#tabs", TabbedContent).active == "processes" and self.is_current:
            self.post_message(self.ProcessesWanted(self))

    @on(TabbedContent.TabActivated, "#tabs")
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "processes":
            self.post_message(self.ProcessesWanted(self))

    def set_processes(self, procs: list[dict[str, Any]] | None, note: str = "") -> None:
        """Every rank's process (None with `note` when the engine said why
        not): a row each, ranks in order, and a line of totals."""
        info = self.query_one("#procsinfo", Static)
        table = self.query_one("#procs", DataTable)
        if procs is None:
            info.update(Text(note))
            return
        rows = process_rows(procs)
        table.clear()
        table.add_rows([tuple(Text(c, justify="right" if i in (1, 4, 5, 6) else "left")
                              for i, c in enumerate(row)) for row in rows])
        nodes = len({p.get("node") for p in procs})
        info.update(Text(f"{len(procs)} process(es) on {nodes} node(s), every "
                         f"{PROCESSES_S:.0f} s" if procs else
                         "no process: the job runs nothing now (waiting or ended)"))


#: The Processes tab's columns; its rows come from `process_rows`.
PROCESS_COLUMNS = ("rank", "pid", "node", "name", "cpu %", "rss", "gpu mem", "state")
PROCESSES_S = 2.0  # the Processes tab asks again this often while it is shown


def _mb(value: Any) -> str:
    if value is None:
        return "-"
    mb = float(value)
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


def process_rows(procs: Iterable[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """A row per process of GET /v1/jobs/ID/processes, by rank (the
    launcher, without a rank, first), then node and pid."""
    def order(p: Mapping[str, Any]) -> tuple[int, str, int]:
        rank = p.get("rank")
        return (-1 if rank is None else int(rank), str(p.get("node")), int(p.get("pid") or 0))

    rows: list[tuple[str, ...]] = []
    for p in sorted(procs, key=order):
        cpu = p.get("cpu_percent")
        rows.append(("-" if p.get("rank") is None else str(p["rank"]), str(p.get("pid")),
                     str(p.get("node")), str(p.get("name") or ""),
                     "-" if cpu is None else f"{float(cpu):.0f}", _mb(p.get("rss_mb")),
                     _mb(p.get("gpu_memory_mb")), str(p.get("state") or "")))
    return rows
