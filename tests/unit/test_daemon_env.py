"""The engine's settings from its environment: a bad value is one line
naming the variable and what it takes, before anything is created."""

from __future__ import annotations

import pytest

from engine import scheduler
from engine.daemon import RETRY_BACKOFF_ENV, DaemonError, retry_backoff_from_env


def test_retry_backoff_defaults_and_takes_seconds() -> None:
    assert retry_backoff_from_env({}) == scheduler.RETRY_BACKOFF_BASE_S
    assert retry_backoff_from_env({RETRY_BACKOFF_ENV: " 0.5 "}) == 0.5
    assert retry_backoff_from_env({RETRY_BACKOFF_ENV: "0"}) == 0.0


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf", "1e9"])
def test_a_bad_retry_backoff_names_the_variable_and_the_range(raw: str) -> None:
    with pytest.raises(DaemonError) as err:
        retry_backoff_from_env({RETRY_BACKOFF_ENV: raw})
    text = str(err.value)
    assert text.startswith(f"{RETRY_BACKOFF_ENV}={raw!r}: expected seconds from 0 to ")
    assert "\n" not in text
