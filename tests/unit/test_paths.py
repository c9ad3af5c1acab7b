"""Where a user's files go when the engine home is someone else's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine import paths


def test_outputs_go_to_the_users_own_folder_when_the_home_is_shared(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared-home"
    shared.mkdir()
    monkeypatch.setenv("LLMCONSOLE_HOME", str(shared))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "mine"))
    monkeypatch.delenv("LLMCONSOLE_OUTPUTS", raising=False)
    assert paths.outputs_dir() == shared / "outputs"  # my own home: as before
    if os.getuid() == 0:
        os.chown(shared, 65534, 65534)  # now it is someone else's
    else:
        monkeypatch.setattr(os, "getuid", lambda: 4242)
    assert paths.outputs_dir() == tmp_path / "mine" / "llmconsole" / "outputs"
    monkeypatch.setenv("LLMCONSOLE_OUTPUTS", str(tmp_path / "scratch"))
    assert paths.outputs_dir() == tmp_path / "scratch"
