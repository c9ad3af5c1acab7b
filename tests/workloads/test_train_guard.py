"""train.py under a loss guard restart: the engine's LLMCONSOLE_LR_SCALE and
LLMCONSOLE_RESUME_AT_OR_BEFORE (engine.guard) are honoured on a real run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.workloads.train import lr_factor
from tests.workloads.conftest import FAST_TRAIN, results, run_workload


def test_a_guard_restart_resumes_at_or_before_the_step_with_the_lr_scaled(
        tmp_path: Path, wl_env: dict[str, str], trained: Path) -> None:
    # the session's 60-step run saved step 60; a "step 64" stands for one
    # the diverged attempt wrote after the last good step
    out = tmp_path / "g"
    saved = out / "checkpoints"
    saved.mkdir(parents=True)
    shutil.copytree(trained / "checkpoints" / "step-000060", saved / "step-000060")
    shutil.copytree(trained / "checkpoints" / "step-000060", saved / "step-000064")
    args = ["--output", str(out), *FAST_TRAIN, "--max-steps", "64", "--lr", "3e-3",
            "--eval-every", "64", "--checkpoint-every", "64"]  # the options trained ran with
    restarted = run_workload("train", args, {**wl_env, "LLMCONSOLE_LR_SCALE": "0.5",
                                             "LLMCONSOLE_RESUME_AT_OR_BEFORE": "62"})
    assert "step-000060 at step 60" in restarted.stdout, restarted.stdout
    assert "loss guard restart: lr x0.5" in restarted.stdout
    assert sorted(p.name for p in saved.iterdir()) == [
        "discarded-step-000064", "step-000060", "step-000064"]  # 64 written again
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [(x["step"], x["lr"]) for x in lines if "lr" in x]
    assert [s for s, _ in lrs] == [61, 62, 63, 64]
    for step, lr in lrs:  # half the lr the schedule gives (warmup 10, cosine to 0.1)
        assert abs(lr - 0.5 * 3e-3 * lr_factor(step, 10, 64, "cosine", 0.1)) <= 1e-12
    assert results(out)["status"] == "ok" and results(out)["steps"] == 64
