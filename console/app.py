"""The llmconsole screen: every GPU of every node, the jobs, and the live
loss of the selected job, driven from the keyboard.

Widgets render `ConsoleState`; the `EngineBridge` feeds it (snapshot, then
the engine's pushed events, drained four times a second so bursts arrive
merged); actions run in thread workers and report the engine's answer,
refusals included, as notifications.

The GPU panel has one row per GPU (one for a node without), and its NODE
column says the node's state in words (up, SUSPECT, DOWN, UNTRUSTED,
INCOMPATIBLE, DRAINED) and its round trip; the line under the panel tells
the selected node's reason and last check. The panel has a cursor of its
own (tab moves between the panels): D drains the node under it, U undrains,
T trusts its host key, C checks every node.

Every number is the engine's: STEP and LOSS of each job from its view's
progress (or its series when further), RUN the current attempt's run time,
the GPUs' owners refetched whenever a job starts or ends, a job's metric
history fetched once it is selected and merged with live points. The jobs
table's columns follow the width (JOB_LAYOUTS); names are cut in the middle.
A held or queued job's reason, and a running one's rate and ETA, are on the
loss label; during an outage the tables are dimmed and say since when.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, ClassVar

from rich.text import Text
from textual import events, on, work
from textual.actions import SkipAction
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Footer, Header, Input, Static

from console import command_line, detail, keyboard, keymap, typeahead
from console import compare as compare_screen
from console.bridge import Down, EngineBridge, Snapshot
from console.chart import MetricChart, loss_lines
from console.command_line import CommandLine
from console.commands import Command
from console.help import HelpScreen, command_rows
from console.help import key_rows as help_rows
from console.screens import (
    CheckScreen,
    ConfirmScreen,
    JobScreen,
    PriorityScreen,
    ReasonScreen,
    SubmitScreen,
    check_summary,
)
from console.state import (
    ACTIVE_STATES,
    ConsoleState,
    bar,
    duration,
    guard_words,
    host_key_changed,
    host_key_refused,
    middle_cut,
    node_line,
    node_state,
    prepare_parts,
    progress_line,
    rtt_text,
    run_time,
    smoothed,
    spark,
    state_word,
)
from console.table import Cell, VirtualTable
from engine import pipelines
from engine.errors import EngineError, UserError

DRAIN_INTERVAL = 0.25
CURSOR_REST_S = 0.08  # the chart and the footer follow the cursor once it rests
#: The nodes' views are fetched again this often (and on every "node" event):
#: the engine pings each node every 5 s, and a new round trip, or a suspect
#: node's growing silence, comes with no event.
NODES_REFRESH_S = 5.0
GPU_COLUMNS = (("NODE", 13), ("GPU", 3), ("UTIL", 10), ("MEMORY", 13), ("TEMP", 4),
               ("JOB", 10), ("HISTORY", 12))
#: The jobs table's columns by width of the screen: (least width, columns,
#: the NAME column's widest). At 80 KIND and OWNER go (77 cells: fits 80 with
#: a scrollbar); from 160 names and WHERE widen. RUN is the current
#: attempt's run time, TRY its number, PRI the priority, WHERE its nodes:GPUs.
JOB_LAYOUTS: tuple[tuple[int, tuple[tuple[str, int], ...], int], ...] = (
    (240, (("ID", 5), ("NAME", 24), ("KIND", 8), ("OWNER", 8), ("STATE", 9), ("PRI", 4),
           ("TRY", 3), ("RES", 5), ("WHERE", 28), ("STEP", 11), ("LOSS", 7), ("RUN", 6)), 64),
    (160, (("ID", 5), ("NAME", 20), ("KIND", 8), ("OWNER", 8), ("STATE", 9), ("PRI", 4),
           ("TRY", 3), ("RES", 5), ("WHERE", 18), ("STEP", 11), ("LOSS", 7), ("RUN", 6)), 40),
    (100, (("ID", 5), ("NAME", 14), ("KIND", 8), ("OWNER", 6), ("STATE", 9), ("PRI", 3),
           ("TRY", 3), ("RES", 5), ("WHERE", 8), ("STEP", 9), ("LOSS", 7), ("RUN", 6)), 48),
    (0, (("ID", 5), ("NAME", 13), ("STATE", 9), ("PRI", 3), ("TRY", 3), ("RES", 5),
         ("WHERE", 8), ("STEP", 9), ("LOSS", 7), ("RUN", 6)), 48),
)
JOB_COLUMNS = JOB_LAYOUTS[-1][1]
SORTS = ("newest", "state", "name", "owner", "loss")
#: A job's state word. Under NO_COLOR Textual keeps only each colour's
#: brightness, so every style stays bright on the table's rows (red and
#: magenta text turn dark grey: those states are white on red instead).
STATE_STYLE = {"running": "green", "succeeded": "bold green", "failed": "bold white on red",
               "lost": "bold white on red", "cancelled": "bright_yellow", "queued": "sky_blue1",
               "held": "dim", "starting": "sky_blue1", "stalled": "bold black on yellow"}
#: A node's state word in the NODE column: colour and weight, and the word
#: itself (in capitals but for "up") so it reads under NO_COLOR too (bright,
#: as STATE_STYLE).
NODE_STYLE = {"up": "green", "suspect": "bold bright_yellow", "down": "bold white on red",
              "untrusted": "bold white on magenta", "incompatible": "bold white on red",
              "drained": "bold sky_blue1"}
NAME_MIN = 4  # cells of a node's name kept before its round trip is left out


def _progress(step: int | None, total: float | None, width: int = 9) -> str:
    """step/total, or a percentage when that does not fit the column."""
    if step is None:
        return "-"
    if not total:
        return str(step)
    text = f"{step}/{int(total)}"
    return text if len(text) <= width else f"{100 * step / total:.0f}%"


def _where(job: dict[str, Any]) -> str:
    """Where the current attempt runs, as `llmconsole jobs` says it
    ("gpu1:0,1 gpu2:0", "local"; "-" when nowhere)."""
    parts = []
    for p in job.get("placements") or []:
        gpus = ",".join(str(g) for g in p.get("gpus") or [])
        parts.append(f"{p['node']}:{gpus}" if gpus else str(p["node"]))
    return " ".join(parts) or "-"


def _resources(job: dict[str, Any]) -> str:
    r = job.get("resources") or {}
    gpus = r.get("gpus_per_node", 0)
    nodes = r.get("nodes", 1)
    return f"{nodes}x{gpus}g" if gpus else f"{nodes}x{r.get('cpus', 1)}c"


class LlmConsole(App[None]):
    TITLE = "llmconsole"
    CSS = """
    #banner { background: $error; color: $text; height: 1; display: none; }
    #banner.shown { display: block; }
    #gpus { height: 1fr; min-height: 5; }
    #nodeline { height: 1; background: $panel; color: $text-muted; }
    #jobs { height: 2fr; }
    #losspanel { height: 1fr; min-height: 5; max-height: 16; }
    #losslabel { width: 30; height: 1fr; }
    VirtualTable.stale { tint: $background 45%; }
    #loss { width: 1fr; height: 1fr; }
    Screen.-no-gpus #gpus, Screen.-no-gpus #nodeline, Screen.-jobs-only #gpus,
    Screen.-jobs-only #nodeline, Screen.-jobs-only #losspanel { display: none; }
    Screen.-no-gpus #jobs { height: 1fr; }
    Screen.-no-gpus #losspanel { height: 1fr; max-height: 100%; }
    #filter { display: none; }
    #filter.shown { display: block; }
    #status { height: 1; background: $panel; }
    ConfirmScreen, PriorityScreen, SubmitScreen, ReasonScreen, CheckScreen {
        align: center middle; }
    #checks { width: 110; max-width: 100%; height: auto; max-height: 100%;
              border: thick $accent; padding: 0 1; background: $surface; }
    #checktable { height: auto; max-height: 20; }
    #form { width: 90; max-width: 100%; height: auto; border: thick $accent; padding: 1 2;
            background: $surface; }
    .error { color: $error; height: auto; }
    #dialog { width: 64; max-width: 100%; height: auto; border: thick $warning; padding: 1 2;
              background: $surface; }
    #dialog Label { width: 1fr; }
    #jobtitle { height: auto; background: $panel; }
    #logsearch { display: none; }
    #logsearch.shown { display: block; }
    #loginfo { height: 1; color: $text-muted; }
    #tabs { height: 1fr; }
    #attempts { height: auto; max-height: 10; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", id="quit", tooltip="Leave the screen; jobs keep running"),
        Binding("s", "submit_job", "Submit", id="submit-job", priority=True,  # typeahead.py
                tooltip="Queue a job or pipeline from a profile, with overrides"),
        Binding("c,ctrl+d", "cancel_job", "Cancel", id="cancel-job",
                tooltip="Cancel the selected job (asks first)"),
        Binding("r", "retry_job", "Retry", id="retry-job",
                tooltip="Run the selected ended job again"),
        Binding("p", "change_priority", "Priority", id="change-priority",
                tooltip="Change the selected waiting job's priority"),
        Binding("d", "show_job", "Details", id="show-job",
                tooltip="The selected job's charts, logs, history, profile, results, processes"),
        Binding("l", "show_logs", "Logs", id="show-logs",
                tooltip="Follow the selected job's logs"),
        Binding("a", "toggle_ended", "All/active", id="toggle-ended",
                tooltip="Show or hide ended jobs"),
        Binding("z", "toggle_panels", "Panels", id="toggle-panels", show=False,
                tooltip="Panels shown: all, jobs and chart (no GPUs), jobs only"),
        Binding("o", "sort_jobs", "Sort", id="sort-jobs",
                tooltip="Order jobs by newest, state, name, owner or loss"),
        Binding("/", "filter", "Filter", id="filter",
                tooltip="Filter jobs by id, name, kind, state, owner"),
        Binding("colon", "command_line", "Command", id="command-line", show=False,
                tooltip=":jobs :nodes :job ID :logs ID :submit PROFILE k=v :cancel ID :q"),
        Binding("D", "drain_node", "Drain", id="drain-node",
                tooltip="No new work on the selected node: asks why, then confirms"),
        Binding("U", "undrain_node", "Undrain", id="undrain-node",
                tooltip="The selected node takes new work again"),
        Binding("C", "check_nodes", "Check", id="check-nodes",
                tooltip="nodes check: link, host key, software, GPUs, disk, clock, peers"),
        Binding("T", "trust_node", "Trust", id="trust-node",
                tooltip="Trust the selected node's host key (shows its fingerprint, asks)"),
        Binding("space", "mark_job", "Mark", id="mark-job", show=False,
                tooltip="Mark or unmark the selected job for compare (m)"),
        Binding("m", "compare_jobs", "Compare", id="compare-jobs", show=False,
                tooltip="The marked jobs' loss curves overlaid and their results table"),
        Binding("question_mark", "toggle_help", "Help", id="help",
                tooltip="Show the keys (? or esc closes)"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, bridge: EngineBridge | None = None,
                 clock: Any = time.time) -> None:
        super().__init__()
        self.bridge = bridge or EngineBridge()
        self.clock = clock
        self.state = ConsoleState()
        self.show_ended = True
        self.filter_text = ""
        self.selected: int | None = None
        self.shown_jobs = 0
        self.sort_by = SORTS[0]
        self._status_text = ""
        self._gpu_refs: dict[str, tuple[str, dict[str, Any] | None]] = {}
        self._metrics_timer: Timer | None = None
        self._cursor_timer: Timer | None = None
        self._job_keys_shown: tuple[str, ...] | None = None  # disabled job keys in the footer
        self._job_screen: JobScreen | None = None
        self._nodes_asked = 0  # refetches of the nodes asked for, and the newest shown
        self._nodes_shown = 0
        self._nodes_fetching = False  # one fetch at a time; `_nodes_again`: one more after
        self._nodes_again = False
        self._node_text = ""
        self._gpu_table: VirtualTable | None = None
        self._questions: set[threading.Event] = set()  # a worker waits on the user
        self._backfilled: set[int] = set()  # jobs whose metric history was fetched
        self._cancelling: set[int] = set()  # cancels asked: a toast when they end
        self._behind: set[str] = set()  # what changed while a full screen covered the dashboard
        self._job_layout = -1  # the JOB_LAYOUTS entry the jobs table has
        self._busy: set[str] = set()  # node actions under way ("check", "trust"): once each
        self.keymap: dict[str, str] = {}  # binding id -> keys, from the user's keys.toml
        self.marks = compare_screen.Marks()  # jobs marked (space) for compare (m)
        self.panels = 0  # index in PANELS (z)
        self._select_next: int | None = None  # a job submitted here: selected once listed

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="banner")
        yield VirtualTable(GPU_COLUMNS, self.gpu_cells, flex=0, flex_max=32, id="gpus")
        yield Static("", id="nodeline")
        yield Input(placeholder="filter jobs: name, kind, state, owner", id="filter")
        yield VirtualTable(JOB_COLUMNS, self.job_cells, flex=1, id="jobs")
        with Horizontal(id="losspanel"):
            yield Static("loss: select a job", id="losslabel")
            yield MetricChart("loss", id="loss")
        yield Static("connecting to the engine...", id="status")
        yield CommandLine(self.run_command, self.profile_names, lambda: self.state.jobs.keys(),
                          id="cmdline")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#jobs", VirtualTable).focus()
        self._fit_jobs()
        self.bridge.start()
        self.set_interval(DRAIN_INTERVAL, self.drain)
        self.set_interval(1.0, self._tick)
        self.set_interval(NODES_REFRESH_S, self._refresh_nodes)
        self.apply_keys_file()

    DASHBOARD_ONLY = frozenset({"toggle_ended", "filter", "clear_filter", "show_job",
                                "show_logs", "sort_jobs", "drain_node", "undrain_node",
                                "check_nodes", "trust_node", "command_line",
                                "mark_job", "compare_jobs", "toggle_panels"})

    def _allowed_on(self, action: str, screen: Screen[Any]) -> bool:
        """Dashboard actions are off (and out of the footer) on other screens."""
        return action not in self.DASHBOARD_ONLY or screen is self.screen_stack[0]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Off on other screens (False: out of the footer); None (shown
        disabled, pressing does nothing) for a job key that cannot apply to
        the selected job."""
        if not self._allowed_on(action, self.screen):
            return False
        return None if keyboard.disabled(action, self._selected_quiet()) else True

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        """The command palette (ctrl+p) offers every key's action, by name:
        those of the screen it was opened on (the palette is a screen too)."""
        yield from super().get_system_commands(screen)
        for binding in self.BINDINGS:
            assert isinstance(binding, Binding)
            if not (binding.show or binding.tooltip) or \
                    not self._allowed_on(binding.action, screen):
                continue
            key = self.get_key_display(binding.with_key(keyboard.first_key(binding, self.keymap)))
            yield SystemCommand(f"{binding.description} ({key})",
                                binding.tooltip,
                                lambda action=binding.action: self.run_action(action))

    def on_unmount(self) -> None:
        self.bridge.stop()
        for question in list(self._questions):  # a worker waiting on an answer: no
            question.set()
        if self._job_screen is not None:
            self._job_screen.stop_following(final=True)

    # ------------------------------------------------------------ updates
    def _dashboard_gone(self) -> bool:
        """The app is closing (its widgets are being removed): the timers'
        last ticks must not look for them."""
        return not self.screen_stack or not self.screen_stack[0].query("#jobs")

    def drain(self) -> None:
        if self._dashboard_gone():
            return
        if self._job_screen is not None:
            self._job_screen.take_lines()
        if self._behind and not self._dashboard_hidden():
            self._render_dashboard(set())  # back from a covering screen
        items = self.bridge.drain()
        if not items:
            return
        changed: set[str] = set()
        events: list[dict[str, Any]] = []
        for item in items:
            if isinstance(item, Snapshot):
                changed |= self.state.apply(events)
                events = []
                self.state.load(item.nodes, item.jobs)
                self._nodes_shown = self._nodes_asked  # fresher than any fetch under way
                changed |= {"jobs", "nodes", "status"}
                self._banner(None)
                self._mark_stale(False)
                self._backfilled.clear()  # points may have come and gone meanwhile
                if self.selected is not None:
                    self._want_metrics(self.selected, 0.0)
            elif isinstance(item, Down):
                self.state.disconnected(item.reason, self.clock())
                since = time.strftime("%H:%M:%S", time.localtime(self.state.stale_since))
                self._banner(f"engine unreachable: {item.reason} - retrying in "
                             f"{item.retry_in:.1f}s; data stale since {since}")
                self._mark_stale(True)
                changed.add("status")
            else:
                events.append(item)
        changed |= self.state.apply(events)
        if self.state.nodes_stale or self.state.allocations_changed:
            # a node changed, or a job started or ended: the GPUs' owners too
            self.state.nodes_stale = self.state.allocations_changed = False
            self.ask_nodes()
        self._tell_cancelled(events)
        if self._job_screen is not None:
            self._feed_job_screen(self._job_screen, events, changed)
        self._render_dashboard(changed)

    def _dashboard_hidden(self) -> bool:
        """A full screen (a job's detail, compare) covers the dashboard: its
        repaints would only be composited under it (a full repaint of the top
        screen 4 times a second: a third of a core with the Charts tab open)."""
        return len(self.screen_stack) > 1 and not isinstance(self.screen, ModalScreen)

    def _render_dashboard(self, changed: set[str]) -> None:
        """Draw what `changed` names, or keep it for when the dashboard shows
        again (the next drain after the covering screen closes)."""
        if self._dashboard_hidden():
            self._behind |= changed
            return
        changed |= self._behind
        self._behind = set()
        if "nodes" in changed:
            self.render_gpus()
        if "jobs" in changed or ("metrics" in changed and self.sort_by == "loss"):
            self.render_jobs()
        elif "metrics" in changed:
            self.render_jobs(order_changed=False)
        if self._select_next is not None and "jobs" in changed:
            self._select_submitted()
        if "metrics" in changed or "jobs" in changed:
            self.render_loss()
        if "jobs" in changed:
            self._refresh_job_keys()  # a job key may (no longer) apply
        self.render_status()

    def _tick(self) -> None:
        if self.state.connected and not self._dashboard_gone() and not self._dashboard_hidden():
            self.render_jobs(order_changed=False)  # elapsed times move

    def _mark_stale(self, stale: bool) -> None:
        """Dim the tables while what they show is the engine's last word."""
        for table in self.query(VirtualTable):
            table.set_class(stale, "stale")

    def _tell_cancelled(self, events: list[dict[str, Any]]) -> None:
        """A cancel asked here: say how the job ended when its event comes."""
        for event in events:
            job = event.get("job") if event.get("type") == "job" else None
            if isinstance(job, dict) and job.get("id") in self._cancelling \
                    and job.get("state") not in ACTIVE_STATES:
                self._cancelling.discard(int(job["id"]))
                self.notify(f"job {job['id']}: {job['state']}")

    def _banner(self, text: str | None) -> None:
        banner = self.query_one("#banner", Static)
        banner.update(text or "")
        banner.set_class(text is not None, "shown")

    def render_status(self) -> None:
        counts = self.state.counts()
        parts = [f"{counts.get(s, 0)} {s}" for s in ("running", "queued", "held", "failed")]
        gpus = sum(len(n.get("gpus") or []) for n in self.state.nodes.values())
        up = sum(1 for n in self.state.nodes.values() if node_state(n) == "up")
        engine = "engine: connected" if self.state.connected else "engine: DISCONNECTED"
        if not self.state.connected and self.state.stale_since is not None:
            engine += " (stale since " + time.strftime(
                "%H:%M:%S", time.localtime(self.state.stale_since)) + ")"
        view = "all jobs" if self.show_ended else "active jobs"
        text = f"{engine} | {up}/{len(self.state.nodes)} nodes up, {gpus} GPUs | " \
               + ", ".join(parts) + f" | {self.shown_jobs:,} {view}"
        if self.filter_text:
            text += f" matching {self.filter_text!r}"
        text += f", by {self.sort_by}"
        if text != self._status_text:  # an update re-lays out the screen: only on change
            self._status_text = text
            self.query_one("#status", Static).update(text, layout=False)

    def gpu_keys(self) -> list[str]:
        """One row per GPU of every node (a CPU row for a node without)."""
        keys: list[str] = []
        refs: dict[str, tuple[str, dict[str, Any] | None]] = {}
        for name, node in sorted(self.state.nodes.items()):
            gpus = node.get("gpus") or []
            if not gpus:
                keys.append(f"{name}\0cpu")
                refs[keys[-1]] = (name, None)
            for gpu in gpus:
                keys.append(f"{name}\0{gpu.get('index')}")
                refs[keys[-1]] = (name, gpu)
        self._gpu_refs = refs
        return keys

    def node_label(self, name: str, node: dict[str, Any]) -> Cell:
        """The NODE cell: the name, cut to leave room for the state word and
        the round trip ("gpu1 up 3ms", "gpu2 DOWN", "gpu3 DRAINED 4ms")."""
        width = self.gpu_table.column_width(0)
        state = node_state(node)
        word = f" {state_word(state)}"
        rtt = f" {rtt_text(node)}" if rtt_text(node) else ""
        if width - len(word) - len(rtt) < min(NAME_MIN, len(name)):
            rtt = ""
        room = max(1, width - len(word) - len(rtt))
        shown = name if len(name) <= room else name[:max(1, room - 1)] + "…"
        parts = [(shown, ""), (word, NODE_STYLE.get(state, "bold"))]
        if rtt:
            parts.append((rtt, "dim"))
        return parts

    def gpu_cells(self, key: str) -> list[Cell]:
        name, gpu = self._gpu_refs[key]
        node = self.state.nodes.get(name, {})
        label = self.node_label(name, node)
        if gpu is None:
            mem = node.get("memory_percent")
            return [label, "cpu", bar(node.get("cpu_percent")),
                    "-" if mem is None else f"{mem:.0f}% RAM", "-",
                    ",".join(str(j) for j in node.get("jobs") or []) or "-",
                    spark(self.state.cpu_history.get(name, ()))]
        used, total = gpu.get("memory_used_mb"), gpu.get("memory_total_mb")
        util = gpu.get("util_percent")
        job = gpu.get("job")
        idle = job is not None and util is not None and util < 5
        temp = gpu.get("temperature_c")
        return [label, str(gpu.get("index")), (bar(util), "yellow") if idle else bar(util),
                "-" if used is None or not total else f"{used / 1024:.1f}/{total / 1024:.0f} GiB",
                "-" if temp is None else f"{temp}C",
                "-" if job is None else ((f"{job} idle", "bold yellow") if idle else str(job)),
                spark(self.state.gpu_history.get((name, int(gpu.get("index") or 0)), ()))]

    @property
    def gpu_table(self) -> VirtualTable:
        if self._gpu_table is None:
            self._gpu_table = self.query_one("#gpus", VirtualTable)
        return self._gpu_table

    def render_gpus(self) -> None:
        self.gpu_table.set_keys(self.gpu_keys())
        self.render_node_line()

    def render_node_line(self) -> None:
        """The selected node's state and why, round trip, GPUs, jobs and last
        check, under the GPU panel (only repainted when its text changes)."""
        node = self.selected_node(quiet=True)
        text = "" if node is None else node_line(node)
        if text == self._node_text:
            return
        self._node_text = text
        line = Text(text)
        if node is not None:
            start = len(f"node {node.get('name')}: ")
            state = node_state(node)
            line.stylize(NODE_STYLE.get(state, "bold"), start, start + len(state))
        self.query_one("#nodeline", Static).update(line, layout=False)

    def selected_node(self, quiet: bool = False) -> dict[str, Any] | None:
        """The node of the GPU panel's cursor row (a warning when none)."""
        key = self.gpu_table.cursor_key
        ref = self._gpu_refs.get(key) if key is not None else None
        node = self.state.nodes.get(ref[0]) if ref is not None else None
        if node is None and not quiet:
            self.notify("no node selected (tab to the GPU panel, then up/down)",
                        severity="warning")
        return node

    def _refresh_nodes(self) -> None:
        if self.state.connected:
            self.ask_nodes()

    def ask_nodes(self) -> None:
        """Fetch the nodes' views again: one fetch at a time, and one more
        after it when asked meanwhile (so no change is missed)."""
        if self._nodes_fetching:
            self._nodes_again = True
            return
        self._nodes_fetching, self._nodes_again = True, False
        self._nodes_asked += 1
        self.load_nodes(self._nodes_asked)

    @work(thread=True, group="nodes")
    def load_nodes(self, asked: int) -> None:
        """The nodes' views (after a "node" or "nodes-checked" event, and
        every NODES_REFRESH_S): their reasons, round trips and checks, which
        events do not carry."""
        try:
            nodes: list[dict[str, Any]] | None = self.bridge.nodes()
        except EngineError:
            nodes = None  # the event stream's banner says the engine is gone
        self.call_from_thread(self._nodes_loaded, asked, nodes)

    def _nodes_loaded(self, asked: int, nodes: list[dict[str, Any]] | None) -> None:
        self._nodes_fetching = False
        if not self.query("#nodeline"):  # the screen is closing: nothing to show it on
            return
        if nodes is not None and asked > self._nodes_shown:  # else a snapshot came since
            self._nodes_shown = asked
            self.state.load_nodes(nodes)
            self.render_gpus()
            self.render_status()
        if self._nodes_again:
            self.ask_nodes()

    def job_cells(self, key: str) -> list[Cell]:
        job = self.state.jobs.get(int(key))
        if job is None:
            return [key]
        table = self.query_one("#jobs", VirtualTable)
        progress = self.state.job_progress(int(key))
        state = job["state"]
        out: list[Cell] = []
        for index, (label, _width) in enumerate(table.columns):
            width = table.column_width(index)
            if label == "ID":
                out.append(compare_screen.mark_cell(int(key), self.marks))
            elif label == "NAME":
                out.append(middle_cut(str(job["name"]), width))
            elif label == "KIND":
                out.append(str(job["kind"]))
            elif label == "OWNER":
                out.append(middle_cut(str(job.get("owner", "")), width))
            elif label == "STATE":
                if state == "running" and job.get("stalled"):  # the stall watch's flag
                    out.append(("stalled", STATE_STYLE["stalled"]))
                else:
                    out.append((state, STATE_STYLE.get(state, "")))
            elif label == "PRI":
                out.append(str(job.get("priority", 0)))
            elif label == "TRY":
                out.append(str(job.get("attempt") or 1))
            elif label == "RES":
                out.append(_resources(job))
            elif label == "WHERE":
                out.append(middle_cut(_where(job), width))
            elif label == "STEP":
                out.append(_progress(progress.step, progress.total, width))
            elif label == "LOSS":
                out.append("-" if progress.loss is None else f"{progress.loss:.4f}")
            elif label == "RUN":
                out.append(duration(run_time(job, self.clock())))
            else:
                out.append("")
        return out

    def on_resize(self) -> None:
        self._fit_jobs()

    def _fit_jobs(self) -> None:
        """The jobs table's columns for the screen's width (JOB_LAYOUTS)."""
        width = self.size.width
        index = next(i for i, (least, _c, _m) in enumerate(JOB_LAYOUTS) if width >= least)
        if index != self._job_layout:
            self._job_layout = index
            _least, columns, widest = JOB_LAYOUTS[index]
            self.query_one("#jobs", VirtualTable).set_columns(columns, flex=1, flex_max=widest)

    def render_jobs(self, order_changed: bool = True) -> None:
        """Re-list the jobs (after jobs came or went, or the filter or sort
        changed) or, with `order_changed` False, only repaint the rows shown."""
        table = self.query_one("#jobs", VirtualTable)
        if not order_changed:
            table.refresh()
            return
        shown, total = self.state.visible_jobs(self.show_ended, self.filter_text,
                                               sort=self.sort_by)
        self.shown_jobs = total
        table.set_keys([str(j["id"]) for j in shown])
        if self.selected is not None and table.move_to(str(self.selected)):
            return
        key = table.cursor_key
        self.selected = int(key) if key is not None else None
        if self.selected is not None:  # the cursor moved to another job (a filter)
            self._want_metrics(self.selected)

    def render_loss(self) -> None:
        static = self.query_one("#losslabel", Static)

        def label(text: str) -> None:  # a fixed-size box: no re-layout of the screen
            static.update(text, layout=False)

        chart = self.query_one("#loss", MetricChart)
        if self.selected is None:
            label("loss: select a job")
            chart.show([], key=None, title="loss")
            return
        series = self.state.series.get(self.selected)
        job = self.state.jobs.get(self.selected) or {}
        progress = self.state.job_progress(self.selected)
        if progress.is_prepare and (series is None or not series.loss):  # documents, no loss
            label(f"job {self.selected} " + "\n".join(prepare_parts(progress)))
            chart.show([], key=(self.selected, -1), title=f"job {self.selected}: loss")
            return
        if series is None or not series.loss:
            waits = job.get("state") in ("held", "queued")
            why = job.get("waiting") if waits else (
                guard_words(job, self.clock()) or job.get("reason"))
            age = job.get("submitted_at")  # a waiting job's AGE: how long it has waited
            since = f" {duration(self.clock() - age)}" if waits and \
                isinstance(age, int | float) else ""
            label(f"job {self.selected} {job.get('state', '')}{since}: {why}" if why else
                  f"job {self.selected}: no loss yet")
            chart.show([], key=(self.selected, -1), title=f"job {self.selected}: loss")
            return
        steps = [s for s, _v in series.loss]
        values = [v for _s, v in series.loss]
        smooth = smoothed(values)
        held = f"\nheld-out {series.eval_loss[-1][1]:.4f}" if series.eval_loss else ""
        # "job 3 step 120/200", then "1.2k tok/s ETA 0:40" (the rest of progress_line)
        first, _, rate = progress_line(self.state.job_progress(self.selected)).partition(" ")
        step = first if first != "step" else rate.partition(" ")[0]
        rate = rate if first != "step" else rate.partition(" ")[2]
        label(f"job {self.selected} step {step}" + (f"\n{rate}" if rate else "")
              + f"\nloss {values[-1]:.4f}\nsmoothed {smooth[-1]:.4f}{held}")
        chart.show(lambda: loss_lines(series.loss, list(zip(steps, smooth, strict=True)),
                                      series.eval_loss),
                   key=(self.selected, series.version), title=f"job {self.selected}: loss")

    # ------------------------------------------------------------ selection
    @on(VirtualTable.Highlighted, "#jobs")
    def _highlighted(self, event: VirtualTable.Highlighted) -> None:
        if isinstance(event, VirtualTable.Selected):
            return
        job_id = int(event.key)
        if job_id != self.selected:
            self.selected = job_id
            self._cursor_moved()
            self._want_metrics(job_id)

    def _refresh_job_keys(self) -> None:
        """Redraw the footer only when a job key's enabled state changes: the
        footer rebuilds every key (about 25 ms), which a cursor moving among
        jobs of one state must not pay."""
        job = self._selected_quiet()
        signature = tuple(sorted(a for a in keyboard.JOB_ACTIONS if keyboard.disabled(a, job)))
        if signature != self._job_keys_shown:
            self._job_keys_shown = signature
            self.refresh_bindings()

    def _cursor_moved(self) -> None:
        """The footer's keys and the loss chart follow the selected job once the
        cursor rests (CURSOR_REST_S), so a key held down repaints only the two
        rows it moves between: the footer and a chart cost tens of ms each."""
        if self._cursor_timer is not None:
            self._cursor_timer.stop()

        def rested() -> None:
            self._cursor_timer = None
            if not self._dashboard_gone():
                self._refresh_job_keys()
                self.render_loss()

        self._cursor_timer = self.set_timer(CURSOR_REST_S, rested)

    def _want_metrics(self, job_id: int, delay: float = 0.2) -> None:
        """Fetch the job's metric history once (merged with the live points
        that came first), `delay` s after the cursor rests on it, so holding
        a key does not ask for each row passed."""
        if job_id in self._backfilled:
            return
        if self._metrics_timer is not None:
            self._metrics_timer.stop()
        self._metrics_timer = self.set_timer(
            max(delay, 0.01),
            lambda: self.load_metrics(job_id) if self.selected == job_id else None)

    @on(VirtualTable.Selected, "#jobs")
    async def _selected_row(self, _event: VirtualTable.Selected) -> None:
        await self.action_show_job()

    @on(VirtualTable.Highlighted, "#gpus")
    def _gpu_highlighted(self, _event: VirtualTable.Highlighted) -> None:
        self.render_node_line()

    @work(thread=True, exclusive=True, group="metrics")
    def load_metrics(self, job_id: int) -> None:
        try:
            points = self.bridge.metrics(job_id)
        except EngineError:
            return
        self.call_from_thread(self._metrics_loaded, job_id, points)

    def _metrics_loaded(self, job_id: int, points: list[dict[str, Any]]) -> None:
        self._backfilled.add(job_id)
        if points:
            self.state.load_metrics(job_id, points)
            self.render_loss()
            self.render_jobs()
            if self._job_screen is not None and self._job_screen.job_id == job_id:
                self._job_screen.set_series(self.state.series.get(job_id))

    def select(self, job_id: int) -> None:
        """Put the jobs table's cursor on a job (and the loss chart on it)."""
        self.selected = job_id
        self.query_one("#jobs", VirtualTable).move_to(str(job_id))
        self.render_loss()
        self._refresh_job_keys()

    def _cursor_job(self) -> int | None:
        """The selected job, put right first when the jobs table's cursor has
        moved: the table tells the app by a message, which a key typed with
        the arrow overtakes (down and space sent at once unmarked the job
        marked before, as if the arrow had not been pressed)."""
        table = self.query_one("#jobs", VirtualTable)
        key = table.cursor_key
        if key is not None and key != str(self.selected) and \
                (self.selected is None or str(self.selected) in table.keys):
            self._highlighted(VirtualTable.Highlighted(table, key))
        return self.selected

    def _selected_job(self) -> dict[str, Any] | None:
        job_id = self._cursor_job()
        if job_id is None:
            self.notify("no job selected", severity="warning")
            return None
        return self.state.jobs.get(job_id)

    # ------------------------------------------------------------ actions
    async def action_submit_job(self) -> None:
        if isinstance(self.focused, Input):  # a priority key: in a field it is text
            raise SkipAction()

        def chosen(sub: pipelines.Submission | None) -> None:
            if sub is not None:
                self.send_submission(sub)

        find = lambda name: pipelines.newest_output(self.state.jobs.values(), name)  # noqa: E731
        # awaited: the app takes the keys typed with `s` once the field has the focus
        await self.push_screen(SubmitScreen(find), chosen)

    @work(thread=True, group="actions")
    def send_submission(self, sub: pipelines.Submission) -> None:
        try:
            jobs = self.bridge.submit_many(sub.items)
        except EngineError as err:
            self.call_from_thread(self.notify, f"submit: {err}", severity="error", timeout=8)
            return
        ids = ", ".join(str(j["id"]) for j in jobs)
        self.call_from_thread(self.notify, f"submitted job(s) {ids}")
        if jobs:
            self.call_from_thread(self._select_submitted, int(jobs[0]["id"]))

    def _select_submitted(self, job_id: int | None = None) -> None:
        """The cursor goes to a job submitted here (a pipeline's first) once
        the table lists it: it stayed on the job it was on, under the new
        one, so down or space after a submit acted on that older job."""
        if job_id is not None:
            self._select_next = job_id
        want = self._select_next
        if want is None or want not in self.state.jobs:
            return  # not listed yet: the drain that brings it calls again
        self._select_next = None
        if self.query_one("#jobs", VirtualTable).move_to(str(want)):  # else filtered out
            self.select(want)
            self._want_metrics(want)

    def action_cancel_job(self) -> None:
        job = self._selected_job()
        if job is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_action_in_thread("cancel", int(job["id"]))

        self.push_screen(ConfirmScreen(f"Cancel job {job['id']} ({job['name']})?"), answered)

    def action_retry_job(self) -> None:
        job = self._selected_job()
        if job is not None:
            self.run_action_in_thread("retry", int(job["id"]))

    def action_change_priority(self) -> None:
        job = self._selected_job()
        if job is None:
            return

        def chosen(priority: int | None) -> None:
            if priority is not None:
                self.run_action_in_thread("set_priority", int(job["id"]), priority)

        self.push_screen(PriorityScreen(job), chosen)

    @work(thread=True, group="actions")
    def run_action_in_thread(self, verb: str, job_id: int, *args: Any) -> None:
        if verb == "cancel":  # before the call: its end may come before the answer
            self._cancelling.add(job_id)
        try:
            job = getattr(self.bridge, verb)(job_id, *args)
        except EngineError as err:
            self._cancelling.discard(job_id)
            self.call_from_thread(self.notify, f"{verb.replace('_', ' ')} job {job_id}: {err}",
                                  severity="error", timeout=8)
            return
        note = f"priority {job['priority']}" if verb == "set_priority" else job["state"]
        if verb == "cancel" and job["state"] in ACTIVE_STATES:  # it stops: said when it has
            note = "cancel requested"
        elif verb == "cancel":
            self._cancelling.discard(job_id)
        self.call_from_thread(self.notify, f"job {job_id}: {note}")

    # ------------------------------------------------------------ node actions
    def action_drain_node(self) -> None:
        node = self.selected_node()
        if node is None:
            return
        name = str(node["name"])

        def reasoned(reason: str | None) -> None:
            if reason is None:
                return
            why = f" ({reason})" if reason else ""

            def answered(yes: bool | None) -> None:
                if yes:
                    self.send_node_action("drain", name, reason)

            self.push_screen(ConfirmScreen(f"Drain node {name}{why}? No new work starts "
                                           "there; its running jobs go on."), answered)

        self.push_screen(ReasonScreen(name), reasoned)

    def action_undrain_node(self) -> None:
        node = self.selected_node()
        if node is None:
            return
        if not node.get("drained") and node_state(node) != "drained":
            self.notify(f"node {node['name']} is not drained (D drains it)", severity="warning")
            return
        self.send_node_action("undrain", str(node["name"]))

    @work(thread=True, group="actions")
    def send_node_action(self, verb: str, name: str, *args: Any) -> None:
        try:
            view = getattr(self.bridge, f"{verb}_node")(name, *args)
        except EngineError as err:
            self.call_from_thread(self.notify, f"{verb} node {name}: {err}",
                                  severity="error", timeout=8)
            return
        self.call_from_thread(self.notify, f"node {name}: {state_word(node_state(view))}")

    def _start(self, job: str) -> bool:
        """Mark a node action as under way; False (and said) if it already is."""
        if job in self._busy:
            self.notify(f"a {job} is under way already; its answer comes", severity="warning")
            return False
        self._busy.add(job)
        return True

    def action_check_nodes(self) -> None:
        if self._start("check"):
            self.notify("checking every node...", timeout=3)
            self.check_nodes()

    @work(thread=True, group="check")
    def check_nodes(self) -> None:
        """`nodes check` on every node: the verdict as a toast, the table in
        a dialog (the nodes' views are fetched again on the engine's
        "nodes-checked" event)."""
        try:
            results = self.bridge.check_nodes()
        except EngineError as err:
            self.call_from_thread(self.notify, f"nodes check: {err}", severity="error",
                                  timeout=8)
            return
        finally:
            self._busy.discard("check")
        self.call_from_thread(self._checked, results)

    def _checked(self, results: list[dict[str, Any]]) -> None:
        passed = all(r.get("ok") for r in results)
        self.notify(check_summary(results), severity="information" if passed else "error",
                    timeout=8)
        self.push_screen(CheckScreen(results))

    def action_trust_node(self) -> None:
        node = self.selected_node()
        if node is None:
            return
        name, state = str(node["name"]), node_state(node)
        if not host_key_refused(node):
            self.notify(f"node {name} is {state_word(state)} and ssh does not refuse its host "
                        "key: T trusts the key of an UNTRUSTED node", severity="warning")
            return
        if self._start("trust"):
            self.trust_node(name, host_key_changed(node))

    @work(thread=True, group="trust")
    def trust_node(self, name: str, replace: bool) -> None:
        """Scan the node's host key, ask with its fingerprint shown, and write
        it to the cluster's known_hosts (engine.hostkeys, as `llmconsole
        nodes trust NODE [--replace]` does)."""
        def confirm(question: str) -> bool:
            changed = ("Its host key CHANGED since it was trusted (a reinstalled node, or "
                       "someone in between): yes replaces the known key, as --replace "
                       "does.\n" if replace else "")
            return self._ask_from_thread(f"Trust node {name}'s host key?\n{changed}"
                                         f"{question} y/N")

        try:
            done = self.bridge.trust_node(name, replace, confirm)
        except UserError as err:
            self.call_from_thread(self.notify, f"trust node {name}: {err}", severity="error",
                                  timeout=10)
            return
        finally:
            self._busy.discard("trust")
        key = f"{done.key.label} key {done.key.fingerprint}"
        note = (f"node {name}: {key} written to {done.file}; the engine connects at its "
                "next try" if done.added else
                f"node {name}: {key} is already trusted in {done.file}")
        self.call_from_thread(self.notify, note, timeout=10)

    def _ask_from_thread(self, question: str) -> bool:
        """Ask `question` in a yes/no dialog from a worker thread, and wait
        for the answer (no when the screen closes first)."""
        answered = threading.Event()
        answers: list[bool] = []

        def reply(yes: bool | None) -> None:
            answers.append(bool(yes))
            answered.set()

        self._questions.add(answered)
        try:
            self.call_from_thread(self.push_screen, ConfirmScreen(question), reply)
            answered.wait()
        finally:
            self._questions.discard(answered)
        return bool(answers and answers[0])

    def action_mark_job(self) -> None:
        job_id = self._cursor_job()
        if job_id is not None:
            self.marks.toggle(job_id)
            self.render_jobs(order_changed=False)

    def action_compare_jobs(self) -> None:
        compare_screen.open_compare(self, self.marks, self.selected)

    async def action_show_logs(self) -> None:
        await self.action_show_job("logs")

    async def action_show_job(self, tab: str = "charts") -> None:
        job = self._selected_job()
        if job is None:
            return
        screen = JobScreen(job, tab)

        def closed(_result: None) -> None:
            self._job_screen = None
            screen.stop_following(final=True)

        await self.push_screen(screen, closed)  # mounted: its widgets exist
        # fed by the drain only now: the drain is a timer's callback and runs
        # during the await, where the job's event (it ended) started a second
        # follower of the attempt (every line twice, flaky under load)
        self._job_screen = screen
        screen.set_series(self.state.series.get(screen.job_id))
        screen.following_attempt = int(job.get("attempt") or 1)  # before the worker runs
        self.follow_logs(screen, screen.following_attempt)
        self.load_detail(screen)

    def _feed_job_screen(self, screen: JobScreen, events: list[dict[str, Any]],
                         changed: set[str]) -> None:
        if "metrics" in changed:
            screen.set_series(self.state.series.get(screen.job_id))
        if any(e.get("type") == "job" and (e.get("job") or {}).get("id") == screen.job_id
               for e in events):
            job = self.state.jobs[screen.job_id]
            screen.set_job(job)
            self.load_detail(screen)
            attempt = int(job.get("attempt") or 1)
            if attempt > screen.following_attempt:  # retried: follow the new attempt
                screen.inbox.append(f"--- attempt {attempt} ---")
                screen.following_attempt = attempt  # now: the next event must not start another
                self.follow_logs(screen, attempt)

    @work(thread=True, group="logs")
    def follow_logs(self, screen: JobScreen, attempt: int) -> None:
        """The attempt's log, its last lines then new ones as they are written,
        into the screen's inbox (taken on the drain timer) until the attempt
        ends or the screen closes. The engine's follow stream carries both,
        so no line is missed or shown twice between them."""
        screen.stop_following()
        screen.following_attempt = attempt
        try:
            stream = self.bridge.follow_logs(screen.job_id, attempt)
        except EngineError as err:
            screen.inbox.append(f"(no logs: {err})")
            return
        if not screen.follow_with(stream):
            return
        try:
            for line in stream:
                screen.inbox.append(line)
        except EngineError as err:
            screen.inbox.append(f"(log stream ended: {err})")

    @work(thread=True, exclusive=True, group="detail")
    def load_detail(self, screen: JobScreen) -> None:
        """The job's attempts, history and spec, and its results.json."""
        try:
            job = self.bridge.job(screen.job_id)
        except EngineError as err:
            self.call_from_thread(self.notify, f"job {screen.job_id}: {err}", severity="error")
            return
        data, note = detail.load_results(job.get("output"), job.get("kind"))
        self.call_from_thread(screen.set_job, job)
        self.call_from_thread(screen.set_results, data, note)
        if screen.job_id not in self._backfilled:
            self.load_metrics(screen.job_id)

    def action_sort_jobs(self) -> None:
        self.sort_by = SORTS[(SORTS.index(self.sort_by) + 1) % len(SORTS)]
        self.render_jobs()
        self.render_status()

    #: What `z` cycles through: the dashboard screen's class for each (none: all).
    PANELS = (("all", ""), ("jobs and chart", "-no-gpus"), ("jobs only", "-jobs-only"))

    def action_toggle_panels(self) -> None:
        """All panels, then jobs and chart (the chart gets the GPU panel's
        rows), then jobs only; said in one toast line."""
        dashboard = self.screen_stack[0]
        self.panels = (self.panels + 1) % len(self.PANELS)
        for _name, cls in self.PANELS[1:]:
            dashboard.remove_class(cls)
        name, cls = self.PANELS[self.panels]
        if cls:
            dashboard.add_class(cls)
        self.notify(f"panels: {name} (z for the next)", timeout=2)

    def action_toggle_ended(self) -> None:
        self.show_ended = not self.show_ended
        self.render_jobs()
        self.render_status()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        self.filter_text = ""
        self.query_one("#jobs", VirtualTable).focus()
        self.render_jobs()
        self.render_status()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value
        self.render_jobs()
        self.render_status()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, _event: Input.Submitted) -> None:
        self.query_one("#jobs", VirtualTable).focus()

    # ------------------------------------------------------------ keyboard
    async def _on_key(self, event: events.Key) -> None:
        """A key typed ahead of a field that has just opened goes into it
        (console.typeahead), and not on to App._on_key's bindings (Textual
        calls each class's handler in turn unless the default is prevented)."""
        typeahead.hand_on(self.focused, event)

    def apply_keys_file(self) -> None:
        """The user's keys.toml (console.keymap): applied when it is good,
        else one line saying what to fix, and the defaults stay."""
        self.keymap, problem = keymap.load(keyboard.defaults(
            [*self.BINDINGS, *JobScreen.BINDINGS, *compare_screen.CompareScreen.BINDINGS]))
        if self.keymap:
            self.set_keymap(self.keymap)
        if problem:
            self.notify(problem, severity="error", timeout=20)

    def _selected_quiet(self) -> dict[str, Any] | None:
        return None if self.selected is None else self.state.jobs.get(self.selected)

    def profile_names(self) -> list[str]:
        return command_line.profile_names()

    def action_command_line(self) -> None:
        focused = self.focused

        def back() -> None:  # the focus returns where it was
            (focused if focused is not None and focused.is_attached
             else self.query_one("#jobs", VirtualTable)).focus()

        self.query_one("#cmdline", CommandLine).open(back)

    def run_command(self, command: Command) -> str | None:
        """Run a `:` command; None when done, else the one line of why not."""
        name, job_id = command.name, command.job_id
        if job_id is not None and job_id not in self.state.jobs:
            return f"no job {job_id} on the screen (a job the screen lists: tab completes)"
        if name in ("jobs", "nodes"):
            self.call_after_refresh(self.query_one(f"#{'gpus' if name == 'nodes' else name}",
                                                   VirtualTable).focus)
        elif name in ("job", "logs") and job_id is not None:
            self.select(job_id)
            self.call_after_refresh(self.run_action,
                                    "show_logs" if name == "logs" else "show_job")
        elif name == "cancel" and job_id is not None:
            if keyboard.disabled("cancel_job", self.state.jobs[job_id]):
                return f"job {job_id} has ended ({self.state.jobs[job_id]['state']})"
            self.select(job_id)
            self.call_after_refresh(self.action_cancel_job)
        elif name == "submit" and command.profile is not None:
            find = lambda n: pipelines.newest_output(self.state.jobs.values(), n)  # noqa: E731
            try:
                sub = command_line.prepare(command.profile, list(command.overrides), find)
            except UserError as exc:
                return str(exc)
            self.send_submission(sub)
        elif name == "help":
            self.call_after_refresh(self.action_toggle_help)
        elif name == "quit":
            self.exit()
        return None

    def action_toggle_help(self) -> None:
        """The app's keys, grouped, then the focused widget's (Textual's)."""
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
            return
        widget = [b.binding for b in self.screen.active_bindings.values() if b.node is not self]
        show = lambda key: self.get_key_display(Binding(key, ""))  # noqa: E731
        self.push_screen(HelpScreen([
            ("dashboard", help_rows(self.BINDINGS, self.keymap, show)),
            ("job detail (d, enter)", help_rows(JobScreen.BINDINGS, self.keymap, show, "job")),
            ("logs (l)", help_rows(JobScreen.BINDINGS, self.keymap, show, "logs")),
            ("compare (m)", help_rows(compare_screen.CompareScreen.BINDINGS, self.keymap, show)),
            ("command line (:)", command_rows()),
            (f"the focused widget ({type(self.focused).__name__}) and the screen",
             help_rows(widget, {}, show)),
        ]))

    @on(JobScreen.ProcessesWanted)
    def _processes_wanted(self, event: JobScreen.ProcessesWanted) -> None:
        self.load_processes(event.screen)

    @work(thread=True, exclusive=True, group="processes")
    def load_processes(self, screen: JobScreen) -> None:
        try:
            procs: list[dict[str, Any]] | None = self.bridge.processes(screen.job_id)
            note = ""
        except EngineError as err:
            procs, note = None, f"processes of job {screen.job_id}: {err}"
        self.call_from_thread(screen.set_processes, procs, note)


def run() -> int:
    """The bare `llmconsole` command: the screen until the user quits (jobs
    keep running)."""
    LlmConsole().run()
    return 0
