"""A table comparing finished jobs, read from their ``results.json``.

Pure: the standard library only (no torch), so it runs anywhere the results
are. A row per job: its folder name, what it was (``train``, ``compress
prune``, ``eval`` ...), parameters, non-zero parameters, weight size on disk
in MB, CPU latency per batch in ms, held-out perplexity, and accuracy when
any row has one. A value a job did not report is shown as ``-``.

Where the numbers come from: a compress job's ``after`` object (the model it
wrote); an eval job's top level; a train job's top level, with the size read
from the weight files of its ``model/`` folder when they are still there.

A ``compress --search`` job (``method`` "search") is a row per candidate
(`search_rows`), each with its ``candidate`` label, whether it is on the
size/latency/perplexity frontier (``pareto``) and whether its model was the
one saved (``picked``); the table then has the columns ``candidate``,
``tokens/s`` and ``pareto`` (``*`` on a frontier row, ``* picked`` on the
saved one). `search_table` is one search's table alone (what the job prints
and the Results tab shows).
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
    candidate: str | None = None     # compress --search: the candidate's label
    pareto: bool | None = None       # compress --search: on the frontier
    picked: bool | None = None       # compress --search: its model was saved

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


def is_search(data: Mapping[str, Any]) -> bool:
    """True for the results of ``compress --search``."""
    return data.get("method") == "search" and isinstance(data.get("rows"), list)


def search_rows(name: str, path: str | Path, data: Mapping[str, Any]) -> list[Row]:
    """A row per candidate of a search's results (in their order)."""
    out = []
    for cand in data["rows"]:
        if not isinstance(cand, Mapping):
            continue
        row = row_from_results(name, path, {"kind": data.get("kind"), "method": "search",
                                            "status": data.get("status"), "after": cand})
        out.append(Row(**{**asdict(row), "candidate": str(cand.get("label") or "?"),
                          "pareto": bool(cand.get("pareto")),
                          "picked": bool(cand.get("picked"))}))
    return out


def load_results(paths: Iterable[str | Path]) -> list[Row]:
    """A row per path: a results.json, or a folder (a job's output folder)
    with one; a search's results give a row per candidate. Raises
    `WorkloadError` naming the path and the fix."""
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
        name = folder.resolve().name or str(folder)
        if is_search(data):
            rows.extend(search_rows(name, file, data))
        else:
            rows.append(row_from_results(name, file, data))
    return rows


# ---------------------------------------------------------------- rendering
COLUMNS: tuple[tuple[str, str], ...] = (
    ("name", "name"), ("label", "kind/method"), ("candidate", "candidate"),
    ("parameters", "params"), ("nonzero_parameters", "non-zero"), ("size_bytes", "size (MB)"),
    ("latency_ms", "latency ms"), ("tokens_per_s", "tokens/s"), ("perplexity", "perplexity"),
    ("accuracy", "accuracy"), ("pareto", "pareto"),
)
#: Shown only when a row is a search's candidate.
SEARCH_COLUMNS = ("candidate", "tokens_per_s", "pareto")
#: One search's table: the candidate and what the frontier is over.
SEARCH_TABLE: tuple[tuple[str, str], ...] = (
    ("candidate", "candidate"), ("parameters", "params"), ("size_bytes", "size (MB)"),
    ("latency_ms", "latency ms"), ("tokens_per_s", "tokens/s"), ("perplexity", "perplexity"),
    ("pareto", "pareto"),
)


def _cell(field: str, value: Any, row: Row | None = None) -> str:
    if field == "pareto":
        return "" if not value else "* picked" if row is not None and row.picked else "*"
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
    if field == "tokens_per_s":
        return f"{value:,.0f}"
    if field == "accuracy":
        return f"{value:.3f}"
    return str(value).replace("|", "/").replace("\n", " ")


def render_cell(field: str, value: Any) -> str:
    """One cell as the tables write it (``-`` for a missing value)."""
    return _cell(field, value)


def comparison_rows(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """(column headers, cells as text): accuracy only when a row has one."""
    search = any(r.candidate is not None for r in rows)
    columns = [(f, h) for f, h in COLUMNS
               if (f != "accuracy" or any(r.accuracy is not None for r in rows))
               and (f not in SEARCH_COLUMNS or search)]
    cells = [[_cell(f, getattr(r, f), r) for f, _ in columns] for r in rows]
    return [h for _, h in columns], cells


def search_table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """(headers, cells) of one search's candidates (`search_rows`): the
    cells `comparison_rows` gives them, without the job's name and kind."""
    cells = [[_cell(f, getattr(r, f), r) for f, _ in SEARCH_TABLE] for r in rows]
    return [h for _, h in SEARCH_TABLE], cells


def render_search(data: Mapping[str, Any], path: str | Path = RESULTS) -> str:
    """A search's results as the text table it prints."""
    headers, cells = search_table(search_rows("", path, data))
    return render_cells(headers, cells)


def search_line(row: Mapping[str, Any]) -> str:
    """One candidate's measures in a line (the search's progress)."""
    r = row_from_results("", RESULTS, {"after": row})
    return (f"{_cell('size_bytes', r.size_bytes)} MB, {_cell('latency_ms', r.latency_ms)} ms, "
            f"{_cell('tokens_per_s', r.tokens_per_s)} tokens/s, perplexity "
            f"{_cell('perplexity', r.perplexity)}")


def render_table(rows: Sequence[Row]) -> str:
    """A Markdown table, its columns padded so it reads as plain text too."""
    headers, cells = comparison_rows(rows)
    return render_cells(headers, cells)


def render_cells(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """`headers` over `cells` as a padded Markdown table."""
    numeric = [h not in ("name", "kind/method", "candidate", "pareto") for h in headers]
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
