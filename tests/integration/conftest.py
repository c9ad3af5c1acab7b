from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.integration.engine_fixture import EngineHandle, new_engine


@pytest.fixture
def engine() -> Iterator[EngineHandle]:
    handle = new_engine()
    try:
        yield handle
    finally:
        handle.close()
        shutil.rmtree(handle.home, ignore_errors=True)
