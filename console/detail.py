"""What the job detail screen shows, as plain text and rows: the attempt and
event history, the profile behind the job, a results.json as a before/after
table (a prepare job's manifest.json as its summary), and log lines split by
rank and searched. Pure: no I/O beyond reading one results.json or
manifest.json, no screen library, so it is tested on its own."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.workloads import manifest_view

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
    compression pass, metric/value for training and evaluation; for a
    prepare job's manifest.json, its summary (`prepare_table`)."""
    if manifest_view.is_manifest(data):
        return prepare_table(data)
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


def prepare_table(manifest: Mapping[str, Any]) -> tuple[list[str], Rows]:
    """(headers, rows) of a prepare job's manifest.json: documents in and
    kept, removed by each rule and by dedup, bad input with its first
    file:line entries, tokens per split, shards, tokenizer
    (engine.workloads.manifest_view, as `llmconsole show` prints it)."""
    return ["what", "value"], list(manifest_view.summary_rows(manifest))


def load_results(output: str | None, kind: str | None = None
                 ) -> tuple[dict[str, Any] | None, str]:
    """(results.json of an output folder, or None; a line saying why not).
    A prepare job's folder (`kind` "prepare", or one holding manifest.json)
    gives its manifest instead, with its headline as the line."""
    if not output:
        return None, "this job has no output folder (a command job)"
    if kind == "prepare" or (Path(output) / manifest_view.MANIFEST).is_file():
        manifest, why = manifest_view.read_manifest(output)
        return (manifest, manifest_view.headline(manifest)) if manifest is not None \
            else (None, why)
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


# ------------------------------------------------------------------ logs like less
def matches(lines: Sequence[str], needle: str) -> list[int]:
    """Indexes of the lines containing `needle`, case-insensitively (none
    for an empty needle)."""
    if not needle:
        return []
    needle = needle.lower()
    return [i for i, line in enumerate(lines) if needle in line.lower()]


def next_match(found: Sequence[int], current: int | None, step: int, start: int = 0
               ) -> int | None:
    """The position in `found` after (step 1) or before (step -1) `current`,
    wrapping like less; with no current one, the first match at or after
    line `start` (else the first). None when nothing matches."""
    if not found:
        return None
    if current is None or not 0 <= current < len(found):
        return next((k for k, i in enumerate(found) if i >= start), 0)
    return (current + step) % len(found)


def world_size(job: Mapping[str, Any]) -> int | None:
    """The job's rank count when known: resources nodes x GPUs per node (a
    rank per GPU), else horovodrun's/mpirun's `-np N` in its argv."""
    spec = job.get("spec") or {}
    resources = spec.get("resources") or job.get("resources") or {}
    gpus = resources.get("gpus_per_node") or 0
    if gpus:
        return int(resources.get("nodes") or 1) * int(gpus)
    argv = [str(a) for a in spec.get("argv") or []]
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("-np", "-n", "--num-proc") and value.isdigit():
            return int(value)
    return None


def rank_choices(seen: Iterable[int], world: int | None) -> list[int]:
    """Every rank the picker offers: 0..world-1 when the world size is known,
    and any rank seen in the log besides."""
    return sorted({*seen, *range(world or 0)})


def rank_note(rank: int | None, counts: Mapping[int, int]) -> str:
    """What the picker says of the chosen rank: its line count, or that it
    has written nothing yet (a silent rank is listed, not hidden)."""
    if rank is None:
        return "all ranks"
    n = counts.get(rank, 0)
    return f"rank {rank}: no lines yet" if not n else f"rank {rank} ({n:,} lines)"


def default_log_path(job: Mapping[str, Any], attempt: int, folder: str | Path) -> str:
    """Where ctrl+s offers to save a log: job-ID-NAME-attempt-N.log in `folder`."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(job.get("name") or "job")).strip("-") or "job"
    return str(Path(folder) / f"job-{job.get('id')}-{name}-attempt-{attempt}.log")


# ------------------------------------------------------------------ comparison, tensorboard
COMPARISON = "comparison.json"


def _compare_argv(job: Mapping[str, Any]) -> list[str]:
    """The folders after `--compare` in the job's argv (an evaluate stage)."""
    argv = [str(a) for a in (job.get("spec") or {}).get("argv") or []]
    if "--compare" not in argv:
        return []
    out = []
    for arg in argv[argv.index("--compare") + 1:]:
        if arg.startswith("--"):
            break
        out.append(arg)
    return out


def comparison(job: Mapping[str, Any]) -> tuple[list[str], list[list[str]], str] | None:
    """The comparison table a pipeline's evaluate job made of the stages
    before it: its output's comparison.json, else built from the folders its
    argv names after --compare (as `llmconsole compare` would). (headers,
    cells, where it came from), or None when the job compares nothing."""
    from engine.workloads import compare
    from engine.workloads.common import WorkloadError

    output = job.get("output")
    if output:
        path = Path(output) / COMPARISON
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            rows = [compare.Row(**{k: v for k, v in r.items() if k != "label"})
                    for r in data["rows"]]
            headers, cells = compare.comparison_rows(rows)
            return headers, cells, str(path)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    folders = _compare_argv(job)
    if not folders:
        return None
    try:
        rows = compare.load_results(folders)
    except WorkloadError as err:
        return [], [], str(err)
    headers, cells = compare.comparison_rows(rows)
    return headers, cells, "llmconsole compare " + " ".join(shlex.quote(f) for f in folders)


def tensorboard_line(output: str | None) -> str:
    """Where the job's TensorBoard event files are, and the command to see them."""
    if not output:
        return "TensorBoard: this job writes no event files (no output folder)"
    folder = Path(output) / "tensorboard"
    there = "" if folder.is_dir() else " (not written yet)"
    return f"TensorBoard files: {folder}{there}\n  tensorboard --logdir {shlex.quote(str(folder))}"
