"""compress --search run as the subprocess it is, on the micro model the
session trains once: every candidate of a small grid (layers dropped, heads
kept, int8) is measured, the frontier rows are dominated by no row, the
picked model loads with the config its row says; a bad grid is one line and
exit code 2."""

from __future__ import annotations

import math
from pathlib import Path

from engine.workloads import pareto
from tests.workloads.conftest import results, run_workload

MEASURE = ["--max-docs", "400", "--block-size", "64", "--eval-batches", "4",
           "--latency-repeats", "3"]
MEASURES = ("size_bytes", "parameters", "latency_ms", "tokens_per_s", "perplexity",
            "eval_loss")


def test_search_measures_every_candidate_and_keeps_the_picked_model(
        trained: Path, wl_env: dict[str, str], tmp_path: Path) -> None:
    from engine.workloads.models import load_model

    out = tmp_path / "search"
    proc = run_workload("compress", [
        "--search", "--model", str(trained), "--output", str(out), *MEASURE,
        "--grid", "layers=0,1 int8=off,on; heads=0.5 channels=0.5",
        "--recover-steps", "2", "--pick", "fastest-within:0.5"], wl_env)
    assert "Traceback" not in proc.stderr, proc.stderr
    r = results(out)
    assert (r["kind"], r["method"], r["status"]) == ("compress", "search", "ok")
    rows = r["rows"]
    assert [row["label"] for row in rows] == ["fp32", "int8", "L-1", "L-1 int8", "H0.5 C0.5"]
    assert r["grid"]["candidates"] == len(rows) and rows[0]["reference"]
    for row in rows:
        for key in MEASURES:
            assert isinstance(row[key], int | float) and math.isfinite(row[key]), (row, key)
        assert row["latency_ms"] > 0 and row["engine"] and row["dtype"]
        assert row["dtype"] == ("int8" if row["int8"] else "float32")
        assert row["config"]["num_hidden_layers"] == 2 - row["layers"]
    assert rows[0]["perplexity_change"] == 0 and rows[0]["size_bytes"] == r["reference"][
        "size_bytes"]
    assert all(row["size_bytes"] < rows[0]["size_bytes"] for row in rows[1:])
    assert rows[4]["config"]["num_key_value_heads"] == 2  # half of the micro model's 4
    assert rows[4]["config"]["intermediate_size"] == 88
    assert "perplexity_before_recovery" in rows[2] and "pruning" in rows[2]
    # the frontier: marked, and no row dominates a frontier row
    keys = r["keys"]
    assert keys == ["size_bytes", "latency_ms", "perplexity"]
    front = [i for i, row in enumerate(rows) if row["pareto"]]
    assert front == r["frontier"] == pareto.frontier(rows, keys) and front
    point = [tuple(row[k] for k in keys) for row in rows]
    for i in front:
        assert not any(pareto.dominates(p, point[i]) for p in point)
    # the pick: one frontier row within 50 % of the reference's perplexity, fastest
    picked = [i for i, row in enumerate(rows) if row["picked"]]
    assert picked == [r["pick"]["row"]] and picked[0] in front
    chosen = rows[picked[0]]
    ok = [i for i in front if rows[i]["perplexity"] <= 1.5 * rows[0]["perplexity"]]
    assert chosen["latency_ms"] == min(rows[i]["latency_ms"] for i in ok)
    model = load_model(out / "model")
    assert model.format == chosen["format"]
    assert model.model.config.num_hidden_layers == chosen["config"]["num_hidden_layers"]
    assert model.model.config.num_key_value_heads == chosen["config"]["num_key_value_heads"]
    assert r["after"]["label"] == chosen["label"] and r["before"]["label"] == "fp32"
    assert not (out / ".search-candidates").exists()  # only the picked model's files stay
    # stdout: a progress line per candidate, then the table with the frontier marked
    assert proc.stdout.count("search ") >= len(rows)
    table = proc.stdout[proc.stdout.index("| candidate"):].splitlines()
    assert len(table) == 2 + len(rows) and table[2 + picked[0]].rstrip(" |").endswith(
        "* picked")
    assert sum(line.rstrip(" |").endswith("*") for line in table) == len(front) - 1

    bad = run_workload("compress", ["--search", "--model", str(trained), "--output",
                                    str(tmp_path / "bad"), "--grid", "layers=0,1 head=0.5"],
                       wl_env, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "--grid 'head=0.5': unknown key 'head'" in bad.stderr
    assert "layers, heads, channels, int8" in bad.stderr


def test_a_grid_that_drops_every_layer_names_the_range() -> None:
    from engine.workloads.common import WorkloadError
    from engine.workloads.search import check_grid
    from engine.workloads.search_grid import parse_grid

    check_grid(parse_grid("layers=0,1"), 2, Path("m"))
    try:
        check_grid(parse_grid("layers=0,2"), 2, Path("m"))
    except WorkloadError as err:
        assert str(err) == ("--grid layers=2: model m has 2 decoder layers and at least one "
                            "must stay; expected layers=0..1")
    else:
        raise AssertionError("layers=2 of 2 was accepted")
