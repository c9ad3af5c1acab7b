"""`llmconsole nodes check`: a doctor before launches. For each node, one
row per check, each ok or not with a detail in words; pure (the runtime
gathers the facts: the node's state, a probe's answer, when it was asked).

Checks: link (connected, round trip), ssh (a short command over the node's
shared connection, timed; remote nodes), host key (trusted), software (the
head's versions), gpus (seen against the profile), disk (free under the
node's root), clock (skew against the head), peers (this node reaches the
others over ssh with strict host keys, the way horovodrun will when it is
the first node of a job).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.agent.protocol import ProbeResult

MIN_FREE_DISK_GB = 5.0  # under this, checkpoints of even a small model may not fit
MAX_CLOCK_SKEW_S = 2.0  # beyond this, metric times and timeouts across nodes mislead
PROBE_TIMEOUT_S = 60.0  # the peers' ssh checks run one after another


@dataclass(frozen=True)
class Facts:
    """What the runtime knows of a node when it is checked."""

    name: str
    state: str
    state_reason: str | None
    rtt_ms: float | None
    untrusted: bool
    incompatible: str | None
    software: dict[str, str]
    gpus_expected: int | None  # the profile's; None: whatever is there
    gpus_seen: int | None
    probe: ProbeResult | None
    asked_at: float | None  # the head's clock when the probe was sent
    answered_at: float | None  # ... and when its answer arrived
    ssh: tuple[bool, str] | None = None  # a short command over ssh: ok, detail (remote nodes)


def _row(check: str, ok: bool | None, detail: str) -> dict[str, Any]:
    """ok None: not checked (the node could not be asked)."""
    return {"check": check, "ok": ok, "detail": detail}


def check_node(f: Facts) -> dict[str, Any]:
    rows = []
    link_ok = f.state not in ("down", "untrusted")
    rtt = "" if f.rtt_ms is None else f"; round trip {f.rtt_ms:.1f} ms"
    rows.append(_row("link", link_ok and f.state != "suspect",
                     f"{f.state}{rtt}" + (f" ({f.state_reason})" if f.state_reason else "")))
    if f.ssh is not None:
        rows.append(_row("ssh", f.ssh[0], f.ssh[1]))
    rows.append(_row("host key", not f.untrusted,
                     "trusted" if not f.untrusted else (f.state_reason or "untrusted")))
    if f.software:
        rows.append(_row("software", f.incompatible is None, f.incompatible or ", ".join(
            f"{k} {v}" for k, v in sorted(f.software.items()))))
    else:
        rows.append(_row("software", None, "not reported (the node has not said hello)"))
    if f.gpus_seen is None:
        rows.append(_row("gpus", None, "not reported"))
    elif f.gpus_expected is not None and f.gpus_seen != f.gpus_expected:
        rows.append(_row("gpus", False, f"{f.gpus_seen} seen, the profile says "
                         f"{f.gpus_expected}: fix `gpus` in the cluster profile or the node"))
    else:
        rows.append(_row("gpus", True, f"{f.gpus_seen} seen" + (
            "" if f.gpus_expected is None else f" (profile: {f.gpus_expected})")))
    p = f.probe
    if p is None or f.asked_at is None or f.answered_at is None:
        why = "the node is down" if not link_ok else "no answer to the probe"
        rows += [_row(name, None, f"not checked: {why}") for name in ("disk", "clock")]
    else:
        if p.disk_free_gb is None:
            rows.append(_row("disk", False, f"cannot read the free space under {p.root}"))
        else:
            rows.append(_row("disk", p.disk_free_gb >= MIN_FREE_DISK_GB,
                             f"{p.disk_free_gb:.1f} GB free under {p.root}"
                             + ("" if p.disk_free_gb >= MIN_FREE_DISK_GB
                                else f" (under {MIN_FREE_DISK_GB:g} GB)")))
        # the agent read its clock as the probe arrived: half a round trip after it was sent
        transit = (f.rtt_ms / 2000.0) if f.rtt_ms is not None else 0.0
        skew = p.time - (f.asked_at + transit)
        rows.append(_row("clock", abs(skew) <= MAX_CLOCK_SKEW_S,
                         f"{skew:+.2f} s against the head" + (
                             "" if abs(skew) <= MAX_CLOCK_SKEW_S
                             else f" (over {MAX_CLOCK_SKEW_S:g} s: run NTP/chrony on it)")))
    if p is not None and p.peers:
        bad = [x for x in p.peers if not x.get("ok")]
        detail = ", ".join(f"{x.get('host')}: {x.get('detail')}" for x in (bad or p.peers))
        rows.append(_row("peers", not bad, detail))
    ok = all(r["ok"] is not False for r in rows) and all(
        r["ok"] is not None for r in rows if r["check"] in ("link",))
    return {"node": f.name, "ok": ok, "checks": rows}


def summary(results: Sequence[dict[str, Any]]) -> bool:
    """All nodes passed every check that could run."""
    return all(r["ok"] for r in results)
