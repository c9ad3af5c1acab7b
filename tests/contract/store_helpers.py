"""Helpers shared by the store's contract tests (not a test file)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine.model import JobSpec, Resources

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().with_name("store_worker.py")


def make_spec(name: str = "job", **kw: object) -> JobSpec:
    fields: dict[str, object] = {
        "name": name,
        "kind": "train",
        "argv": ("python", "-m", "train", f"--name={name}"),
        "resources": Resources(nodes=1, gpus_per_node=1, cpus=4, memory_gb=16.0),
    }
    fields.update(kw)
    return JobSpec(**fields)  # type: ignore[arg-type]


def worker(*args: str) -> subprocess.Popen[str]:
    """A separate Python process running store_worker.py with `args`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
