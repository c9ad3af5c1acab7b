"""A prepare job made visible: its progress (documents read of the estimated
total, documents/s, tokens/s, removed so far, ETA) on the dashboard and in
the job detail, and its manifest.json's summary in the Results tab and in
`llmconsole show ID`. Against a real engine running a real prepare-kind job
(a small script that writes the contract's metrics.jsonl lines and, last, an
output folder's manifest.json), so it does not need the prepare workload."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from textual.widgets import DataTable, Static

from chaos.engine_handle import EngineHandle
from console import detail
from console.app import LlmConsole
from console.screens import JobScreen
from console.state import ConsoleState, Progress, duration, progress_line
from engine.client import EngineClient
from engine.workloads import manifest_view
from tests.console.test_app import engine, job_cells, until  # noqa: F401  (engine: the fixture)
from tests.unit.test_manifest_view import manifest

#: (documents read, estimated total, documents/s, tokens/s, removed) the job reports.
POINTS = ((6_200, 50_000, 800.0, 1_100_000.0, 500), (12_400, 50_000, 830.0, 1_200_000.0, 1_200))
FINAL = (50_000, 50_000, 900.0, 1_300_000.0, 5_880)

#: A prepare-kind job: progress points as the contract says, then it waits
#: for the test's go file, reports its last point and writes manifest.json
#: atomically, last, in its --output folder.
SCRIPT = """\
import json, os, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
points, final = json.loads(args["--points"]), json.loads(args["--final"])
out = args["--output"]
metrics = open(os.path.join(os.environ["LLMCONSOLE_RUN_DIR"], "metrics.jsonl"), "a")

def report(step, total, docs_per_s, tokens_per_s, removed, phase):
    metrics.write(json.dumps({"step": step, "total_steps": total, "documents_per_s": docs_per_s,
                              "tokens_per_s": tokens_per_s, "removed": removed,
                              "kept": step - removed, "phase": phase}) + "\\n")
    metrics.flush()

for point in points:
    report(*point, "filter")
print("prepare: waiting for", args["--go"], flush=True)
while not os.path.exists(args["--go"]):
    time.sleep(0.05)
report(*final, "tokenize")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "manifest.json.tmp"), "w") as f:
    f.write(args["--manifest"])
os.replace(os.path.join(out, "manifest.json.tmp"), os.path.join(out, "manifest.json"))
time.sleep(0.5)  # the agent reads the last points before the exit
"""


def submit_prepare(tmp_path: Path, data: dict[str, Any]) -> tuple[int, Path, Path]:
    """(job id, its output folder, the file that lets it finish)."""
    out, go = tmp_path / "prepared", tmp_path / "go"
    argv = [sys.executable, "-c", SCRIPT, "--points", json.dumps(POINTS),
            "--final", json.dumps(FINAL), "--go", str(go), "--manifest", json.dumps(data),
            "--output", str(out)]
    spec = {"name": "prep", "kind": "prepare", "argv": argv, "launcher": "local",
            "resources": {"nodes": 1, "gpus_per_node": 0, "cpus": 1, "memory_gb": 0}}
    with EngineClient() as client:
        job = client.submit(spec)
    assert job["output"] == str(out)  # a prepare job's output folder is its --output
    return int(job["id"]), out, go


def words(step: int, total: int, docs_per_s: float, tokens_per_s: float, removed: int
          ) -> list[str]:
    """What the screen should say of a point, built from its numbers (an
    ETA while documents are left to read)."""
    return [f"{step:,}/{total:,} docs", f"{docs_per_s:,.0f} docs/s",
            f"{tokens_per_s / 1e6:.1f}M tok/s", f"{removed:,} removed",
            *([f"ETA {duration((total - step) / docs_per_s)}"] if step < total else [])]


# ------------------------------------------------------------------ pure
def test_a_prepare_jobs_progress_reads_in_words() -> None:
    s = ConsoleState()
    s.apply([{"type": "job", "job": {"id": 4, "name": "prep", "kind": "prepare",
                                      "state": "running", "owner": "ann", "attempt": 1}}])
    for step, total, dps, tps, removed in POINTS:
        s.apply([{"type": "metric", "job": 4, "attempt": 1, "step": step,
                  "values": {"total_steps": total, "documents_per_s": dps,
                             "tokens_per_s": tps, "removed": removed,
                             "kept": step - removed}, "time": 100.0 + step / dps}])
    p = s.job_progress(4)
    assert p.is_prepare and (p.step, p.total, p.removed) == (12_400, 50_000, 1_200)
    assert progress_line(p) == ", ".join(words(*POINTS[-1]))
    assert progress_line(p) == "12,400/50,000 docs, 830 docs/s, 1.2M tok/s, 1,200 removed, " \
                               "ETA 0:45"
    # a training's line is unchanged: steps, tokens/s, ETA from steps/s
    assert progress_line(Progress(step=120, total=200, tokens_per_s=1200.0, rate=2.0)) == \
        "120/200 1.2k tok/s ETA 0:40"
    # before the total is estimated: the documents read, no ETA
    assert progress_line(Progress(step=300, documents_per_s=100.0, removed=0)) == \
        "300 docs, 100 docs/s, 0 removed"


def test_the_results_table_of_a_prepare_output_is_its_manifest_summary(tmp_path: Path) -> None:
    data = manifest()
    data_none, why = detail.load_results(str(tmp_path), "prepare")
    assert data_none is None and "manifest.json appears when the prepare job finishes" in why
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    for kind in ("prepare", None):  # found by kind, or by the file alone
        loaded, note = detail.load_results(str(tmp_path), kind)
        assert loaded == data and note == manifest_view.headline(data)
    headers, rows = detail.results_table(data)
    assert headers == ["what", "value"] and rows == manifest_view.summary_rows(data)


# ------------------------------------------------------------------ real engine
async def test_progress_on_the_dashboard_and_detail_then_the_manifest_in_results(
        engine: EngineHandle, tmp_path: Path) -> None:  # noqa: F811
    data = manifest()
    app = LlmConsole()
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.connected)
        job_id, out, go = submit_prepare(tmp_path, data)
        await until(pilot, lambda: job_id in app.state.jobs)
        app.select(job_id)
        step, total = POINTS[-1][:2]
        # the jobs table: the share of the estimated total read (its STEP
        # column is 9 cells wide at 120 columns), no loss
        share = f"{100 * step / total:.0f}%"
        await until(pilot, lambda: share in job_cells(app, job_id))
        cells = job_cells(app, job_id)
        assert cells[2] == "prepare" and cells[cells.index(share) + 1] == "-"
        # the panel beside it: every part in words, a line each
        label = app.query_one("#losslabel", Static)
        expected = f"job {job_id} " + "\n".join(words(*POINTS[-1]))
        await until(pilot, lambda: str(label.render()) == expected)

        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, JobScreen))
        screen = app.screen
        assert isinstance(screen, JobScreen)
        title = screen.query_one("#jobtitle", Static)
        await until(pilot, lambda: ", ".join(words(*POINTS[-1])) in str(title.render()))
        await pilot.press("5")
        info = screen.query_one("#resultsinfo", Static)
        await until(pilot, lambda: "manifest.json appears when the prepare job finishes"
                    in str(info.render()))

        go.write_text("")
        await until(pilot, lambda: app.state.jobs[job_id]["state"] == "succeeded")
        table = screen.query_one("#resultstable", DataTable)
        rows = manifest_view.summary_rows(data)
        await until(pilot, lambda: table.row_count == len(rows))
        shown = [tuple(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
        assert shown == rows
        assert ("  exact duplicate", "2,500 (5.0%)") in shown
        assert ("  invalid JSON", "data/part-0.jsonl:10") in shown
        assert str(info.render()) == manifest_view.headline(data)
        # the last point: all documents read, so no ETA (dedup and tokenizing follow)
        await until(pilot, lambda: ", ".join(words(*FINAL)) in str(title.render()))
        assert "ETA" not in str(title.render())
    assert (out / "manifest.json").is_file()


def test_show_prints_the_manifest_summary(engine: EngineHandle,  # noqa: F811
                                          tmp_path: Path) -> None:
    data = manifest()
    job_id, out, go = submit_prepare(tmp_path, data)
    engine.wait_state(job_id, ["running"])
    before = engine.cli("show", str(job_id)).stdout
    assert "prepared data" not in before and f"output     {out}" in before
    go.write_text("")
    engine.wait_state(job_id, ["succeeded"])
    text = engine.cli("show", str(job_id)).stdout
    expected = "\n".join("  " + line for line in manifest_view.summary_lines(data))
    assert text.rstrip("\n").endswith(expected)
    assert "  prepared data: kept 44,120 of 50,000 documents (88.2%)" in text
    rule = next(line for line in text.splitlines() if "exact duplicate" in line)
    assert rule.startswith("      exact duplicate ") and rule.endswith(" 2,500 (5.0%)")
    assert engine.json("show", str(job_id))["manifest"] == data
