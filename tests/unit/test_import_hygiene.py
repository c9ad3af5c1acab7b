"""Headless means headless: a fresh interpreter that imports the engine and
runs the CLI's headless commands never loads a screen library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCREEN = ("textual", "rich")
WORKLOAD_LIBRARIES = ("torch", "transformers", "horovod")


def _loaded_after(code: str) -> set[str]:
    probe = (
        f"{code}\nimport sys, json\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_engine_modules_do_not_load_textual_or_rich() -> None:
    loaded = _loaded_after(
        "import engine, engine.cli, engine.client, engine.runtime, engine.daemon, "
        "engine.profiles, engine.scheduler, engine.store, engine.api.server, "
        "engine.agent, engine.transport.local, engine.nodes, engine.health, engine.ingest, "
        "engine.transport.factory, engine.api.views"
    )
    assert "engine" in loaded and "aiohttp" in loaded  # the probe really imported them
    assert not loaded & set(SCREEN), loaded & set(SCREEN)
    # the engine checks workload options without the workloads' libraries
    assert not loaded & set(WORKLOAD_LIBRARIES), loaded & set(WORKLOAD_LIBRARIES)


def test_headless_cli_commands_do_not_load_textual_or_rich() -> None:
    loaded = _loaded_after(
        "import contextlib, io\nfrom engine.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['profiles', 'list'])\n"
        "    main(['profiles', 'validate'])"
    )
    assert "pydantic" in loaded  # the profiles really were loaded and validated
    assert not loaded & set(SCREEN), loaded & set(SCREEN)
    assert not loaded & set(WORKLOAD_LIBRARIES), loaded & set(WORKLOAD_LIBRARIES)


def test_the_client_needs_only_the_standard_library() -> None:
    loaded = _loaded_after("import engine.client")
    assert "engine" in loaded
    assert not loaded & {"aiohttp", "pydantic", "psutil", *SCREEN}
