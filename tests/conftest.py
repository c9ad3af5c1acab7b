"""Fixtures for every test folder: `engine`, a real daemon in a throw-away
home, driven through the real CLI (see chaos/engine_handle.py)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator

import pytest

from chaos.engine_handle import EngineHandle, new_engine

# Under PYTHONDONTWRITEBYTECODE (this VM's environment sets it) pytest
# rewrites the asserts of every test module again on every run: some 30 s
# of collection on 2 cores. The rewritten modules are kept in the tests'
# __pycache__ (ignored by git) whatever the variable says; the processes the
# tests start still see it.
sys.dont_write_bytecode = False


@pytest.fixture
def engine() -> Iterator[EngineHandle]:
    handle = new_engine()
    try:
        yield handle
    finally:
        handle.close()
        shutil.rmtree(handle.home, ignore_errors=True)
