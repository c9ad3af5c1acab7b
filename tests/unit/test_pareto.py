"""The search's pure parts: the Pareto frontier (hypothesis: no frontier row
is dominated, every other row is dominated by a frontier row), the --grid
and --pick syntax with its one-line errors, the pick rule, and the compare
table of a search's results.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.workloads import compare, pareto
from engine.workloads.options import OptionError, parse
from engine.workloads.search_grid import Candidate, GridError, choose, parse_grid, parse_pick

KEYS = ("size_bytes", "latency_ms", "perplexity")
value = st.one_of(st.integers(0, 5), st.floats(0, 1e6, allow_nan=False))
row = st.fixed_dictionaries({k: value for k in KEYS})


def _point(r: dict) -> tuple[float, ...]:
    return tuple(float(r[k]) for k in KEYS)


@given(st.lists(row, max_size=25))
def test_the_frontier_is_undominated_and_dominates_every_other_row(rows: list[dict]) -> None:
    front = pareto.frontier(rows, KEYS)
    assert front == sorted(set(front))
    assert (not rows) == (not front)  # a non-empty set has a frontier
    for i in front:
        assert not any(pareto.dominates(_point(r), _point(rows[i])) for r in rows)
    for i in set(range(len(rows))) - set(front):
        assert any(pareto.dominates(_point(rows[j]), _point(rows[i])) for j in front)


@given(st.lists(row, min_size=1, max_size=12), st.sampled_from(
    ["fastest-within:0.05", "smallest-within:0", "fastest", "smallest", "best"]))
def test_the_pick_is_a_frontier_row_within_its_bound(rows: list[dict], rule: str) -> None:
    front = pareto.frontier(rows, KEYS)
    pick = parse_pick(rule)
    chosen = choose(rows, front, 0, pick)
    assert chosen in front
    if pick.within is not None:  # the reference, or a row dominating it, always qualifies
        assert rows[chosen]["perplexity"] <= rows[0]["perplexity"] * (1 + pick.within)
    if rule == "fastest":
        assert rows[chosen]["latency_ms"] == min(rows[i]["latency_ms"] for i in front)


def test_rows_with_a_missing_measure_are_left_out() -> None:
    rows = [{"size_bytes": 1, "latency_ms": 1, "perplexity": None},
            {"size_bytes": 2, "latency_ms": 2, "perplexity": 2.0},
            {"size_bytes": 3, "latency_ms": 3, "perplexity": math.nan},
            {"size_bytes": 2, "latency_ms": 2, "perplexity": 2.0}]  # equal rows both stay
    assert pareto.frontier(rows, KEYS) == [1, 3]


def test_the_grid_is_the_product_of_its_values_with_the_reference_first() -> None:
    grid = parse_grid("layers=0,1 heads=1,0.5 int8=off,on; channels=0.5  layers=1")
    labels = [c.label for c in grid.candidates]
    assert labels == ["fp32", "int8", "H0.5", "H0.5 int8", "L-1", "L-1 int8", "L-1 H0.5",
                      "L-1 H0.5 int8", "L-1 C0.5"]
    assert grid.candidates[0] == Candidate() and grid.text.endswith("channels=0.5 layers=1")
    assert grid.to_json()["candidates"] == 9 and grid.to_json()["int8"] == [False, True]
    assert parse_grid("int8=on").candidates == (Candidate(), Candidate(int8=True))
    for text, said in [
            ("layer=1", "unknown key 'layer'; expected KEY=V1,V2 items separated by spaces, "
                        "KEY one of layers, heads, channels, int8"),
            ("heads=1.5", "heads takes shares kept in (0, 1]"),
            ("channels=0", "channels takes shares kept in (0, 1]"),
            ("layers=-1", "layers takes whole numbers"),
            ("int8=maybe", "int8 takes off and/or on, not 'maybe'"),
            ("int8=on int8=off", "int8 is given twice"),
            ("heads=1,", "heads needs values"), ("layers", "not KEY=V1,V2"), ("", "empty"),
            ("layers=0,1,2,3,4,5,6,7,8 heads=1,0.9,0.8,0.7 int8=off,on",
             "72 candidates; at most 64")]:
        with pytest.raises(GridError) as err:
            parse_grid(text)
        assert said in str(err.value) and "\n" not in str(err.value), (text, err.value)
    with pytest.raises(GridError, match="unknown rule"):
        parse_pick("fastest-within")
    with pytest.raises(GridError, match="not a share >= 0"):
        parse_pick("smallest-within:-1")


def test_the_parser_takes_method_or_search_and_names_both() -> None:
    base = ["--model", "m", "--output", "o"]
    a = parse("compress", [*base, "--search", "--grid", "int8=off,on", "--pick", "best"])
    assert a.search and a.method is None and len(a.grid.candidates) == 2
    assert a.pick.rule == "best"
    assert len(parse("compress", [*base, "--search"]).grid.candidates) == 16  # the default
    for argv, said in [([], "one of the arguments --method --search is required"),
                       (["--method", "int8", "--search"], "not allowed with argument --method"),
                       (["--search", "--grid", "heads=2"], "--grid 'heads=2': heads takes")]:
        with pytest.raises(OptionError) as err:
            parse("compress", [*base, *argv])
        assert said in str(err.value), err.value


FIXTURE = Path(__file__).resolve().parents[1] / "console" / "fixtures" / "search-results.json"


def test_compare_expands_a_search_into_its_candidates_with_the_frontier(tmp_path: Path) -> None:
    folder = tmp_path / "search-job"
    folder.mkdir()
    (folder / "results.json").write_text(FIXTURE.read_text())
    other = tmp_path / "pretrain"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"kind": "train", "perplexity": 40.0}))
    rows = compare.load_results([other, folder])
    data = json.loads(FIXTURE.read_text())
    assert len(rows) == 1 + len(data["rows"])
    assert rows[0].candidate is None and rows[0].pareto is None  # the train row as it was
    headers, cells = compare.comparison_rows(rows)
    assert headers == ["name", "kind/method", "candidate", "params", "non-zero", "size (MB)",
                       "latency ms", "tokens/s", "perplexity", "pareto"]
    marks = [c[-1] for c in cells[1:]]
    assert marks == ["* picked" if r["picked"] else "*" if r["pareto"] else ""
                     for r in data["rows"]]
    assert [c[2] for c in cells[1:]] == [r["label"] for r in data["rows"]]
    assert all(c[0] == "search-job" and c[1] == "compress search" for c in cells[1:])
    text = compare.render_table(rows)
    assert text.count("* picked") == 1 and "| pretrain " in text
    # without a search row the table keeps its columns
    assert "candidate" not in compare.comparison_rows(rows[:1])[0]
    # the search's own table: the same cells, without name and kind
    own, cells2 = compare.search_table(rows[1:])
    assert own[0] == "candidate" and [c[1:] for c in cells2] == [
        [c[3], c[5], c[6], c[7], c[8], c[9]] for c in cells[1:]]
    assert compare.render_search(data).splitlines()[0].startswith("| candidate")
    back = compare.to_json(rows)["rows"][1]
    assert back["candidate"] == data["rows"][0]["label"] and back["pareto"] is not None
