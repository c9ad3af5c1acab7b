"""A table comparing finished jobs, read from their ``results.json``.

Pure: the standard library only (no torch), so it runs anywhere the results
are. A row per job: its folder name, what it was (``train``, ``compress
prune``, ``eval`` ...), parameters, non-zero parameters, weight size on disk
in MB, CPU latency per batch in ms, held-out perplexity, and accuracy when
any row has one. A value a job did not report is shown as ``-``.

Where the numbers come from: a compress job's ``after`` object (the model it
wrote); an eval job's top level; a train job's top level, with the size read
from the weight files of its ``model/`` folder when they are still there.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.workloads.common import WorkloadError

RESULTS = "results.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "quantized.pt")


@dataclass(frozen=True)
class Row:
    name: str
    path: str                        # the results.json it came from
    kind: str                        # train, compress, eval, ...
    method: str | None = None        # compress: prune, int8, ...; train: its task
    status: str | None = None
    parameters: int | None = None
    nonzero_parameters: int | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None
    perplexity: float | None = None
    accuracy: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None

    @property
    def label(self) -> str:
        what = f"{self.kind} {self.method}" if self.method else self.kind
        if self.status and self.status != "ok":
            what += f" ({self.status})"
        return what


def _results_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        return p / RESULTS
    return p


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _weight_bytes(folder: Path) -> int | None:
    try:
        sizes = [f.stat().st_size for f in folder.iterdir()
                 if f.name in WEIGHT_FILES or f.name.startswith("model-")]
    except OSError:
        return None
    return sum(sizes) if sizes else None


def row_from_results(name: str, path: str | Path, data: Mapping[str, Any]) -> Row:
    """A row from one results object; `path` is the results.json it is
    (or will be) in, and a train job's ``model/`` is looked for beside it."""
    kind = str(data.get("kind") or "?")
    source: Mapping[str, Any] = data
    after = data.get("after")
    if isinstance(after, Mapping):
        source = after
    method = data.get("method") or (data.get("task") if kind in ("train", "eval") and
                                     data.get("task") not in (None, "causal-lm") else None)
    size = _integer(source.get("size_bytes"))
    if size is None and kind != "eval":
        size = _weight_bytes(Path(path).parent / "model")
    return Row(
        name=name, path=str(Path(path).resolve()), kind=kind,
        method=str(method) if method else None,
        status=str(data["status"]) if data.get("status") is not None else None,
        parameters=_integer(source.get("parameters")),
        nonzero_parameters=_integer(source.get("nonzero_parameters")),
        size_bytes=size,
        latency_ms=_number(source.get("latency_ms")),
        perplexity=_number(source.get("perplexity")),
        accuracy=_number(source.get("accuracy")),
        eval_loss=_number(source.get("eval_loss")),
        # a train job's tokens/s is training throughput, not inference
        tokens_per_s=None if kind == "train" else _number(source.get("tokens_per_s")),
    )


def load_results(paths: Iterable[str | Path]) -> list[Row]:
    """A row per path: a results.json, or a folder (a job's output folder)
    with one. Raises `WorkloadError` naming the path and the fix."""
    rows = []
    for path in paths:
        if not Path(path).expanduser().exists():
            raise WorkloadError(f"compare {path}: no such file or folder; expected a job's "
                                f"output folder (with {RESULTS}) or a {RESULTS} file")
        file = _results_file(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WorkloadError(f"compare {path}: no {RESULTS} in it; expected the output folder "
                                "of a finished train, compress or eval job (wait for the job "
                                "to finish, or run it again)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WorkloadError(f"compare {file}: not readable JSON ({exc}); run the job that "
                                "wrote it again") from None
        if not isinstance(data, dict):
            raise WorkloadError(f"compare {file}: expected a JSON object written by a train, "
                                "compress or eval job")
        folder = file.parent
        rows.append(row_from_results(folder.resolve().name or str(folder), file, data))
    return rows


# ---------------------------------------------------------------- rendering
COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "name"), ("label", "kind/method"), ("parameters", "params"),
    ("nonzero_parameters", "non-zero"), ("size_bytes", "size (MB)"),
    ("latency_ms", "latency ms"), ("perplexity", "perplexity"), ("accuracy", "accuracy"),
)


def _cell(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if field in ("parameters", "nonzero_parameters"):
        return f"{value:,}"
    if field == "size_bytes":
        return f"{value / 1e6:.2f}" if value >= 10_000 else f"{value / 1e6:.4f}"
    if field == "latency_ms":
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if field == "perplexity":
        return f"{value:.2f}"
    if field == "accuracy":
        return f"{value:.3f}"
    return str(value).replace("|", "/").replace("\n", " ")


def comparison_rows(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """(column headers, cells as text): accuracy only when a row has one."""
    columns = [(f, h) for f, h in COLUMNS
               if f != "accuracy" or any(r.accuracy is not None for r in rows)]
    cells = [[_cell(f, getattr(r, f)) for f, _ in columns] for r in rows]
    return [h for _, h in columns], cells


def render_table(rows: Sequence[Row]) -> str:
    """A Markdown table, its columns padded so it reads as plain text too."""
    headers, cells = comparison_rows(rows)
    numeric = [h not in ("name", "kind/method") for h in headers]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w)
                  for v, w, num in zip(values, widths, numeric, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else (":" + "-" * (w + 1))
                          for w, num in zip(widths, numeric, strict=True)) + "|"
    return "\n".join([line(headers), rule, *(line(c) for c in cells)]) + "\n"


def to_json(rows: Sequence[Row]) -> dict[str, Any]:
    """The rows as a JSON object: ``columns`` and ``rows`` (every field)."""
    headers, _ = comparison_rows(rows)
    return {"columns": headers,
            "rows": [{**asdict(r), "label": r.label} for r in rows]}


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
