"""The job detail's pure parts: ranks, log search, history rows, the spec
and results tables."""

from __future__ import annotations

import json
from pathlib import Path

from console import detail

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LINES = ["horovodrun: starting", "[0]<stdout>:step 1 loss 4.0", "[1]<stderr>:Warning: slow",
         "[1,0]<stdout>:mpi style rank 0", "[1]<stdout>:step 1 LOSS 4.1"]


def test_ranks_come_from_the_launcher_prefixes() -> None:
    assert [detail.rank_of(line) for line in LINES] == [None, 0, 1, 0, 1]
    assert detail.ranks_in(LINES) == [0, 1]
    assert detail.rank_of("[x]<stdout>:no") is None


def test_select_lines_by_rank_and_case_blind_search() -> None:
    assert detail.select_lines(LINES, rank=1) == [LINES[0], LINES[2], LINES[4]]
    assert detail.select_lines(LINES, needle="loss") == [LINES[1], LINES[4]]
    assert detail.select_lines(LINES, rank=0, needle="LOSS") == [LINES[1]]
    assert detail.select_lines(LINES) == LINES


def test_attempts_and_history_rows() -> None:
    job = {"attempts": [{"number": 1, "state": "failed", "exit_code": 3, "reason": "exit code 3",
                         "placements": [{"node": "gpu1", "gpus": [0, 1], "cpus": 8}],
                         "started_at": None, "ended_at": None}],
           "history": [{"attempt": 1, "time": None, "from": None, "to": "queued",
                        "cause": "submitted", "actor": "ann"},
                       {"attempt": 1, "time": None, "from": "running", "to": "failed",
                        "cause": "exit code 3", "actor": "agent"}]}
    assert detail.attempt_rows(job) == [("1", "failed", "gpu1 gpu 0,1 8c", "-", "-", "3",
                                         "exit code 3")]
    assert [r[2] for r in detail.history_rows(job)] == ["(new) -> queued", "running -> failed"]


def test_describe_quotes_arguments_as_a_shell_would_read_them() -> None:
    job = {"id": 1, "kind": "command", "profile": "p", "owner": "ann", "priority": 2,
           "spec": {"argv": ["python3", "-c", "print('a b'); rm -rf ~"], "env": ["HF_TOKEN"],
                    "launcher": "local", "retries": 0, "resources": {"nodes": 1, "cpus": 2}}}
    text = detail.describe(job)
    assert "    'print('\"'\"'a b'\"'\"'); rm -rf ~'" in text.splitlines()
    assert "env         HF_TOKEN" in text  # names only: the engine never sends values
    assert "resources   nodes 1, cpus 2" in text


def test_results_table_of_a_compression_has_before_after_and_change() -> None:
    data = json.loads((FIXTURES / "prune-results.json").read_text())
    headers, rows = detail.results_table(data)
    assert headers == ["metric", "before", "after", "change"]
    by = {r[0]: r[1:] for r in rows}
    assert by["sparsity"] == ("0.0%", "50.0%", "+50.0 pts")
    assert by["latency p50"] == ("40.2 ms", "35.6 ms", "1.13x faster")
    assert by["perplexity"][2] == "-2.6%"
    assert by["non-zero parameters"][:2] == ("1,328,128", "926,720")


def test_results_table_of_an_evaluation_is_metric_and_value(tmp_path: Path) -> None:
    headers, rows = detail.results_table({"kind": "eval", "perplexity": 175.3, "size_bytes": 2e6,
                                          "steps": 5})
    assert headers == ["metric", "value"]
    assert ("perplexity", "175.3") in rows and ("size on disk", "2.00 MB") in rows


def test_load_results_says_why_there_is_none(tmp_path: Path) -> None:
    assert detail.load_results(None)[0] is None
    data, note = detail.load_results(str(tmp_path))
    assert data is None and "no results yet" in note
    (tmp_path / "results.json").write_text("{broken")
    data, note = detail.load_results(str(tmp_path))
    assert data is None and "not readable" in note and "run the job again" in note
    (tmp_path / "results.json").write_text('{"kind": "eval", "status": "ok"}')
    assert detail.load_results(str(tmp_path)) == ({"kind": "eval", "status": "ok"}, "eval ok")
