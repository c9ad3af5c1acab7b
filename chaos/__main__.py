"""`python -m chaos [--seed S] [--jobs N] [--quick]` (`make chaos`): the
whole fault campaign on this machine's loopback, bounded in time, then ONE
table of figures, each beside its target. Exit status 1 when a target is
missed.

The parts: the engine-crash campaign (chaos/engine_crash.py: N jobs, the
daemon SIGKILLed at seeded moments), the agent, node, link and rank faults
(chaos/node_faults.py, on sshd test hosts on 127.0.0.2-3), and hostile
input (`chaos.hostile.run(budget_s)`, when that module exists; its rows
read "n/a" until then).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chaos import engine_crash, node_faults
from engine import health

JOBS = 100  # the engine-crash campaign's jobs in `make chaos`
QUICK_JOBS = 20
KILLS_PER_JOB = 0.1  # daemon kills per submitted job: 10 in `make chaos`, at least 3
HOSTILE_BUDGET_S = 120.0
QUICK_HOSTILE_BUDGET_S = 30.0
RESTART_TARGET_S = 2.0  # restart -> the API answering, the largest of the campaign
# Time to detect each fault kind, and why that target:
DETECT_TARGET_S = {
    # the agent's ssh channel ends at once; the engine sees EOF
    "agent kill -9": 5.0,
    # the host's sessions die with it: the channel's ssh sees the connection close
    "node crash": 5.0,
    # a silent link is closed after the engine's silence limit (health.DEAD_AFTER_S)
    "link frozen": health.DEAD_AFTER_S + 5.0,
    # horovodrun ends the attempt when a rank dies; the agent reports the exit
    "rank kill -9": 15.0,
}


@dataclass(frozen=True)
class Row:
    what: str
    figure: str
    target: str
    ok: bool | None  # None: no target (a count of what was done)


def hostile(budget_s: float) -> dict[str, Any] | None:
    """The hostile-input campaign's figures, or None while it does not exist."""
    if importlib.util.find_spec("chaos.hostile") is None:
        return None
    module = importlib.import_module("chaos.hostile")
    result: dict[str, Any] = module.run(budget_s)
    return result


def rows(crash: engine_crash.CrashResult, nodes: list[node_faults.FaultResult],
         bad: dict[str, Any] | None) -> list[Row]:
    """The table (pure: figures in, rows out)."""
    faults = {**crash.faults}
    for r in nodes:
        faults[r.kind] = faults.get(r.kind, 0) + 1
    lost = len(crash.lost) + sum(r.lost for r in nodes)
    duplicates = crash.duplicates + sum(r.duplicates for r in nodes)
    gaps = (crash.log_gaps + crash.log_repeats + crash.metric_gaps + crash.metric_repeats
            + sum(r.gaps for r in nodes))
    left = len(crash.leftovers) + sum(r.left for r in nodes)
    out = [Row(f"faults injected: {k}", str(v), "", None) for k, v in faults.items()]
    out += [
        Row("jobs submitted", str(crash.jobs + len(nodes)), "", None),
        Row("jobs lost", str(lost), "0", lost == 0),
        Row("duplicate launches", str(duplicates), "0", duplicates == 0),
        Row("log/metric gaps and repeats", str(gaps), "0", gaps == 0),
    ]
    if crash.restart_s:
        worst = max(crash.restart_s)
        out.append(Row("restart to API answering (p50 / max)",
                       f"{statistics.median(crash.restart_s):.2f} / {worst:.2f} s",
                       f"< {RESTART_TARGET_S:g} s", worst < RESTART_TARGET_S))
    for r in nodes:
        limit = DETECT_TARGET_S.get(r.kind)
        seen = r.detect_s is not None and limit is not None and r.detect_s < limit
        out.append(Row(f"time to detect: {r.kind}",
                       "not seen" if r.detect_s is None else f"{r.detect_s:.1f} s",
                       "" if limit is None else f"< {limit:g} s", seen and not r.problems))
        if r.recover_s is not None:
            out.append(Row(f"time to recover: {r.kind}", f"{r.recover_s:.1f} s", "", None))
    out.append(Row("processes left behind", str(left), "0", left == 0))
    if bad is None:
        out += [Row("bad inputs tried", "n/a", "", None),
                Row("crashes and 5xx answers", "n/a", "0", None)]
    else:
        failures = int(bad.get("crashes", 0)) + int(bad.get("5xx", 0))
        out += [Row("bad inputs tried", str(bad.get("inputs", 0)), "", None),
                Row("crashes and 5xx answers",
                    f"{bad.get('crashes', 0)} / {bad.get('5xx', 0)}", "0", failures == 0)]
    return out


def table(found: list[Row]) -> str:
    head = Row("", "figure", "target", None)
    width = [max(len(getattr(r, f)) for r in [head, *found]) for f in ("what", "figure",
                                                                         "target")]

    def line(r: Row, mark: str) -> str:
        return (f"{r.what:<{width[0]}}  {r.figure:>{width[1]}}  {r.target:<{width[2]}}  "
                f"{mark}").rstrip()

    marks = {True: "ok", False: "MISSED", None: ""}
    return "\n".join([line(head, ""), *(line(r, marks[r.ok]) for r in found)])


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=13, help="seed of the kill moments")
    parser.add_argument("--jobs", type=int, default=None,
                        help=f"jobs of the engine-crash campaign (default {JOBS}; "
                             f"{QUICK_JOBS} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a short campaign: fewer jobs and kills, a smaller input budget")
    args = parser.parse_args(argv)
    jobs = args.jobs if args.jobs is not None else QUICK_JOBS if args.quick else JOBS
    if jobs < 1:
        parser.error(f"--jobs {jobs}: the campaign needs at least 1 job; give --jobs 1 or more")
    kills = max(3, round(jobs * KILLS_PER_JOB))
    began = time.monotonic()

    def progress(text: str) -> None:
        out(f"[{time.monotonic() - began:6.1f} s] {text}")

    progress(f"engine crash: {jobs} jobs, {kills} kills, seed {args.seed}")
    crash = engine_crash.run(args.seed, jobs=jobs, kills=kills, progress=progress)
    progress(f"engine crash done in {crash.wall_s:.0f} s"
             + ("" if crash.ok else ": " + "; ".join(crash.problems[:5])))
    progress("agent, node, link and rank faults on sshd test hosts (127.0.0.2-3)")
    nodes = node_faults.run(progress=progress)
    budget = QUICK_HOSTILE_BUDGET_S if args.quick else HOSTILE_BUDGET_S
    progress(f"hostile input ({budget:g} s)")
    bad = hostile(budget)
    found = rows(crash, nodes, bad)
    out("")
    out(table(found))
    out(f"\n{time.monotonic() - began:.0f} s in all")
    return 1 if any(r.ok is False for r in found) else 0


if __name__ == "__main__":
    sys.exit(main())
