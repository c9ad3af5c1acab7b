"""train.py under a loss guard restart: the engine's LLMCONSOLE_LR_SCALE and
LLMCONSOLE_RESUME_AT_OR_BEFORE (engine.guard) are honoured on a real run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.workloads.conftest import FAST_TRAIN, results, run_workload


def _lrs(out: Path) -> list[tuple[int, float]]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(x["step"], x["lr"]) for x in lines if "lr" in x]


def test_a_guard_restart_resumes_at_or_before_the_step_with_the_lr_scaled(
        tmp_path: Path, wl_env: dict[str, str]) -> None:
    out = tmp_path / "g"
    args = ["--output", str(out), *FAST_TRAIN, "--max-docs", "150", "--max-steps", "8",
            "--checkpoint-every", "2", "--keep-checkpoints", "8", "--eval-every", "8",
            "--eval-batches", "1", "--lr", "3e-3", "--warmup-steps", "2"]
    run_workload("train", args, wl_env)
    first = dict(_lrs(out))

    restarted = run_workload("train", args, {**wl_env, "LLMCONSOLE_LR_SCALE": "0.5",
                                             "LLMCONSOLE_RESUME_AT_OR_BEFORE": "5"})
    assert "resumed from" in restarted.stdout and "step-000004 at step 4" in restarted.stdout
    assert "loss guard restart: lr x0.5" in restarted.stdout
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    # steps 6 and 8 came from the run being replaced: set aside, never resumed from
    assert "discarded-step-000006" in names and "discarded-step-000008" in names
    assert "step-000002" in names and "step-000008" in names  # 8 written again by the restart
    second = _lrs(out)[len(first):]
    assert [s for s, _ in second] == list(range(5, 9))
    for step, lr in second:
        assert abs(lr - first[step] / 2) <= 1e-12, (step, lr, first[step])
    assert results(out)["status"] == "ok" and results(out)["steps"] == 8
