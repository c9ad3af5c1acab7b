"""What the screen knows, kept as plain data and updated by the engine's
events. Pure: no I/O, no screen library, so it is tested on its own.

Events (from `GET /v1/events`):
    {"type": "job", "job": {...job view...}}
    {"type": "node", "node": NAME, "up": bool, "state": WORD?, "error": str | None}
    {"type": "nodes-checked", "nodes": [NAME, ...]}
    {"type": "telemetry", "node": NAME, "gpus": [...], "cpu_percent": ...}
    {"type": "metric", "job": ID, "attempt": N, "step": S, "values": {...}}

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

ACTIVE_STATES = ("held", "queued", "starting", "running")
SERIES_POINTS = 2000      # loss points kept per job
HISTORY_POINTS = 60       # telemetry samples kept per GPU (a minute at 1 Hz)


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
    connected: bool = False
    error: str | None = None
    nodes_stale: bool = False  # a node changed: fetch the nodes' views again
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
        self.nodes_stale = False

    def load_nodes(self, nodes: Iterable[Mapping[str, Any]]) -> None:
        """Replace the nodes with fresh views (after a "node" event): the GPU
        history stays, what a node's view says replaces what events patched."""
        self.nodes = {str(n["name"]): dict(n) for n in nodes}

    def load_metrics(self, job_id: int, points: Iterable[Mapping[str, Any]]) -> None:
        """A job's metric points as the API lists them (one per name)."""
        by_step: dict[tuple[int, int], dict[str, float]] = {}
        for p in points:
            by_step.setdefault((int(p["attempt"]), int(p["step"])), {})[p["name"]] = p["value"]
        self.series.pop(job_id, None)
        for (attempt, step), values in sorted(by_step.items()):
            self._metric(job_id, attempt, step, values)

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
                self._metric(int(event["job"]), int(event.get("attempt", 1)),
                             int(event["step"]), event.get("values") or {})
                changed.add("metrics")
        return changed

    def _telemetry(self, event: Mapping[str, Any]) -> None:
        name = str(event.get("node"))
        node = self.nodes.setdefault(name, {"name": name, "gpus": [], "jobs": [], "up": True})
        for key in ("cpu_percent", "memory_percent", "load", "rtt_ms"):
            if key in event:
                node[key] = event[key]
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

    def _metric(self, job_id: int, attempt: int, step: int, values: Mapping[str, Any]) -> None:
        series = self.series.get(job_id)
        if series is None or attempt > series.attempt:
            series = self.series[job_id] = Series(attempt=attempt)
        elif attempt < series.attempt:
            return  # an older attempt's late point
        for name, value in values.items():
            if isinstance(value, int | float) and math.isfinite(value):
                series.last[name] = float(value)
                if name in series.points:
                    series.points[name].append((step, float(value)))
        series.step = step
        series.version += 1

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
                series = self.series.get(int(j["id"]))
                value = series.last.get("loss") if series else None
                return (value is None, value if value is not None else 0.0)
            out.sort(key=loss)
        return (out if limit is None else out[:limit]), len(out)

    def counts(self) -> dict[str, int]:
        """Jobs per state (kept up to date as events arrive)."""
        return {k: v for k, v in self._counts.items() if v}


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
