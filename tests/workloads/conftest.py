"""Fixtures for the workload tests: a tiny corpus-trained model, made once
per session by the real training program, and a helper to run workloads as
the subprocesses they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

#: Small enough for 2 CPU cores: the micro preset on 400 demo documents.
FAST_TRAIN = ["--model", "micro", "--max-docs", "400", "--block-size", "64",
              "--vocab-size", "512", "--batch-size", "8", "--log-every", "1",
              "--eval-batches", "4"]


def workload_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMCONSOLE_")}
    env["XDG_CACHE_HOME"] = str(tmp / "cache")  # the demo corpus cache, per session
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_workload(module: str, args: Sequence[str], env: dict[str, str],
                 check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", f"engine.workloads.{module}", *args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture(scope="session")
def wl_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return workload_env(tmp_path_factory.mktemp("wl-env"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, wl_env: dict[str, str]) -> Path:
    """The output folder of a 60-step pre-training run of the micro model."""
    out = tmp_path_factory.mktemp("trained") / "out"
    run_workload("train", ["--output", str(out), *FAST_TRAIN, "--max-steps", "60",
                           "--lr", "3e-3", "--eval-every", "60", "--checkpoint-every", "60"],
                 wl_env)
    return out


@pytest.fixture(scope="session")
def classifier(tmp_path_factory: pytest.TempPathFactory, trained: Path,
               wl_env: dict[str, str]) -> Path:
    """The output folder of a 5-step classification fine-tune of `trained`
    (the demo docstrings labelled by package), shared by the tests that
    read the fine-tune's own folder and those that evaluate it."""
    out = tmp_path_factory.mktemp("classifier") / "cls"
    run_workload("train", ["--task", "classification", "--model", str(trained),
                           "--output", str(out), "--max-steps", "5",
                           "--block-size", "64", "--batch-size", "8", "--eval-every", "5",
                           "--checkpoint-every", "5"], wl_env)
    return out
