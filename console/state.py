"""What the screen knows, kept as plain data and updated by the engine's
events. Pure: no I/O, no screen library, so it is tested on its own.

Events (from `GET /v1/events`):
    {"type": "job", "job": {...job view...}}
    {"type": "node", "node": NAME, "up": bool, "state": WORD?, "error": str | None}
    {"type": "nodes-checked", "nodes": [NAME, ...]}
    {"type": "telemetry", "node": NAME, "gpus": [...], "cpu_percent": ...}
    {"type": "metric", "job": ID, "attempt": N, "step": S, "values": {...}}

A job's view carries its current attempt's `progress` (step, total, loss,
tokens/s, time) and `started_at`/`ended_at`: `job_progress` reads the STEP
and LOSS of any job from it, and from the job's series when that is newer,
so every row is right without its metrics fetched. A prepare job's step
counts documents read (its metrics carry documents_per_s, removed): its
`progress_line` says so in words. `load_metrics` merges a
fetched history into the series that live points may have started (no gap,
no duplicate step). `stale_since` is when the engine was lost (None while
connected).

A node's view (`GET /v1/nodes`) says more than its events: its state in one
word and why, round trip, drain reason, last check. So a "node" or
"nodes-checked" event patches what it carries (the screen answers at once)
and sets `nodes_stale`: the app then fetches the nodes again and `load_nodes`
replaces them.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine import guard

ACTIVE_STATES = ("held", "queued", "starting", "running")
HOLDING = ("starting", "running")  # a job in these states holds GPUs and slots
SERIES_POINTS = 2000      # loss points kept per job
HISTORY_POINTS = 60       # telemetry samples kept per GPU and node CPU (a minute at 1 Hz)


CHARTED = ("loss", "eval_loss", "lr", "tokens_per_s")  # metrics kept as series


def _points() -> deque[tuple[int, float]]:
    return deque(maxlen=SERIES_POINTS)


@dataclass
class Series:
    """One job's metric history (its newest attempt): the last value of
    every metric, and the (step, value) points of the charted ones."""

    attempt: int = 0
    points: dict[str, deque[tuple[int, float]]] = field(
        default_factory=lambda: {name: _points() for name in CHARTED})
    last: dict[str, float] = field(default_factory=dict)
    step: int | None = None
    version: int = 0  # bumped on every point, so views redraw only on change
    times: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def loss(self) -> deque[tuple[int, float]]:
        return self.points["loss"]

    @property
    def eval_loss(self) -> deque[tuple[int, float]]:
        return self.points["eval_loss"]


@dataclass
class ConsoleState:
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    series: dict[int, Series] = field(default_factory=dict)
    gpu_history: dict[tuple[str, int], deque[float]] = field(default_factory=dict)
    #: each node's CPU utilisation, as gpu_history (a CPU-only node's row shows it)
    cpu_history: dict[str, deque[float]] = field(default_factory=dict)
    connected: bool = False
    error: str | None = None
    nodes_stale: bool = False  # a node changed: fetch the nodes' views again
    allocations_changed: bool = False  # a job started or ended: its GPUs changed owner
    stale_since: float | None = None  # the engine was lost then; None while connected
    _counts: dict[str, int] = field(default_factory=dict)
    _newest_first: list[int] | None = None  # job ids, sorted once per new id

    # ---------------------------------------------------------- loading
    def load(self, nodes: Iterable[Mapping[str, Any]], jobs: Iterable[Mapping[str, Any]]
             ) -> None:
        """Replace everything with a fresh snapshot (after a (re)connect)."""
        self.nodes = {str(n["name"]): dict(n) for n in nodes}
        self.jobs = {int(j["id"]): dict(j) for j in jobs}
        self._counts = {}
        for job in self.jobs.values():
            self._counts[job["state"]] = self._counts.get(job["state"], 0) + 1
        self._newest_first = None
        self.connected, self.error = True, None
        self.stale_since = None
        self.nodes_stale = False

    def load_nodes(self, nodes: Iterable[Mapping[str, Any]]) -> None:
        """Replace the nodes with fresh views (after a "node" event): the GPU
        and CPU history stays, what a node's view says replaces what events patched."""
        self.nodes = {str(n["name"]): dict(n) for n in nodes}

    def disconnected(self, reason: str, now: float) -> None:
        """The engine is gone: what is shown is stale from `now` on."""
        if self.connected or self.stale_since is None:
            self.stale_since = now
        self.connected, self.error = False, reason

    def load_metrics(self, job_id: int, points: Iterable[Mapping[str, Any]]) -> None:
        """A job's metric points as the API lists them (one per name), merged
        with the points the series already has (live ones that arrived
        before or while the history was fetched): each step once, in order,
        of the newest attempt of either."""
        by_step: dict[tuple[int, int], dict[str, float]] = {}
        times: dict[tuple[int, int], float] = {}
        for p in points:
            key = (int(p["attempt"]), int(p["step"]))
            by_step.setdefault(key, {})[p["name"]] = p["value"]
            if isinstance(p.get("time"), int | float):
                times[key] = float(p["time"])
        old = self.series.pop(job_id, None)
        if old is not None:  # live points: their values win (they are as new or newer)
            live: dict[int, dict[str, float]] = {}
            for name, pts in old.points.items():
                for step, value in pts:
                    live.setdefault(step, {})[name] = value
            if old.step is not None:  # the newest values of the metrics not charted
                live.setdefault(old.step, {}).update(
                    {k: v for k, v in old.last.items() if k not in CHARTED})
            for step, values in live.items():
                by_step.setdefault((old.attempt, step), {}).update(values)
            for step, when in old.times:
                times.setdefault((old.attempt, step), when)
        for key, values in sorted(by_step.items()):
            self._metric(job_id, key[0], key[1], values, times.get(key))
        if old is not None and job_id in self.series:
            self.series[job_id].version = old.version + 1 + len(by_step)

    # ---------------------------------------------------------- events
    def apply(self, events: Iterable[Mapping[str, Any]]) -> set[str]:
        """Apply events in order; the parts of the screen they changed
        ("jobs", "nodes", "metrics")."""
        changed: set[str] = set()
        for event in events:
            kind = event.get("type")
            if kind == "job" and isinstance(event.get("job"), Mapping):
                job = dict(event["job"])
                old = self.jobs.get(int(job["id"]))
                if old is None:
                    self._newest_first = None
                else:
                    self._counts[old["state"]] -= 1
                was = old["state"] if old is not None else None
                if (was in HOLDING) != (job["state"] in HOLDING):
                    self.allocations_changed = True
                self._counts[job["state"]] = self._counts.get(job["state"], 0) + 1
                self.jobs[int(job["id"])] = job
                changed.add("jobs")
            elif kind == "node":
                node = self.nodes.setdefault(str(event["node"]), {"name": event["node"],
                                                                  "gpus": [], "jobs": []})
                node["up"] = bool(event.get("up"))
                if "error" in event or node["up"]:
                    node["error"] = event.get("error")
                if "state" in event:
                    node["state"] = event["state"]
                else:  # until the refetch: the word that `up` alone gives
                    node.pop("state", None)
                    node.pop("state_reason", None)
                self.nodes_stale = True
                changed.add("nodes")
            elif kind == "nodes-checked":
                self.nodes_stale = True
            elif kind == "telemetry":
                self._telemetry(event)
                changed.add("nodes")
            elif kind == "metric":
                when = event.get("time")
                self._metric(int(event["job"]), int(event.get("attempt", 1)),
                             int(event["step"]), event.get("values") or {},
                             float(when) if isinstance(when, int | float) else None)
                changed.add("metrics")
        return changed

    def _telemetry(self, event: Mapping[str, Any]) -> None:
        name = str(event.get("node"))
        node = self.nodes.setdefault(name, {"name": name, "gpus": [], "jobs": [], "up": True})
        for key in ("cpu_percent", "memory_percent", "load", "rtt_ms"):
            if key in event:
                node[key] = event[key]
        cpu = event.get("cpu_percent")
        if isinstance(cpu, int | float):
            self.cpu_history.setdefault(name, deque(maxlen=HISTORY_POINTS)).append(float(cpu))
        known = {g.get("index"): g for g in node.get("gpus") or []}
        for tele in event.get("gpus") or []:
            index = tele.get("index")
            gpu = known.setdefault(index, {"index": index})
            gpu.update({k: v for k, v in tele.items() if k != "job"})
            util = tele.get("util_percent")
            if isinstance(util, int | float):
                history = self.gpu_history.setdefault((name, int(index)),
                                                      deque(maxlen=HISTORY_POINTS))
                history.append(float(util))
        node["gpus"] = [known[i] for i in sorted(known, key=lambda i: (i is None, i))]

    def _metric(self, job_id: int, attempt: int, step: int, values: Mapping[str, Any],
                when: float | None = None) -> None:
        series = self.series.get(job_id)
        if series is None or attempt > series.attempt:
            series = self.series[job_id] = Series(attempt=attempt)
        elif attempt < series.attempt:
            return  # an older attempt's late point
        for name, value in values.items():
            if isinstance(value, int | float) and math.isfinite(value):
                series.last[name] = float(value)
                if name in series.points:
                    points = series.points[name]
                    if points and points[-1][0] == step:  # a step again: its newest value
                        points[-1] = (step, float(value))
                    elif points and step < points[-1][0]:
                        # a live point the fetched history had already (queued while
                        # it was fetched): in its place, once
                        merged = dict(points)
                        merged[step] = float(value)
                        points.clear()
                        points.extend(sorted(merged.items())[-(points.maxlen or 0):])
                    else:
                        points.append((step, float(value)))
        if when is not None and (not series.times or series.times[-1][0] < step):
            series.times.append((step, when))
        series.step = step if series.step is None else max(series.step, step)
        series.version += 1

    def job_progress(self, job_id: int) -> Progress:
        """The job's current attempt's step, total, loss and tokens/s: from
        its series when that is of the current attempt and as far on, else
        from the job view's `progress` (which every job has, fetched or not)."""
        job = self.jobs.get(job_id) or {}
        view = job.get("progress") or {}
        attempt = int(job.get("attempt") or 0)
        out = Progress(step=view.get("step"), total=view.get("total"), loss=view.get("loss"),
                       tokens_per_s=view.get("tokens_per_s"))
        series = self.series.get(job_id)
        if series is not None and series.attempt >= attempt and series.step is not None and \
                (out.step is None or series.step >= out.step or series.attempt > attempt):
            total = series.last.get("total_steps")
            out = Progress(step=series.step,
                           total=int(total) if total is not None else out.total,
                           loss=series.last.get("loss", out.loss if series.step == out.step
                                                else None),
                           tokens_per_s=series.last.get("tokens_per_s", out.tokens_per_s),
                           rate=steps_per_s(series.times),
                           documents_per_s=series.last.get("documents_per_s"),
                           removed=_count(series.last.get("removed")))
        for name in ("loss", "tokens_per_s", "documents_per_s"):
            value = getattr(out, name)
            if value is not None and not (isinstance(value, int | float)
                                          and math.isfinite(value)):
                setattr(out, name, None)
        return out

    # ---------------------------------------------------------- views
    def visible_jobs(self, show_ended: bool, text: str = "", limit: int | None = None,
                     sort: str = "newest") -> tuple[list[dict[str, Any]], int]:
        """(jobs to list, at most `limit`; how many match): active ones (all
        with `show_ended`) whose id, name, kind, state or owner contain
        `text`, newest first or sorted by "state" (active first), "name",
        "owner" or "loss" (lowest first, jobs without a loss last)."""
        if self._newest_first is None:
            self._newest_first = sorted(self.jobs, reverse=True)
        needle = text.lower().strip()
        out: list[dict[str, Any]] = []
        for job_id in self._newest_first:
            job = self.jobs[job_id]
            if not show_ended and job["state"] not in ACTIVE_STATES:
                continue
            if needle:
                hay = " ".join(str(job.get(k, "")) for k in ("id", "name", "kind", "state",
                                                              "owner"))
                if needle not in hay.lower():
                    continue
            out.append(job)
        if sort == "state":
            order = {s: i for i, s in enumerate((*ACTIVE_STATES[::-1], "failed", "lost",
                                                 "cancelled", "succeeded"))}
            out.sort(key=lambda j: order.get(j["state"], len(order)))
        elif sort in ("name", "owner"):
            out.sort(key=lambda j: str(j.get(sort, "")).lower())
        elif sort == "loss":
            def loss(j: dict[str, Any]) -> tuple[bool, float]:
                value = self.job_progress(int(j["id"])).loss
                return (value is None, value if value is not None else 0.0)
            out.sort(key=loss)
        return (out if limit is None else out[:limit]), len(out)

    def counts(self) -> dict[str, int]:
        """Jobs per state (kept up to date as events arrive)."""
        return {k: v for k, v in self._counts.items() if v}


@dataclass
class Progress:
    """Where a job's current attempt is: step of total, loss, tokens/s and
    steps/s (from the times of its recent points; None when unknown)."""

    step: int | None = None
    total: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    rate: float | None = None
    #: A prepare job's (its step counts documents read): as it reports them.
    documents_per_s: float | None = None
    removed: int | None = None

    @property
    def is_prepare(self) -> bool:
        """Progress of a prepare job: its metrics carry documents_per_s."""
        return self.documents_per_s is not None

    def eta_s(self) -> float | None:
        """Seconds to the total at the current rate (None when unknown): a
        prepare job's documents/s as it reports it, else steps/s."""
        rate = self.documents_per_s or self.rate
        if not self.total or self.step is None or not rate:
            return None
        return max(0.0, (self.total - self.step) / rate)


def series_progress(series: Series) -> Progress:
    """Where a series' attempt is by its own points alone (the job detail's
    view of the job it follows)."""
    total = series.last.get("total_steps")
    documents_per_s = series.last.get("documents_per_s")
    return Progress(step=series.step, total=_count(total), loss=series.last.get("loss"),
                    tokens_per_s=series.last.get("tokens_per_s"), rate=steps_per_s(series.times),
                    documents_per_s=documents_per_s if _count(documents_per_s) is not None
                    else None,
                    removed=_count(series.last.get("removed")))


def _count(value: Any) -> int | None:
    """A metric's value as a count (metrics arrive as floats)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def steps_per_s(times: Iterable[tuple[int, float]], window: int = 32) -> float | None:
    """Steps per second over the newest `window` (step, time) points."""
    pts = list(times)[-window:]
    if len(pts) < 2:
        return None
    (s0, t0), (s1, t1) = pts[0], pts[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


def duration(seconds: float | None) -> str:
    """0:40, 12:05, 3h07 ("-" for None)."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}"


def guard_words(job: Mapping[str, Any], now: float) -> str | None:
    """What the loss guard and stall watch (engine.guard) say of the job's
    current attempt: "stalled 12m at step 800" while it is flagged (the time
    since its last step), else the guard restart that made it ("restart 1 of
    2 by loss guard: lr x0.5"), else None."""
    stalled = job.get("stalled")
    if isinstance(stalled, Mapping):
        since, step = stalled.get("since"), stalled.get("last_step")
        idle = now - since if isinstance(since, int | float) else 0.0
        where = f"at step {step}" if step is not None else "before its first step"
        return f"stalled {guard.duration_words(max(0.0, idle))} {where}"
    info = job.get("guard")
    restart = info.get("restart") if isinstance(info, Mapping) else None
    return str(restart) if restart else None


def run_time(job: Mapping[str, Any], now: float) -> float | None:
    """How long the current attempt has run: started_at to ended_at, or to
    `now` while it runs; None for a job that never started."""
    start = job.get("started_at")
    if not isinstance(start, int | float):
        return None
    end = job.get("ended_at")
    if not isinstance(end, int | float):
        end = now if job.get("state") in HOLDING else job.get("updated_at") or now
    return max(0.0, float(end) - float(start))


def rate_text(value: float | None) -> str:
    """1.2k, 850, 3.4M."""
    if value is None:
        return "-"
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def progress_line(p: Progress) -> str:
    """"120/200 1.2k tok/s ETA 0:40" (the parts known); a prepare job's in
    words, as `prepare_parts` joined by ", "."""
    if p.step is None:
        return ""
    if p.is_prepare:
        return ", ".join(prepare_parts(p))
    parts = [f"{p.step}/{p.total}" if p.total else f"step {p.step}"]
    if p.tokens_per_s is not None:
        parts.append(f"{rate_text(p.tokens_per_s)} tok/s")
    eta = p.eta_s()
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return " ".join(parts)


def prepare_parts(p: Progress) -> list[str]:
    """A prepare job's progress in words, the parts known: "12,400/50,000
    docs" (read of the estimated total), "830 docs/s", "1.2M tok/s",
    "1,200 removed", "ETA 0:56" (of the reading, while documents are left)."""
    if p.step is None:
        return []
    parts = [f"{p.step:,}/{p.total:,} docs" if p.total else f"{p.step:,} docs"]
    if p.documents_per_s is not None:
        parts.append(f"{p.documents_per_s:,.0f} docs/s")
    if p.tokens_per_s:
        parts.append(f"{rate_text(p.tokens_per_s)} tok/s")
    if p.removed is not None:
        parts.append(f"{p.removed:,} removed")
    eta = p.eta_s()
    if eta is not None and p.total and p.step < p.total:  # once all is read, dedup and
        parts.append(f"ETA {duration(eta)}")               # tokenizing go on: no ETA then
    return parts


def middle_cut(text: str, width: int) -> str:
    """`text` in `width` cells, cut in the middle with an ellipsis, so the
    start and the end stay ("pipeline-…/prune", "pipeline-…/pretrain")."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    if width == 1:
        return "…"
    tail = (width - 1) // 2
    last = text.rfind("/")
    if last > 0:  # the last part of a path whole when the start keeps a few cells
        tail = max(tail, min(len(text) - last, width - 1 - 4))
    head = width - 1 - tail
    return text[:head] + "…" + (text[-tail:] if tail else "")


def smoothed(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average, as TensorBoard's smoothing slider."""
    out: list[float] = []
    last: float | None = None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def bar(percent: float | None, width: int = 10) -> str:
    """A text bar for a utilisation percentage."""
    if percent is None:
        return "-".ljust(width)
    filled = max(0, min(width, round(percent / 100 * width)))
    return "█" * filled + "░" * (width - filled)


def spark(values: Iterable[float], width: int = 12) -> str:
    """A one-line sparkline of the newest `width` values (0..100)."""
    ticks = "▁▂▃▄▅▆▇█"
    vals = list(values)[-width:]
    return "".join(ticks[min(7, max(0, int(v / 100 * 7.999)))] for v in vals)


# ------------------------------------------------------------------ nodes
#: A node's state as the screen writes it: "up" plain, every other state in
#: capitals, so a node that takes no new work reads so without colour too.
NODE_STATES = ("up", "suspect", "down", "untrusted", "incompatible", "drained")
#: What in a node's reason says ssh refused its host key (engine.hostkeys'
#: messages), and that the key is another than the known one.
HOST_KEY_REFUSED = "host key"
HOST_KEY_CHANGED = "host key CHANGED"
#: How the engine's transport begins an error about a node's agent.
AGENT_ON = "agent on node"
#: The states of a node whose agent answers pings (its round trip is news).
ANSWERING = ("up", "suspect", "drained", "incompatible")


def node_state(node: Mapping[str, Any]) -> str:
    """The node's state in one word: the engine's, else what `up` gives."""
    state = node.get("state")
    if isinstance(state, str) and state:
        return state
    return "up" if node.get("up", True) else "down"


def state_word(state: str) -> str:
    return state if state == "up" else state.upper()


def node_reason(node: Mapping[str, Any]) -> str | None:
    """Why the node is not up, in words (None when up or unknown)."""
    reason = node.get("state_reason")
    if node_state(node) == "up":
        return None
    return str(reason) if reason else (str(node["error"]) if node.get("error") else None)


def rtt_text(node: Mapping[str, Any]) -> str:
    """The last ping's round trip ("3ms", "<1ms"); "" when none yet, or when
    the node does not answer pings now (a down node's last one says nothing
    of now)."""
    rtt = node.get("rtt_ms")
    if node_state(node) not in ANSWERING:
        return ""
    if not isinstance(rtt, int | float) or not math.isfinite(rtt):
        return ""
    return "<1ms" if rtt < 1 else f"{rtt:.0f}ms"


def check_verdict(check: Mapping[str, Any] | None,
                  clock_text: Callable[[float], str] | None = None) -> str:
    """The last `nodes check` in a few words: "check ok 12:03", "check: disk,
    clock FAIL", or "not checked". `clock_text(time)` writes the time
    (default: local HH:MM)."""
    if not check:
        return "not checked"
    failed = [str(c.get("check")) for c in check.get("checks") or [] if c.get("ok") is False]
    if failed:
        return f"check: {', '.join(failed)} FAIL"
    when = check.get("time")
    if not isinstance(when, int | float):
        return "check ok"
    write = clock_text or (lambda t: time.strftime("%H:%M", time.localtime(t)))
    return f"check ok {write(when)}"


def host_key_refused(node: Mapping[str, Any]) -> bool:
    """ssh refused the node's host key: it is untrusted, or down with a
    host-key error (what `nodes trust` fixes)."""
    state = node_state(node)
    reason = node_reason(node) or ""
    return state == "untrusted" or (state == "down" and HOST_KEY_REFUSED in reason)


def host_key_changed(node: Mapping[str, Any]) -> bool:
    """The node offers another key than the known one (a reinstalled node,
    or someone in between): trusting it replaces the known key."""
    return HOST_KEY_CHANGED in (node_reason(node) or "")


def node_line(node: Mapping[str, Any], clock_text: Callable[[float], str] | None = None
              ) -> str:
    """The selected node in one line, the short facts first so that a narrow
    screen cuts only the reason: its state, last check, round trip, GPUs and
    jobs, then why it is not up ("node gpu1: DRAINED | check: disk FAIL | rtt
    3ms | 2 GPUs | jobs 3 | drained: disk swap")."""
    name = str(node.get("name", "?"))
    parts = [f"node {name}: {state_word(node_state(node))}",
             check_verdict(node.get("check"), clock_text)]
    rtt = rtt_text(node)
    if rtt:
        parts.append(f"rtt {rtt}")
    gpus = len(node.get("gpus") or [])
    parts.append(f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU")
    jobs = node.get("jobs") or []
    if jobs:
        parts.append("jobs " + ",".join(str(j) for j in jobs))
    reason = node_reason(node)
    if reason:  # the line names the node already: not again inside the engine's reason
        parts.append(reason.replace(f"{AGENT_ON} {name}: ", "", 1))
    return " | ".join(parts)
