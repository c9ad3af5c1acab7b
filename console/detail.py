"""What the job detail screen shows, as plain text and rows: the attempt and
event history, the profile behind the job, a results.json as a before/after
table, and log lines split by rank and searched. Pure: no I/O beyond reading
one results.json, no screen library, so it is tested on its own."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# horovodrun (gloo) prefixes "[1]<stdout>:", mpirun "[1,0]<stderr>:".
_RANK = re.compile(r"^\[(?:\d+,)?(\d+)\]<(?:stdout|stderr)>:")

Rows = list[tuple[str, ...]]


def rank_of(line: str) -> int | None:
    """The worker rank a launcher line came from; None for unprefixed lines."""
    match = _RANK.match(line)
    return int(match.group(1)) if match else None


def ranks_in(lines: Iterable[str]) -> list[int]:
    return sorted({r for r in map(rank_of, lines) if r is not None})


def select_lines(lines: Iterable[str], rank: int | None = None, needle: str = "") -> list[str]:
    """Lines of one rank (all with None; unprefixed lines always stay, they
    are the launcher's) that contain `needle`, case-insensitively."""
    needle = needle.lower()
    out = []
    for line in lines:
        if rank is not None:
            r = rank_of(line)
            if r is not None and r != rank:
                continue
        if needle and needle not in line.lower():
            continue
        out.append(line)
    return out


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%m-%d %H:%M:%S", time.localtime(t))


def _where(placements: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for p in placements:
        gpus = p.get("gpus") or []
        parts.append(f"{p.get('node')}" + (f" gpu {','.join(map(str, gpus))}" if gpus else "")
                     + (f" {p.get('cpus')}c" if p.get("cpus") else ""))
    return "; ".join(parts) or "-"


def attempt_rows(job: Mapping[str, Any]) -> Rows:
    """#, state, where it ran, started, ended, exit code, why it ended."""
    return [(str(a["number"]), a["state"], _where(a.get("placements") or []),
             _when(a.get("started_at")), _when(a.get("ended_at")),
             "-" if a.get("exit_code") is None else str(a["exit_code"]),
             a.get("reason") or "")
            for a in job.get("attempts") or []]


def history_rows(job: Mapping[str, Any]) -> Rows:
    """time, attempt, from -> to, cause, by whom."""
    return [(_when(e.get("time")), str(e.get("attempt")),
             f"{e.get('from') or '(new)'} -> {e.get('to')}", e.get("cause") or "",
             e.get("actor") or "")
            for e in job.get("history") or []]


def describe(job: Mapping[str, Any]) -> str:
    """The job's profile and spec as a user would write them down."""
    spec = job.get("spec") or {}
    resources = spec.get("resources") or job.get("resources") or {}
    lines = [
        f"profile     {job.get('profile') or spec.get('profile') or '-'}",
        f"kind        {job.get('kind')}    launcher {spec.get('launcher', job.get('launcher'))}",
        f"owner       {job.get('owner')}    priority {job.get('priority')}    "
        f"retries {spec.get('retries', '-')}",
        "resources   " + ", ".join(f"{k} {v}" for k, v in resources.items()),
        f"after       {', '.join(map(str, job.get('after') or [])) or '-'}",
        f"output      {job.get('output') or '-'}",
        f"env         {', '.join(spec.get('env') or []) or '-'}",
        f"cwd         {spec.get('cwd') or '(the run folder)'}",
        "argv",
    ]
    argv = [str(a) for a in spec.get("argv") or []]
    lines += ["  " + shlex.join(argv[:1])] + [f"    {shlex.quote(a)}" for a in argv[1:]]
    return "\n".join(lines)


# ------------------------------------------------------------------ results
_FIELDS: tuple[tuple[str, str], ...] = (
    ("parameters", "parameters"), ("nonzero_parameters", "non-zero parameters"),
    ("sparsity", "sparsity"), ("size_bytes", "size on disk"),
    ("linear_weight_bytes", "linear weights"), ("latency_ms", "latency p50"),
    ("latency_p90_ms", "latency p90"), ("tokens_per_s", "tokens/s"),
    ("eval_loss", "held-out loss"), ("perplexity", "perplexity"), ("accuracy", "accuracy"),
)


def _fmt(field: str, value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-" if value is None else str(value)
    if field in ("parameters", "nonzero_parameters"):
        return f"{int(value):,}"
    if field in ("size_bytes", "linear_weight_bytes"):
        return f"{value / 1e6:.2f} MB"
    if field.startswith("latency"):
        return f"{value:.1f} ms"
    if field == "sparsity":
        return f"{value:.1%}"
    if field == "tokens_per_s":
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _change(field: str, before: Any, after: Any) -> str:
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (before, after)):
        return ""
    if field.endswith("bytes") and after:
        return f"{before / after:.2f}x smaller"
    if field.startswith("latency") and after:
        return f"{before / after:.2f}x faster"
    if field == "sparsity":
        return f"{(after - before) * 100:+.1f} pts"
    if before:
        return f"{after / before - 1:+.1%}"
    return ""


def results_table(data: Mapping[str, Any]) -> tuple[list[str], Rows]:
    """(headers, rows) for a results.json: metric/before/after/change for a
    compression pass, metric/value for training and evaluation."""
    before, after = data.get("before"), data.get("after")
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        rows: Rows = [(label, _fmt(f, before.get(f)), _fmt(f, after.get(f)),
                 _change(f, before.get(f), after.get(f)))
                for f, label in _FIELDS if f in before or f in after]
        return ["metric", "before", "after", "change"], rows
    extra = (("final_loss", "final training loss"), ("steps", "steps"),
             ("world_size", "workers"), ("wall_s", "wall time s"))
    flat: Rows = [(label, _fmt(f, data.get(f))) for f, label in (*_FIELDS, *extra) if f in data]
    return ["metric", "value"], flat


def load_results(output: str | None) -> tuple[dict[str, Any] | None, str]:
    """(results.json of an output folder, or None; a line saying why not)."""
    if not output:
        return None, "this job has no output folder (a command job)"
    path = Path(output) / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no results yet: {path} appears when the job finishes"
    except (OSError, ValueError) as exc:
        return None, f"{path}: not readable ({exc}); run the job again"
    if not isinstance(data, dict):
        return None, f"{path}: not a JSON object; run the job again"
    title = " ".join(str(data[k]) for k in ("kind", "method", "format", "status") if k in data)
    return data, title
