"""The loss guard and the stall watch: what a training profile's ``[guard]``
asks for, and the decisions made from the metric points the engine already
receives. Pure: no I/O, no clock (times are passed in); the runtime applies
the decisions (`engine.guard_book` keeps what must survive an engine
restart).

    [guard]
    on_nan = "restart"        # "fail" | "restart": the loss is NaN or infinite
    diverge_factor = 3.0      # > 1; unset: no divergence check
    diverge_window = 50       # steps (>= 2) the minimum is taken over
    on_diverge = "restart"    # "fail" | "restart"
    max_restarts = 2          # guard restarts of one job (0..20)
    lr_scale = 0.5            # in (0, 1]: each restart multiplies the lr by it
    stall_after = "10m"       # seconds, or "30s" / "10m" / "2h"; unset: no watch
    on_stall = "flag"         # "flag" | "cancel" | "retry"

Divergence, exactly: each loss point is smoothed as the median of the last
`SMOOTH_POINTS` losses reported (so one spike is not a divergence); the
guard trips when the latest smoothed loss is at least ``diverge_factor``
times the smallest smoothed loss of the points whose step is within the
last ``diverge_window`` steps (``step - diverge_window <= s <= step``), and
that minimum is above zero. The last good step is the minimum's step.

NaN/inf: a loss that is not finite, or a record that says ``diverged``
(train.py writes ``{"loss": null, "diverged": 1}`` before it exits). The
last good step is the last step with a finite loss (None: none yet).

A restart (``restart``) ends the attempt as failed with the guard's reason
and makes the next attempt resume from the newest checkpoint at or before
the last good step, the learning rate multiplied by ``lr_scale`` once more
(restart n runs at ``lr_scale ** n`` of the profile's lr). Guard restarts
are bounded by ``max_restarts`` and do not use up the job's ``retries``
(those are for faults: lost nodes, crashes); an attempt the guard fails is
never retried by ``retries``. A stall ``retry`` is a guard restart that
resumes from the newest checkpoint at or before the last step reported, with
the learning rate unchanged.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SMOOTH_POINTS = 3
ACTIONS = ("fail", "restart")
STALL_ACTIONS = ("flag", "cancel", "retry")
#: The kinds a guard is for: train, and compress when it trains (distill).
GUARD_KINDS = ("train", "compress")
MAX_RESTARTS = 20
#: Environment of a guard restart's attempt, honoured by engine.workloads.train.
ENV_LR_SCALE = "LLMCONSOLE_LR_SCALE"
ENV_RESUME_AT_OR_BEFORE = "LLMCONSOLE_RESUME_AT_OR_BEFORE"

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class GuardSpec:
    on_nan: str = "fail"
    diverge_factor: float | None = None
    diverge_window: int = 50
    on_diverge: str = "fail"
    max_restarts: int = 2
    lr_scale: float = 0.5
    stall_after: float | None = None
    on_stall: str = "flag"

    def to_dict(self) -> dict[str, Any]:
        return {"on_nan": self.on_nan, "diverge_factor": self.diverge_factor,
                "diverge_window": self.diverge_window, "on_diverge": self.on_diverge,
                "max_restarts": self.max_restarts, "lr_scale": self.lr_scale,
                "stall_after": self.stall_after, "on_stall": self.on_stall}


class GuardError(ValueError):
    """Bad [guard] fields: `problems` holds (field, problem, expected) each."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        self.problems = problems
        field, problem, expected = problems[0]
        super().__init__(f"{field}: {problem}; expected {expected}")


_EXPECTED = {
    "on_nan": 'one of "fail", "restart"',
    "diverge_factor": "a number above 1, e.g. 3.0",
    "diverge_window": "an integer from 2 to 10000000 (steps)",
    "on_diverge": 'one of "fail", "restart"',
    "max_restarts": f"an integer from 0 to {MAX_RESTARTS}",
    "lr_scale": "a number in (0, 1], e.g. 0.5",
    "stall_after": 'seconds above 0: an integer, or a string such as "30s", "10m", "2h"',
    "on_stall": 'one of "flag", "cancel", "retry"',
}
FIELDS = tuple(_EXPECTED)
MAX_WINDOW = 10_000_000
_BARE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _shown(value: object) -> str:
    """A value as an error line quotes it: repr (newlines escaped), cut to 40."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(value: object) -> float | None:
    """Seconds from 600, 600.0, "600", "30s", "10m" or "2h"; None if it is none of them."""
    if isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if not m:
            return None
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
        return seconds if math.isfinite(seconds) else None
    return _number(value)


def _number(value: object) -> float | None:
    """A finite float from an int or float (not a bool); None otherwise,
    also for an integer too large for a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def parse(table: object, prefix: str = "guard") -> GuardSpec:
    """The GuardSpec a ``[guard]`` table (or the API's ``spec.guard``)
    describes; GuardError naming each bad field (``guard.lr_scale``)."""
    if not isinstance(table, Mapping):
        raise GuardError([(prefix, "not a table", "a table of " + ", ".join(FIELDS))])
    problems: list[tuple[str, str, str]] = []
    got: dict[str, Any] = {}

    def bad(name: str, problem: str) -> None:
        problems.append((f"{prefix}.{name}", problem, _EXPECTED[name]))

    for key, value in table.items():
        name = str(key) if _BARE.fullmatch(str(key)) else _shown(str(key))
        if name not in _EXPECTED:
            close = difflib.get_close_matches(name, FIELDS, n=1, cutoff=0.6)
            problems.append((f"{prefix}.{name}", "unknown field"
                             + (f" (did you mean {close[0]}?)" if close else ""),
                             "one of: " + ", ".join(FIELDS)))
        elif name in ("on_nan", "on_diverge", "on_stall"):
            allowed = STALL_ACTIONS if name == "on_stall" else ACTIONS
            if value not in allowed:
                bad(name, f"{_shown(value)} is not an action")
            else:
                got[name] = value
        elif name in ("diverge_factor", "lr_scale"):
            number = _number(value)
            if number is None:
                bad(name, "not a finite number")
            elif name == "diverge_factor" and number <= 1:
                bad(name, f"{number:g} would trip on a loss that does not rise")
            elif name == "lr_scale" and not 0 < number <= 1:
                bad(name, f"{number:g} is outside (0, 1]")
            else:
                got[name] = number
        elif name in ("diverge_window", "max_restarts"):
            if isinstance(value, bool) or not isinstance(value, int):
                bad(name, "not an integer")
            elif name == "diverge_window" and value < 2:
                bad(name, f"{value} steps hold no rise")
            elif name == "diverge_window" and value > MAX_WINDOW:
                bad(name, f"{_shown(value)} steps is more than {MAX_WINDOW}")
            elif name == "max_restarts" and not 0 <= value <= MAX_RESTARTS:
                bad(name, f"{_shown(value)} is out of range")
            else:
                got[name] = value
        else:  # stall_after
            seconds = parse_duration(value)
            if seconds is None or seconds <= 0:
                bad(name, f"{_shown(value)} is not a duration")
            else:
                got[name] = seconds
    if problems:
        raise GuardError(problems)
    return GuardSpec(**got)


def from_stored(data: object) -> GuardSpec | None:
    """A stored spec's guard (to_dict's shape; None values are defaults)."""
    if not isinstance(data, Mapping):
        return None
    return parse({k: v for k, v in data.items() if v is not None})


# ------------------------------------------------------------------ loss
@dataclass(frozen=True)
class Trip:
    """The guard's verdict on an attempt: `action` ("fail" | "restart"),
    `reason` (the attempt's reason), `good_step` (resume at or before it;
    None: from the newest checkpoint, or from the start when `from_start`)."""

    action: str
    reason: str
    good_step: int | None
    from_start: bool = False
    lr_scale: float | None = None  # None: the guard's lr_scale; 1.0 for a stall retry
    by: str = "loss guard"  # or "stall watch"


def loss_of(record: Mapping[str, Any]) -> float | None:
    """The record's loss as a float (NaN for a diverged record), None when
    it has none."""
    loss = record.get("loss")
    if isinstance(loss, bool):
        return None
    if isinstance(loss, (int, float)):
        return float(loss)
    if loss is None and record.get("diverged"):
        return math.nan
    return None


class LossWatch:
    """One attempt's loss points, fed in step order (`see`)."""

    def __init__(self, spec: GuardSpec) -> None:
        self.spec = spec
        self.recent: deque[float] = deque(maxlen=SMOOTH_POINTS)
        self.window: deque[tuple[int, float]] = deque()  # (step, smoothed)
        self.last_good: int | None = None

    def see(self, step: int, loss: float) -> Trip | None:
        """A Trip when this point trips the guard, else None."""
        if not math.isfinite(loss):
            what = "nan" if math.isnan(loss) else ("inf" if loss > 0 else "-inf")
            return Trip(self.spec.on_nan, f"loss guard: loss was {what} at step {step}",
                        self.last_good, from_start=self.last_good is None)
        self.last_good = step
        self.recent.append(loss)
        smoothed = median(self.recent)
        factor = self.spec.diverge_factor
        window = self.spec.diverge_window
        self.window.append((step, smoothed))
        while self.window and self.window[0][0] < step - window:
            self.window.popleft()
        if factor is None:
            return None
        low_step, low = min(self.window, key=lambda p: p[1])
        if low <= 0 or smoothed < factor * low:
            return None
        return Trip(self.spec.on_diverge,
                    f"loss guard: loss rose {smoothed / low:.1f}x over {step - low_step} steps "
                    f"({_g(low)} -> {_g(smoothed)}) at step {step}", low_step)


def median(values: deque[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count);
    not statistics.median, whose import costs every CLI call 7 ms."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _g(x: float) -> str:
    return f"{x:.3g}"


# ----------------------------------------------------------------- stall
def stalled_for(now: float, running_since: float, last_advance: float | None,
                stall_after: float) -> float | None:
    """Seconds without a new step when that is at least `stall_after`, else
    None. The clock starts at the last step's arrival, or when the attempt
    started running if it has reported none (a job loading a model is not
    stalled before stall_after either)."""
    since = last_advance if last_advance is not None else running_since
    idle = now - since
    return idle if idle >= stall_after else None


def duration_words(seconds: float) -> str:
    """12m, 40s, 2h5m."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60}m" if s % 3600 >= 60 else f"{s // 3600}h"


def stall_words(seconds: float, last_step: int | None) -> str:
    """"stalled 12m at step 800" (or "before its first step")."""
    where = f"at step {last_step}" if last_step is not None else "before its first step"
    return f"stalled {duration_words(seconds)} {where}"


# --------------------------------------------------------------- restart
@dataclass(frozen=True)
class Restart:
    """Guard restart `n` (from 1) of at most `of`: the new attempt's lr
    multiplier relative to the profile's lr, and the step it resumes at or
    before (None: the newest checkpoint)."""

    n: int
    of: int
    lr_scale: float
    resume_at_or_before: int | None
    step_scale: float  # this restart's own multiplier (the words' "lr x0.5")
    by: str = "loss guard"

    def words(self) -> str:
        return f"restart {self.n} of {self.of} by {self.by}: lr x{self.step_scale:g}"

    def env(self) -> dict[str, str]:
        env = {ENV_LR_SCALE: repr(self.lr_scale)}
        if self.resume_at_or_before is not None:
            env[ENV_RESUME_AT_OR_BEFORE] = str(self.resume_at_or_before)
        return env


def plan_restart(spec: GuardSpec, trip: Trip, done: tuple[Restart, ...]) -> Restart | None:
    """The next restart after `trip`, or None when the trip says fail or the
    job has had max_restarts already. `done`: the job's earlier restarts."""
    if trip.action not in ("restart", "retry") or len(done) >= spec.max_restarts:
        return None
    step_scale = spec.lr_scale if trip.lr_scale is None else trip.lr_scale
    before = done[-1].lr_scale if done else 1.0
    at = trip.good_step
    if at is None and trip.from_start:
        at = 0
    return Restart(len(done) + 1, spec.max_restarts, before * step_scale, at, step_scale,
                   trip.by)
