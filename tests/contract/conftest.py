"""Fixtures for the store's contract tests: a real SQLite file per test and a
monotonic fake clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.store import Store


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
