"""Pictures of the screen with fixed data (pytest-textual-snapshot): the
dashboard (also on a cluster with a node in each state, a drained one
selected), a job's detail (charts, logs, results) and the submit form, at
80x24 and 160x48. Update
them with `pytest tests/console/test_snapshots.py --snapshot-update` and
look at the report before committing."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from console.app import LlmConsole
from console.bridge import Down, FixedBridge, Snapshot

NOW = 1_800_000_000.0


def _job(id_: int, name: str, kind: str, state: str, gpus: int = 0, ago: float = 60,
         profile: str | None = None) -> dict[str, Any]:
    return {"id": id_, "name": name, "kind": kind, "state": state, "owner": "ann",
            "attempt": 1, "priority": 0, "submitted_at": NOW - ago, "updated_at": NOW - ago / 2,
            "after": [], "reason": None, "exit_code": None, "placements": [], "profile": profile,
            "resources": {"nodes": 1, "gpus_per_node": gpus, "cpus": 2, "memory_gb": 0.0},
            "output": None, "waiting": None, "progress": None,
            "started_at": None if state in ("queued", "held") else NOW - ago + 5,
            "ended_at": NOW - ago / 2 if state in ("succeeded", "failed") else None}


def _gpu(index: int, util: float | None, used: int, job: int | None) -> dict[str, Any]:
    return {"index": index, "name": "NVIDIA H100", "util_percent": util,
            "memory_used_mb": used, "memory_total_mb": 81920, "temperature_c": 60 + index,
            "job": job}


NODES = [
    {"name": "gpu1", "up": True, "slots": 64, "slots_used": 8, "jobs": [3],
     "gpus": [_gpu(0, 97, 70000, 3), _gpu(1, 95, 69000, 3), _gpu(2, 2, 30000, 3),
              _gpu(3, 0, 0, None)]},
    {"name": "gpu2", "up": False, "error": "ssh: connection refused", "slots": 64,
     "slots_used": 0, "jobs": [], "gpus": [_gpu(0, None, 0, None)]},
]
JOBS = [
    {**_job(1, "pipeline-tiny/pretrain", "train", "succeeded", ago=3600,
            profile="pretrain-tiny"),
     "progress": {"step": 300, "total": 300, "loss": 2.0412, "tokens_per_s": 8800.0,
                  "time": NOW - 1800}},
    {**_job(2, "pipeline-tiny/prune", "compress", "failed", ago=1800), "attempt": 2,
     "progress": {"step": 40, "total": None, "loss": 3.1, "tokens_per_s": None,
                  "time": NOW - 900}},
    {**_job(3, "llama-7b-finetune", "train", "running", gpus=3, ago=900), "priority": 5,
     "placements": [{"node": "gpu1", "gpus": [0, 1, 2], "cpus": 24}]},
    {**_job(4, "eval; rm -rf ~ [b]x", "eval", "queued", ago=30),
     "waiting": "needs 1 node with 2 CPU slots free; 0 of 1 up node have that now "
                "(gpu1: 0 of 64 slots free); node gpu2 down"},
    {**_job(5, "nightly-pretrain", "train", "held", gpus=8, ago=10), "priority": -1,
     "after": [3], "waiting": "waiting for job 3 to succeed"},
]
METRICS = [{"type": "metric", "job": 3, "attempt": 1, "step": step,
            "time": NOW - 2 * (120 - step),
            "values": {"loss": 4.0 / (1 + step / 20) + (0.1 if step % 3 else 0.0),
                       "lr": 3e-4 * min(1.0, step / 20), "tokens_per_s": 9000 + 40 * (step % 7),
                       "total_steps": 200}}
           for step in range(1, 121)]
METRICS.append({"type": "metric", "job": 3, "attempt": 1, "step": 120,
                "values": {"eval_loss": 1.2}})


FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: Fixed places for what the screens name (a profile in the form's error, an
#: output folder), so the pictures do not depend on the checkout's path.
FIXED = Path("/tmp/llmconsole-snapshot")
FIXED_PROFILES = FIXED / "profiles"
PRUNE_OUTPUT = FIXED / "outputs" / "prune"


def _detail(job: dict[str, Any], argv: list[str], history: list[tuple[str, str, str]]
            ) -> dict[str, Any]:
    start = NOW - 900
    return {**job, "spec": {"argv": argv, "launcher": "horovodrun", "retries": 1,
                            "env": ["HF_HOME"], "resources": job["resources"], "cwd": None},
            "attempts": [{"number": 1, "state": job["state"], "pid": 4242,
                          "placements": [{"node": "gpu1", "gpus": [0, 1, 2], "cpus": 24}],
                          "exit_code": None, "reason": job["reason"], "created_at": start,
                          "started_at": start + 2, "ended_at": None,
                          "cancel_requested": False}],
            "history": [{"attempt": 1, "time": start + i, "from": f or None, "to": t,
                         "cause": c, "actor": "scheduler"}
                        for i, (f, t, c) in enumerate(history)]}


DETAILS = {
    3: _detail(JOBS[2], ["horovodrun", "-np", "3", "python", "-m", "engine.workloads.train",
                         "--preset", "tiny", "--output", "/outputs/llama-7b-finetune"],
               [("", "queued", "submitted by ann"), ("queued", "starting", "placed on gpu1"),
                ("starting", "running", "started")]),
    2: {**_detail({**JOBS[1], "output": str(PRUNE_OUTPUT), "state": "succeeded"},
                  ["python", "-m", "engine.workloads.compress", "--method", "prune"],
                  [("", "queued", "submitted by ann"), ("running", "succeeded", "exit code 0")])},
}


def make_app() -> LlmConsole:
    logs = [f"[{i % 3}]<stdout>:step {i} loss {4.0 / i:.4f}" for i in range(1, 30)]
    logs.insert(0, "horovodrun: 3 workers on gpu1")
    bridge = FixedBridge([Snapshot(NODES, JOBS), *METRICS], logs, details=DETAILS)
    return LlmConsole(bridge=bridge, clock=lambda: NOW)  # type: ignore[arg-type]


async def _loaded(pilot: Any) -> None:
    pilot.app.drain()
    pilot.app.select(3)
    await pilot.pause()


SIZES = [(80, 24), (160, 48)]
SHIPPED = Path(__file__).resolve().parents[2] / "profiles"


@pytest.fixture(autouse=True)
def _fixed_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    FIXED_PROFILES.mkdir(parents=True, exist_ok=True)
    PRUNE_OUTPUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(SHIPPED / "hello.toml", FIXED_PROFILES / "hello.toml")
    shutil.copy(FIXTURES / "prune-results.json", PRUNE_OUTPUT / "results.json")
    monkeypatch.setenv("LLMCONSOLE_PROFILES", str(FIXED_PROFILES))


@pytest.mark.parametrize("size", SIZES)
def test_dashboard(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=_loaded)


def _node(name: str, state: str, reason: str | None, gpus: list[dict[str, Any]],
          rtt: float | None = None, check: dict[str, Any] | None = None,
          jobs: tuple[int, ...] = ()) -> dict[str, Any]:
    return {"name": name, "up": state not in ("down", "untrusted"), "state": state,
            "state_reason": reason, "rtt_ms": rtt, "drained": state == "drained",
            "drain_reason": reason.removeprefix("drained: ") if state == "drained" and reason
            else None, "check": check, "slots": 64, "slots_used": 0, "jobs": list(jobs),
            "gpus": gpus, "cpu_percent": 12.0, "memory_percent": 40.0}


DISK_CHECK = {"node": "gpu1", "ok": False, "time": NOW - 300, "checks": [
    {"check": "link", "ok": True, "detail": "up, 3 ms"},
    {"check": "disk", "ok": False, "detail": "0.4 GB free under /scratch/llmconsole"}]}
CLUSTER = [
    _node("gpu1", "drained", "drained: disk swap at 14:00", [_gpu(0, 96, 70000, 3),
                                                            _gpu(1, 94, 69000, 3)],
          rtt=3.2, check=DISK_CHECK, jobs=(3,)),
    _node("gpu2", "down", "ssh: connect to host gpu2 port 22: Connection refused",
          [_gpu(0, None, 0, None)]),
    _node("gpu3-with-a-long-name", "untrusted", "host key unknown: gpu3 offers ED25519 key "
          "SHA256:abc, which is not in ~/.ssh/known_hosts", [_gpu(0, None, 0, None)]),
    _node("gpu4", "suspect", "silent for 12s", [_gpu(0, 40, 1000, None)], rtt=41.0),
    _node("gpu5", "incompatible", "torch 2.1.0 here, 2.13.0 on the head node",
          [_gpu(0, 0, 0, None)], rtt=2.0),
    _node("head", "up", None, [], rtt=0.4),
]


@pytest.mark.parametrize("size", SIZES)
def test_dashboard_of_a_cluster_with_a_drained_node(snap_compare: Any,
                                                    size: tuple[int, int]) -> None:
    """Every node state in words in the NODE column, the round trips, and
    under the panel the selected (drained) node's reason and failed check."""
    bridge = FixedBridge([Snapshot(CLUSTER, JOBS), *METRICS], details=DETAILS)
    app = LlmConsole(bridge=bridge, clock=lambda: NOW)  # type: ignore[arg-type]

    async def gpu_panel_focused(pilot: Any) -> None:
        await _loaded(pilot)
        pilot.app.gpu_table.focus()
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=gpu_panel_focused)


async def settle(pilot: Any, lines: int = 1) -> None:
    """Wait for the detail's fetches and for at least `lines` log lines on
    screen (the log follower runs until the screen closes, so it is not
    waited for)."""
    app = pilot.app
    fetches = [w for w in app.workers if w.group != "logs"]
    if fetches:  # an empty list would mean "all", the follower included
        await app.workers.wait_for_complete(fetches)
    for _ in range(100):
        app.drain()
        if getattr(app.screen, "lines", None) is None or len(app.screen.lines) >= lines:
            break
        await pilot.pause(0.05)
    await pilot.pause(0.1)


def steady_cursors(pilot: Any) -> None:
    """A text box's caret blinks twice a second, so a picture would catch it
    on or off by chance: hold it on."""
    for box in pilot.app.screen.query(Input):
        box.cursor_blink = False


def _open(key: str, then: tuple[str, ...] = (), job: int = 3) -> Any:
    """Select `job`, open its detail with `key`, let the fetches land, then
    press `then`."""
    async def run_before(pilot: Any) -> None:
        await _loaded(pilot)
        pilot.app.select(job)
        await pilot.press(key)
        await settle(pilot)
        await pilot.press(*then)
        await pilot.pause(0.2)
        steady_cursors(pilot)
    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_job_detail_charts(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=_open("d"))


@pytest.mark.parametrize("size", SIZES)
def test_job_logs_one_rank_searched(snap_compare: Any, size: tuple[int, int]) -> None:
    keys = ("right_square_bracket", "right_square_bracket", "slash", *"loss 0.1")
    assert snap_compare(make_app(), terminal_size=size, run_before=_open("l", keys))


@pytest.mark.parametrize("size", SIZES)
def test_job_results_of_a_compression(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=_open("d", ("5",), job=2))


@pytest.mark.parametrize("size", SIZES)
def test_submit_form_with_an_error(snap_compare: Any, size: tuple[int, int]) -> None:
    async def bad_submit(pilot: Any) -> None:
        await _loaded(pilot)
        await pilot.press("s")
        await pilot.pause()
        await pilot.press(*"hello", "tab", *"resources.gpus_per_node=-1", "enter")
        await pilot.pause()
        steady_cursors(pilot)

    assert snap_compare(make_app(), terminal_size=size, run_before=bad_submit)


def test_dashboard_wide_names_and_where(snap_compare: Any) -> None:
    """At 240 columns names and WHERE widen; PRI, TRY and RUN stay."""
    assert snap_compare(make_app(), terminal_size=(240, 60), run_before=_loaded)


def test_dashboard_a_queued_job_says_why_it_waits(snap_compare: Any) -> None:
    """80x24: the selected queued job's line is the engine's reason in words;
    names are cut in the middle ("pipeli…/pretrain", "pipeline…y/prune")."""
    async def queued(pilot: Any) -> None:
        await _loaded(pilot)
        pilot.app.select(4)
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=(80, 24), run_before=queued)


def test_dashboard_stale_during_an_outage(snap_compare: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine lost: the banner, the tables dimmed and the status line
    say since when what they show is stale."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    bridge = FixedBridge([Snapshot(NODES, JOBS), *METRICS,
                          Down("[Errno 111] Connection refused", 0.1)], details=DETAILS)
    app = LlmConsole(bridge=bridge, clock=lambda: NOW)  # type: ignore[arg-type]
    try:
        assert snap_compare(app, terminal_size=(100, 30), run_before=_loaded)
    finally:
        monkeypatch.undo()  # TZ as it was, for the tests after this one
        time.tzset()


#: Held-out loss every 30 steps besides the last: the chart shows all three
#: series (raw, smoothed, held-out) apart.
EVALS = [{"type": "metric", "job": 3, "attempt": 1, "step": step,
          "values": {"eval_loss": 4.0 / (1 + step / 20) - 0.15}} for step in (30, 60, 90)]


def three_series_app() -> LlmConsole:
    bridge = FixedBridge([Snapshot(NODES, JOBS), *METRICS[:-1], *EVALS, METRICS[-1]],
                         [f"step {i}" for i in range(1, 5)], details=DETAILS)
    return LlmConsole(bridge=bridge, clock=lambda: NOW)  # type: ignore[arg-type]


EVERY_SIZE = [((120, 36), False), ((80, 24), True), ((120, 36), True)]


@pytest.mark.parametrize(("size", "no_color"), EVERY_SIZE)
def test_dashboard_loss_chart_three_series(snap_compare: Any, monkeypatch: pytest.MonkeyPatch,
                                           size: tuple[int, int], no_color: bool) -> None:
    """Raw loss in braille dots, smoothed in half blocks, held-out as
    diamonds, the legend on the title line (not over the curve's start);
    under NO_COLOR each is still its own glyph and readable."""
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")  # read (and popped) by the App's __init__
    assert snap_compare(three_series_app(), terminal_size=size, run_before=_loaded)


@pytest.mark.parametrize(("size", "no_color"), EVERY_SIZE)
def test_job_detail_charts_three_series(snap_compare: Any, monkeypatch: pytest.MonkeyPatch,
                                        size: tuple[int, int], no_color: bool) -> None:
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(three_series_app(), terminal_size=size, run_before=_open("d"))


def test_dashboard_jobs_and_chart_at_80x24(snap_compare: Any) -> None:
    """z once: the GPU panel gives its rows to the jobs and the chart."""
    async def toggled(pilot: Any) -> None:
        await _loaded(pilot)
        await pilot.press("z")
        pilot.app.clear_notifications()
        await pilot.pause()

    assert snap_compare(three_series_app(), terminal_size=(80, 24), run_before=toggled)
