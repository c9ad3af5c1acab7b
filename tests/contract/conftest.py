"""Fixtures for the store's contract tests: a real SQLite file per test, a
monotonic fake clock, and a small JobSpec factory."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.model import JobSpec, Resources
from engine.store import Store

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().with_name("store_worker.py")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "engine.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store(db_path) as s:
        yield s


@pytest.fixture
def clock() -> Callable[[], float]:
    ticks = itertools.count(1)
    return lambda: 1_700_000_000.0 + next(ticks)


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
