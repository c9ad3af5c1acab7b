"""Pictures of the screen with fixed data (pytest-textual-snapshot): the
dashboard, a job's log and the submit form, at 80x24 and 160x48. Update
them with `pytest tests/console/test_snapshots.py --snapshot-update` and
look at the report before committing."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from console.app import LlmConsole
from console.bridge import FixedBridge, Snapshot

NOW = 1_800_000_000.0


def _job(id_: int, name: str, kind: str, state: str, gpus: int = 0, ago: float = 60,
         profile: str | None = None) -> dict[str, Any]:
    return {"id": id_, "name": name, "kind": kind, "state": state, "owner": "ann",
            "attempt": 1, "priority": 0, "submitted_at": NOW - ago, "updated_at": NOW - ago / 2,
            "after": [], "reason": None, "exit_code": None, "placements": [], "profile": profile,
            "resources": {"nodes": 1, "gpus_per_node": gpus, "cpus": 2, "memory_gb": 0.0},
            "output": None}


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
    _job(1, "pipeline-tiny/pretrain", "train", "succeeded", ago=3600, profile="pretrain-tiny"),
    _job(2, "pipeline-tiny/prune", "compress", "failed", ago=1800),
    _job(3, "llama-7b-finetune", "train", "running", gpus=3, ago=900),
    _job(4, "eval; rm -rf ~ [b]x", "eval", "queued", ago=30),
    _job(5, "nightly-pretrain", "train", "held", gpus=8, ago=10),
]
METRICS = [{"type": "metric", "job": 3, "attempt": 1, "step": step,
            "values": {"loss": 4.0 / (1 + step / 20) + (0.1 if step % 3 else 0.0)}}
           for step in range(1, 121)]
METRICS.append({"type": "metric", "job": 3, "attempt": 1, "step": 120,
                "values": {"eval_loss": 1.2}})


def make_app() -> LlmConsole:
    logs = [f"[0]<stdout>:step {i} loss {4.0 / i:.4f}" for i in range(1, 30)]
    bridge = FixedBridge([Snapshot(NODES, JOBS), *METRICS], logs)
    return LlmConsole(bridge=bridge, clock=lambda: NOW)  # type: ignore[arg-type]


async def _loaded(pilot: Any) -> None:
    pilot.app.drain()
    pilot.app.selected = 3
    pilot.app.render_jobs()
    pilot.app.render_loss()
    await pilot.pause()


SIZES = [(80, 24), (160, 48)]
SHIPPED = Path(__file__).resolve().parents[2] / "profiles"
#: A fixed place for the profile the form names in its error, so the picture
#: does not depend on where the repository is checked out.
FIXED_PROFILES = Path("/tmp/llmconsole-snapshot-profiles")


@pytest.fixture(autouse=True)
def _fixed_profile_path(monkeypatch: pytest.MonkeyPatch) -> None:
    FIXED_PROFILES.mkdir(exist_ok=True)
    shutil.copy(SHIPPED / "hello.toml", FIXED_PROFILES / "hello.toml")
    monkeypatch.setenv("LLMCONSOLE_PROFILES", str(FIXED_PROFILES))


@pytest.mark.parametrize("size", SIZES)
def test_dashboard(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=_loaded)


@pytest.mark.parametrize("size", SIZES)
def test_job_logs(snap_compare: Any, size: tuple[int, int]) -> None:
    async def open_logs(pilot: Any) -> None:
        await _loaded(pilot)
        await pilot.press("l")
        await pilot.pause(0.3)

    assert snap_compare(make_app(), terminal_size=size, run_before=open_logs)


@pytest.mark.parametrize("size", SIZES)
def test_submit_form_with_an_error(snap_compare: Any, size: tuple[int, int]) -> None:
    async def bad_submit(pilot: Any) -> None:
        await _loaded(pilot)
        await pilot.press("s")
        await pilot.pause()
        await pilot.press(*"hello", "tab", *"resources.gpus_per_node=-1", "enter")
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=size, run_before=bad_submit)
