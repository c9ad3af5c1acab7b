"""Fixtures for every test folder: `engine`, a real daemon in a throw-away
home, driven through the real CLI (see chaos/engine_handle.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from chaos.engine_handle import EngineHandle, new_engine


@pytest.fixture
def engine() -> Iterator[EngineHandle]:
    handle = new_engine()
    try:
        yield handle
    finally:
        handle.close()
        shutil.rmtree(handle.home, ignore_errors=True)
