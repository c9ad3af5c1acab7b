"""The evaluation program, run as the subprocess it is: a causal LM's
held-out perplexity, latency and size; a classifier's accuracy; the
comparison table of finished jobs; and a bad model folder as one error
line with exit code 2."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.workloads.conftest import results, run_workload

MEASURE = ["--max-docs", "400", "--block-size", "64", "--eval-batches", "4",
           "--latency-repeats", "3"]


def _fake_compress_job(folder: Path) -> Path:
    """A finished compress job's output folder, as far as compare reads it."""
    folder.mkdir(parents=True)
    after = {"parameters": 1000, "nonzero_parameters": 500, "size_bytes": 4_000_000,
             "latency_ms": 12.5, "perplexity": 99.5}
    (folder / "results.json").write_text(json.dumps({
        "kind": "compress", "method": "prune", "status": "ok", "before": {}, "after": after}))
    return folder


def test_causal_lm_eval_and_comparison(trained: Path, wl_env: dict[str, str],
                                       tmp_path: Path) -> None:
    pruned = _fake_compress_job(tmp_path / "pruned-job")
    out = tmp_path / "final-eval"
    proc = run_workload("evaluate", ["--model", str(trained), "--output", str(out), *MEASURE,
                                     "--compare", str(trained), str(pruned)], wl_env)
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    r = results(out)
    assert r["kind"] == "eval" and r["status"] == "ok" and r["task"] == "causal-lm"
    assert r["model"] == str((trained / "model").resolve()) and r["format"] == "fp32"
    assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1
    assert r["eval_loss"] == pytest.approx(results(trained)["eval_loss"], rel=1e-6)  # same split
    assert r["latency_ms"] > 0 and r["tokens_per_s"] > 0
    assert r["size_bytes"] == (trained / "model" / "model.safetensors").stat().st_size
    assert r["parameters"] >= r["nonzero_parameters"] > 0

    table = (out / "comparison.md").read_text()
    for name in ("out", "pruned-job", "final-eval"):  # trained is .../trained/out
        assert f"| {name} " in table, table
    assert "compress prune" in table and "99.50" in table and "4.00" in table
    assert "accuracy" not in table
    assert table in proc.stdout
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [row["name"] for row in rows] == ["out", "pruned-job", "final-eval"]
    assert rows[-1]["perplexity"] == r["perplexity"]
    assert r["comparison"] == ["out", "pruned-job", "final-eval"]


def test_comparison_only(trained: Path, wl_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "table"
    run_workload("evaluate", ["--output", str(out), "--compare", str(trained),
                              str(trained / "results.json")], wl_env)
    assert (out / "comparison.md").read_text().count("| out ") == 2
    assert results(out)["comparison"] == ["out", "out"]


def test_comparison_of_a_folder_without_results_is_exit_2(
        wl_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "running").mkdir()
    proc = run_workload("evaluate", ["--output", str(tmp_path / "t"), "--compare",
                                     str(tmp_path / "running")], wl_env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "running") in proc.stderr and "results.json" in proc.stderr


def test_classifier_accuracy(classifier: Path, wl_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    run_workload("evaluate", ["--model", str(classifier), "--output", str(out),
                              "--block-size", "64", "--latency-repeats", "3"], wl_env)
    r = results(out)
    assert r["task"] == "classification" and 0 <= r["accuracy"] <= 1
    assert r["eval_examples"] > 0 and math.isfinite(r["eval_loss"])
    assert r["accuracy"] == pytest.approx(results(classifier)["accuracy"])  # same examples
    assert "perplexity" not in r


def test_a_corrupt_model_folder_is_one_error_line_and_exit_2(
        trained: Path, wl_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(trained / "model", folder)
    (folder / "model.safetensors").write_bytes(b"\x07" * 1000)
    proc = run_workload("evaluate", ["--model", str(folder), "--output", str(tmp_path / "o")],
                        wl_env, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and str(folder) in lines[0]
    assert "Traceback" not in proc.stderr
