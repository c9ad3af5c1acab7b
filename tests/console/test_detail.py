"""The job detail's pure parts: ranks, log search, history rows, the spec
and results tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, RichLog, Static

from chaos.engine_handle import EngineHandle
from console import detail
from console.screens import JobScreen, SavePathScreen
from tests.console.test_app import engine  # noqa: F401  (the fixture)

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


# ------------------------------------------------------------------ logs like less
def test_matches_and_next_match_wrap_like_less() -> None:
    lines = ["a loss", "b", "c LOSS", "d", "e loss"]
    found = detail.matches(lines, "loss")
    assert found == [0, 2, 4] and detail.matches(lines, "") == []
    assert detail.next_match(found, None, 1, start=1) == 1  # first at or after the view's top
    assert detail.next_match(found, None, 1, start=5) == 0  # none below: from the top
    assert detail.next_match(found, 2, 1) == 0 and detail.next_match(found, 0, -1) == 2
    assert detail.next_match([], None, 1) is None


def test_every_rank_of_the_world_is_offered_and_silent_ones_said() -> None:
    job = {"resources": {"nodes": 2, "gpus_per_node": 2}}
    assert detail.world_size(job) == 4
    assert detail.world_size({"spec": {"argv": ["horovodrun", "-np", "3", "python"],
                                       "resources": {"nodes": 1}}}) == 3
    assert detail.world_size({"resources": {"nodes": 1, "cpus": 2}}) is None
    assert detail.rank_choices([1], 4) == [0, 1, 2, 3]
    assert detail.rank_choices([5], None) == [5]
    assert detail.rank_note(3, {1: 10}) == "rank 3: no lines yet"
    assert detail.rank_note(1, {1: 10}) == "rank 1 (10 lines)"
    assert detail.rank_note(None, {}) == "all ranks"


def test_default_log_path_is_in_the_folder_and_safe() -> None:
    path = detail.default_log_path({"id": 7, "name": "pipeline/pre train"}, 2, "/here")
    assert path == "/here/job-7-pipeline-pre-train-attempt-2.log"


def _screen_app(logs: list[str], job: dict[str, Any] | None = None) -> Any:
    from console.app import LlmConsole
    from console.bridge import FixedBridge, Snapshot
    from tests.console.test_snapshots import DETAILS, JOBS, NODES, NOW

    jobs = [*JOBS, job] if job else JOBS
    details = {**DETAILS, **({job["id"]: job} if job else {})}
    bridge = FixedBridge([Snapshot(NODES, jobs)], logs, details=details)
    return LlmConsole(bridge=bridge, clock=lambda: NOW)  # type: ignore[arg-type]


async def _open_logs(pilot: Any, job_id: int, lines: int) -> JobScreen:
    from tests.console.test_snapshots import settle

    pilot.app.drain()
    pilot.app.select(job_id)
    await pilot.press("l")
    await settle(pilot, lines=lines)
    screen = pilot.app.screen
    assert isinstance(screen, JobScreen) and screen.job_id == job_id
    return screen


def _log_text(screen: JobScreen) -> list[str]:
    return [line.text for line in screen.query_one("#log", RichLog).lines]


def _info(screen: JobScreen) -> str:
    return str(screen.query_one("#loginfo", Static).render())


async def test_search_keeps_the_whole_log_and_n_jumps_between_matches() -> None:
    logs = [f"line {i}" + (" loss" if i % 25 == 0 else "") for i in range(200)]
    app = _screen_app(logs)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await _open_logs(pilot, 3, lines=200)
        log = screen.query_one("#log", RichLog)
        await pilot.press("slash", *"loss", "enter")
        await pilot.pause(0.1)
        assert len(_log_text(screen)) == 200  # not a filter: every line stays
        assert screen.found == [0, 25, 50, 75, 100, 125, 150, 175]
        # enter from the bottom of a followed log: none below, so from the top
        assert "match 1/8" in _info(screen) and not screen.follow
        assert log.scroll_y == 0
        await pilot.press("n", "n")
        await pilot.pause(0.1)
        assert "match 3/8" in _info(screen)
        assert log.scroll_y == 50 - 3  # three lines of context above the match
        # the current match is drawn apart from the others
        row = log.lines[50]
        styles = {str(seg.style) for seg in row if "loss" in seg.text}
        assert any("underline" in s for s in styles)
        assert not any("underline" in str(seg.style) for seg in log.lines[25])
        await pilot.press("N", "N", "N")
        await pilot.pause(0.1)
        assert "match 8/8" in _info(screen) and log.scroll_y == 175 - 3
        await pilot.press("ampersand")  # less's &: only the matching lines
        await pilot.pause(0.1)
        assert _log_text(screen) == [logs[i] for i in range(0, 200, 25)]
        await pilot.press("escape")  # ends the search, the whole log again
        await pilot.pause(0.1)
        assert len(_log_text(screen)) == 200 and screen.needle == ""
        assert isinstance(app.screen, JobScreen)


async def test_top_bottom_and_wrap() -> None:
    long = "x" * 150 + " end"
    logs = [f"line {i}" for i in range(100)] + [long]
    app = _screen_app(logs)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await _open_logs(pilot, 3, lines=101)
        log = screen.query_one("#log", RichLog)
        await pilot.press("g")
        await pilot.pause(0.1)
        assert log.scroll_y == 0 and not screen.follow and "paused" in _info(screen)
        await pilot.press("G")
        await pilot.pause(0.1)
        assert log.scroll_y == log.max_scroll_y > 0 and screen.follow
        await pilot.press("home")
        await pilot.pause(0.1)
        assert log.scroll_y == 0 and not screen.follow
        await pilot.press("end")
        await pilot.pause(0.1)
        assert screen.follow
        assert len(log.lines) == 101  # unwrapped: one row per line
        await pilot.press("w")
        await pilot.pause(0.1)
        assert screen.wrap and len(log.lines) > 101 and "wrap" in _info(screen)
        assert "".join(_log_text(screen)[-3:]).replace(" ", "").endswith("xend")
        await pilot.press("w")
        await pilot.pause(0.1)
        assert len(log.lines) == 101


async def test_silent_ranks_are_listed_from_the_world_size() -> None:
    from tests.console.test_snapshots import DETAILS

    # job 3 asks for one node of 3 GPUs: ranks 0, 1, 2, of which 2 never wrote
    assert detail.world_size(DETAILS[3]) == 3
    app = _screen_app(["launcher", "[0]<stdout>:a", "[1]<stdout>:b"])
    async with app.run_test(size=(120, 30)) as pilot:
        screen = await _open_logs(pilot, 3, lines=3)
        await until_screen(pilot, lambda: screen.ranks == [0, 1, 2])
        assert "ranks 0, 1, 2" in _info(screen)
        await pilot.press("left_square_bracket")  # all -> rank 2 (the last)
        await pilot.pause(0.1)
        assert screen.rank == 2 and "rank 2: no lines yet" in _info(screen)
        assert _log_text(screen) == ["launcher"]  # the launcher's lines stay


async def until_screen(pilot: Any, predicate: Any, timeout: float = 10.0) -> None:
    import asyncio
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out waiting on the screen"
        pilot.app.drain()
        await pilot.pause(0.05)


async def test_ctrl_s_saves_the_engines_bytes(engine: EngineHandle, tmp_path: Path,  # noqa: F811
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from console.app import LlmConsole
    from engine.client import EngineClient

    script = ("import sys\nfor i in range(30):\n    print('line', i)\n"
              "sys.stdout.flush()\nsys.stdout.buffer.write(b'not utf-8: \\xff\\xfe\\n')\n")
    engine.write_profile("bytes", 'kind = "command"\n'
                         f'command = ["python3", "-c", {json.dumps(script)}]\n')
    job_id = engine.submit("bytes")
    engine.wait_state(job_id, ["succeeded"])
    monkeypatch.chdir(tmp_path)
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until_screen(pilot, lambda: job_id in app.state.jobs)
        app.select(job_id)
        await pilot.press("l")
        await until_screen(pilot, lambda: isinstance(app.screen, JobScreen)
                           and len(app.screen.lines) >= 31)
        await pilot.press("ctrl+s")
        await until_screen(pilot, lambda: isinstance(app.screen, SavePathScreen))
        box = app.screen.query_one("#savepath", Input)
        expected = tmp_path / f"job-{job_id}-bytes-attempt-1.log"
        assert box.value == str(expected)  # a default in the current folder
        await pilot.press("enter")
        await until_screen(pilot, lambda: expected.exists() and any(
            "saved to" in n.message for n in app._notifications))
        with EngineClient() as client:
            engine_bytes = b"".join(client.logs(job_id).raw())
        assert expected.read_bytes() == engine_bytes
        assert b"\xff\xfe" in engine_bytes and b"line 29\n" in engine_bytes
        note = next(n.message for n in app._notifications if "saved to" in n.message)
        assert f"{len(engine_bytes):,} bytes" in note and str(expected) in note
        assert "\n" not in note  # one line


# ------------------------------------------------------------------ results of a pipeline
def _fake_results(folder: Path, data: dict[str, Any]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(data))
    return str(folder)


def test_comparison_of_a_pipelines_last_job(tmp_path: Path) -> None:
    from engine.workloads import compare

    stages = [_fake_results(tmp_path / "pretrain", {"kind": "train", "parameters": 1000,
                                                     "perplexity": 40.0}),
              _fake_results(tmp_path / "prune", {"kind": "compress", "method": "prune",
                                                  "after": {"parameters": 1000,
                                                            "nonzero_parameters": 500,
                                                            "perplexity": 42.5}})]
    evaluate = tmp_path / "evaluate"
    job = {"output": str(evaluate), "spec": {"argv": ["python", "-m", "engine.workloads.evaluate",
                                                       "--model", "m", "--compare", *stages,
                                                       "--output", str(evaluate)]}}
    # no comparison.json yet: built from the folders after --compare, as the CLI would
    headers, cells, source = detail.comparison(job) or ([], [], "")
    expected = compare.comparison_rows(compare.load_results(stages))
    assert (headers, cells) == expected and source.startswith("llmconsole compare ")
    # the evaluate job's comparison.json (written by the pipeline) wins
    evaluate.mkdir()
    rows = compare.load_results(stages[:1])
    (evaluate / "comparison.json").write_text(json.dumps(compare.to_json(rows)))
    headers, cells, source = detail.comparison(job) or ([], [], "")
    assert (headers, cells) == compare.comparison_rows(rows)
    assert source == str(evaluate / "comparison.json")
    assert detail.comparison({"output": str(tmp_path / "pretrain"), "spec": {}}) is None
    assert "tensorboard --logdir" in detail.tensorboard_line(str(evaluate))


async def results_tab(app: Any, pilot: Any, job_id: int, table_id: str
                      ) -> tuple[JobScreen, list[list[str]]]:
    """Open job `job_id`'s detail on its Results tab (5): the screen and the
    cells of its table `table_id`."""
    from tests.console.test_snapshots import settle

    app.drain()
    app.select(job_id)
    await pilot.press("d")
    await settle(pilot, lines=0)
    await pilot.press("5")
    await pilot.pause(0.1)
    screen = app.screen
    assert isinstance(screen, JobScreen)
    table = screen.query_one(table_id, DataTable)
    return screen, [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def test_results_tab_of_a_pipelines_evaluate_job(tmp_path: Path) -> None:
    from tests.console.test_snapshots import DETAILS, JOBS

    stages = [_fake_results(tmp_path / "pretrain", {"kind": "train", "parameters": 1000,
                                                     "perplexity": 40.0}),
              _fake_results(tmp_path / "quantize", {"kind": "compress", "method": "int8",
                                                     "after": {"size_bytes": 2_000_000,
                                                               "perplexity": 41.0}})]
    evaluate = tmp_path / "evaluate"
    _fake_results(evaluate, {"kind": "eval", "status": "ok", "perplexity": 41.0,
                             "comparison": ["pretrain", "quantize"]})
    (evaluate / "tensorboard").mkdir()
    base = JOBS[1]
    job = {**DETAILS[2], **{k: base[k] for k in ("resources",)}, "id": 9,
           "name": "pipeline-tiny/evaluate", "state": "succeeded", "output": str(evaluate),
           "spec": {**DETAILS[2]["spec"], "argv": ["python", "-m", "engine.workloads.evaluate",
                                                   "--compare", *stages]}}
    app = _screen_app([], job)
    async with app.run_test(size=(120, 40)) as pilot:
        screen, got = await results_tab(app, pilot, 9, "#comparisontable")
        from engine.workloads import compare
        assert got == compare.comparison_rows(compare.load_results(stages))[1]
        board = str(screen.query_one("#tensorboard", Static).render())
        assert f"tensorboard --logdir {evaluate / 'tensorboard'}" in board
        assert "perplexity" in str(screen.query_one("#resultstable", DataTable).get_row_at(0))
