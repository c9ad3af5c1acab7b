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
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
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
)

from console import detail
from console.chart import Line, MetricChart
from console.state import Series, smoothed
from engine import pipelines, profiles
from engine.errors import UserError
from engine.model import LIMITS
from engine.paths import outputs_dir

LOG_LINES = 20_000  # kept per open job screen, searched in place
DRAIN_LINES = 2_000  # shown per drain (4 a second); a faster log is skipped through
#: The engine's limit on a drain reason (engine.runtime.MAX_DRAIN_REASON; the
#: runtime is not imported by the screen): the box takes no more.
MAX_DRAIN_REASON = 200


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


class ReasonScreen(ModalScreen["str | None"]):
    """Why a node is drained (shown with its state; may be empty), checked
    as the engine will check it before anything is sent."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Cancel")]

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

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def action_close(self) -> None:
        self.dismiss(None)

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


class PriorityScreen(ModalScreen["int | None"]):
    """A new priority for a waiting job, checked before it is sent."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Cancel")]

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

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def action_close(self) -> None:
        self.dismiss(None)

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


class SubmitScreen(ModalScreen["pipelines.Submission | None"]):
    """Pick a profile, give overrides, and see validation errors here,
    before anything is queued."""

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
            yield Input(placeholder="profile name (right arrow completes)", id="profile",
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
                                    pipelines.make_stamp(time.time(), os.getpid()),
                                    self.find_output)
        except ValueError as exc:  # shlex: an unclosed quote
            error.update(f"overrides: {exc}")
            return
        except UserError as exc:
            error.update(str(exc))
            return
        self.dismiss(sub)


class JobScreen(Screen[None]):
    """One job: its logs (followed, searched, one rank or all), charts of
    loss, learning rate and throughput, attempts and events, the profile it
    came from, its results table, and its processes (every rank's, asked
    of the app with `ProcessesWanted` every PROCESSES_S while the tab is
    shown)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back"),
        Binding("slash", "search", "Search logs"),
        Binding("right_square_bracket", "rank(1)", "Next rank"),
        Binding("left_square_bracket", "rank(-1)", "Prev rank"),
        Binding("f", "toggle_follow", "Follow"),
        Binding("1,l", "tab('logs')", "Logs", show=False),
        Binding("2", "tab('charts')", "Charts", show=False),
        Binding("3", "tab('history')", "History", show=False),
        Binding("4", "tab('profile')", "Profile", show=False),
        Binding("5", "tab('results')", "Results", show=False),
        Binding("6", "tab('processes')", "Processes", show=False),
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
        self.needle = ""
        self.follow = True
        self.inbox: deque[str] = deque()  # lines from the follower thread
        self.following_attempt = 0
        self._log_stream: Any = None
        self._log_lock = threading.Lock()
        self._gone = False

    def compose(self) -> ComposeResult:
        yield Static(self._title(), id="jobtitle")
        with TabbedContent(initial=self.initial_tab, id="tabs"):
            with TabPane("Logs", id="logs"):
                yield Input(placeholder="search the log (enter: done, esc: clear)",
                            id="logsearch")
                yield Static(self._log_label(), id="loginfo")
                yield RichLog(id="log", max_lines=LOG_LINES, wrap=False, markup=False)
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
            with TabPane("Results", id="results"):
                yield Static("", id="resultsinfo")
                yield DataTable(id="resultstable", cursor_type="none", zebra_stripes=True)
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
        return (f"job {j['id']}  {j.get('name')}  [{j.get('kind')}]  {j.get('state')}  "
                f"attempt {j.get('attempt')}  priority {j.get('priority', 0)}{reason}")

    def set_job(self, job: Mapping[str, Any]) -> None:
        """A newer view of the job (from the event stream or `show`)."""
        self.job.update(job)
        self.query_one("#jobtitle", Static).update(Text(self._title()))
        if "history" in job:
            self.query_one("#spec", Static).update(Text(detail.describe(self.job)))
            self._fill(self.query_one("#attempts", DataTable), detail.attempt_rows(self.job))
            self._fill(self.query_one("#events", DataTable), detail.history_rows(self.job))

    def set_results(self, data: dict[str, Any] | None, note: str) -> None:
        self.query_one("#resultsinfo", Static).update(Text(note))
        table = self.query_one("#resultstable", DataTable)
        table.clear(columns=True)
        if data is not None:
            headers, rows = detail.results_table(data)
            table.add_columns(*headers)
            table.add_rows(rows)

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
            self.add_lines(lines)

    def add_lines(self, lines: Iterable[str]) -> None:
        fresh = list(lines)
        self.lines.extend(fresh)
        ranks = detail.ranks_in(fresh)
        if any(r not in self.ranks for r in ranks):
            self.ranks = sorted({*self.ranks, *ranks})
            self.query_one("#loginfo", Static).update(self._log_label())
        if self.follow:
            self._write(detail.select_lines(fresh, self.rank, self.needle))

    def set_series(self, series: Series | None) -> None:
        charts = {c.id: c for c in self.query(MetricChart)}
        if series is None:
            for chart in charts.values():
                chart.show([], key=0)
            return
        loss = list(series.points["loss"])
        smooth = list(zip([s for s, _ in loss], smoothed([v for _, v in loss]), strict=True))
        charts["chart-loss"].show(
            [Line("loss", loss), Line("smoothed", smooth),
             Line("held-out", series.points["eval_loss"], scatter=True)], key=series.version)
        charts["chart-lr"].show([Line("lr", series.points["lr"])], key=series.version)
        charts["chart-tps"].show([Line("tokens/s", series.points["tokens_per_s"])],
                                 key=series.version)

    # ------------------------------------------------------------ logs view
    def _log_label(self) -> str:
        ranks = "all ranks" if self.rank is None else f"rank {self.rank}"
        known = f" (ranks {', '.join(map(str, self.ranks))}; [ ] to switch)" if self.ranks else ""
        search = f"  search {self.needle!r}" if self.needle else ""
        follow = "following" if self.follow else "paused (f to follow)"
        return f"{ranks}{known}{search}  {follow}"

    def _write(self, lines: Iterable[str]) -> None:
        log = self.query_one("#log", RichLog)
        for line in lines:
            text = Text(line)
            if self.needle:
                text.highlight_words([self.needle], "reverse", case_sensitive=False)
            log.write(text)

    def _redraw_log(self) -> None:
        self.query_one("#log", RichLog).clear()
        self._write(detail.select_lines(self.lines, self.rank, self.needle))
        self.query_one("#loginfo", Static).update(self._log_label())

    def action_search(self) -> None:
        self.query_one("#tabs", TabbedContent).active = "logs"
        box = self.query_one("#logsearch", Input)
        box.add_class("shown")
        box.focus()

    @on(Input.Changed, "#logsearch")
    def _search_changed(self, event: Input.Changed) -> None:
        self.needle = event.value
        self._redraw_log()

    @on(Input.Submitted, "#logsearch")
    def _search_done(self, _event: Input.Submitted) -> None:
        self.query_one("#log", RichLog).focus()

    def action_rank(self, step: int) -> None:
        choices: list[int | None] = [None, *self.ranks]
        self.rank = choices[(choices.index(self.rank) + step) % len(choices)]
        self._redraw_log()

    def action_toggle_follow(self) -> None:
        self.follow = not self.follow
        self.query_one("#log", RichLog).auto_scroll = self.follow
        if self.follow:
            self._redraw_log()
        else:
            self.query_one("#loginfo", Static).update(self._log_label())

    def action_tab(self, name: str) -> None:
        self.query_one("#tabs", TabbedContent).active = name

    def action_close(self) -> None:
        box = self.query_one("#logsearch", Input)
        if box.has_focus and box.value:
            box.value = ""
            self.query_one("#log", RichLog).focus()
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
