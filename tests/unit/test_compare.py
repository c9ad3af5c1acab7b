"""The comparison table: rows from train, compress and eval results, "-" for
what a job did not report, and clear errors for a folder with no results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.workloads.common import WorkloadError
from engine.workloads.compare import (
    Row,
    comparison_rows,
    load_results,
    render_table,
    row_from_results,
    to_json,
)

REPO = Path(__file__).resolve().parents[2]


def _job(root: Path, name: str, data: object, weights: int = 0) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(data))
    if weights:
        (folder / "model").mkdir()
        (folder / "model" / "model.safetensors").write_bytes(b"\0" * weights)
        (folder / "model" / "tokenizer.json").write_bytes(b"{}" * 1000)  # not a weight file
    return folder


TRAIN = {"kind": "train", "task": "causal-lm", "status": "ok", "parameters": 166208,
         "perplexity": 128.826, "tokens_per_s": 23000.0}
PRUNE = {"kind": "compress", "method": "prune", "status": "ok",
         "before": {"parameters": 166224, "perplexity": 128.8, "size_bytes": 666984},
         "after": {"parameters": 166224, "nonzero_parameters": 115984, "size_bytes": 666984,
                   "latency_ms": 12.17, "perplexity": 126.04, "tokens_per_s": 42000.0}}
INT8 = {"kind": "compress", "method": "int8", "status": "ok",
        "after": {"parameters": 166224, "nonzero_parameters": 164670, "size_bytes": 285820,
                  "latency_ms": 4.5, "perplexity": None}}


def test_rows_take_compress_numbers_from_after_and_train_size_from_its_model(
        tmp_path: Path) -> None:
    train = _job(tmp_path, "pretrain", TRAIN, weights=666_984)
    prune = _job(tmp_path, "prune", PRUNE)
    rows = load_results([train, prune / "results.json"])
    assert [r.name for r in rows] == ["pretrain", "prune"]
    t, p = rows
    assert (t.kind, t.method, t.parameters, t.size_bytes) == ("train", None, 166208, 666_984)
    assert t.nonzero_parameters is None and t.latency_ms is None
    assert t.tokens_per_s is None  # training throughput is not inference speed
    assert (p.label, p.nonzero_parameters, p.latency_ms, p.perplexity) == \
        ("compress prune", 115984, 12.17, 126.04)
    assert p.path == str((prune / "results.json").resolve())


def test_table_shows_dashes_for_missing_values_and_no_accuracy_column(tmp_path: Path) -> None:
    rows = load_results([_job(tmp_path, "pretrain", TRAIN), _job(tmp_path, "int8", INT8)])
    table = render_table(rows)
    lines = table.splitlines()
    assert len(lines) == 4 and table.endswith("\n")
    assert lines[0].split("|")[1:-1] == [
        " name     ", " kind/method   ", "  params ", " non-zero ", " size (MB) ",
        " latency ms ", " perplexity "]
    assert set(lines[1]) <= {"|", "-", ":"}
    assert len({len(line) for line in lines}) == 1  # aligned as plain text
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells == ["pretrain", "train", "166,208", "-", "-", "-", "128.83"]
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells == ["int8", "compress int8", "166,224", "164,670", "0.29", "4.50", "-"]


def test_accuracy_column_appears_when_a_row_has_one() -> None:
    rows = [row_from_results("cls", "/x/cls/results.json",
                             {"kind": "eval", "task": "classification", "status": "ok",
                              "accuracy": 0.8125, "eval_loss": 0.5}),
            Row(name="lm", path="/x/lm/results.json", kind="eval")]
    headers, cells = comparison_rows(rows)
    assert headers[-1] == "accuracy"
    assert cells[0][1] == "eval classification" and cells[0][-1] == "0.812"
    assert cells[1][-1] == "-" and cells[1][1] == "eval"


def test_non_finite_and_non_numeric_values_become_dashes() -> None:
    row = row_from_results("weird", "/x/weird/results.json",
                           {"kind": "eval", "perplexity": float("inf"), "latency_ms": "fast",
                            "parameters": True, "size_bytes": float("nan")})
    assert (row.perplexity, row.latency_ms, row.parameters, row.size_bytes) == \
        (None, None, None, None)
    assert render_table([row]).splitlines()[2].count(" - ") == 5


def test_a_job_that_did_not_finish_says_so() -> None:
    row = row_from_results("bad", "/x/bad/results.json",
                           {"kind": "train", "status": "diverged", "reason": "loss nan"})
    assert row.label == "train (diverged)"
    assert "train (diverged)" in render_table([row])


def test_to_json_has_columns_and_every_field() -> None:
    rows = [row_from_results("p", "/x/p/results.json", PRUNE)]
    data = to_json(rows)
    assert data["columns"][0] == "name" and "accuracy" not in data["columns"]
    assert data["rows"][0]["label"] == "compress prune"
    assert data["rows"][0]["nonzero_parameters"] == 115984
    json.dumps(data)  # serialisable as is


def test_pipes_in_names_do_not_break_the_table() -> None:
    table = render_table([Row(name="a|b", path="/x", kind="eval")])
    assert all(line.count("|") == 8 for line in table.splitlines())


@pytest.mark.parametrize("case", ["missing", "no-results", "not-json", "not-object"])
def test_bad_paths_name_the_path_and_the_fix(case: str, tmp_path: Path) -> None:
    folder = tmp_path / "job"
    if case != "missing":
        folder.mkdir()
    if case == "not-json":
        (folder / "results.json").write_text("{half")
    if case == "not-object":
        (folder / "results.json").write_text("[1, 2]")
    with pytest.raises(WorkloadError) as err:
        load_results([folder])
    message = str(err.value)
    assert str(folder) in message
    expected = {"missing": "no such file or folder", "no-results": "no results.json",
                "not-json": "not readable JSON", "not-object": "JSON object"}[case]
    assert expected in message and "\n" not in message


def test_compare_does_not_import_torch() -> None:
    probe = ("import sys, engine.workloads.compare\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert out.strip() == "[]"
