"""Where the engine keeps its files. One home per engine:
$LLMCONSOLE_HOME, else $XDG_DATA_HOME/llmconsole (~/.local/share/llmconsole).

    engine.db     the store (SQLite, WAL)
    engine.sock   the API (HTTP on a Unix socket, mode 0600); $LLMCONSOLE_SOCKET overrides
    engine.pid    the daemon's pid          engine.log   the daemon's log
    runs/         the head node agent's run directories (one per attempt)
    logs/         the engine's copy of every attempt's output, streamed by the agents
    outputs/      workload jobs' output folders (models, checkpoints, results.json);
                  $LLMCONSOLE_OUTPUTS overrides (a shared filesystem on a real cluster)
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    explicit = os.environ.get("LLMCONSOLE_HOME")
    if explicit:
        return Path(explicit).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser() / "llmconsole"


def ensure_home(path: Path | None = None) -> Path:
    root = path or home()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root


def socket_path() -> Path:
    explicit = os.environ.get("LLMCONSOLE_SOCKET")
    return Path(explicit).expanduser() if explicit else home() / "engine.sock"


def db_path() -> Path:
    return home() / "engine.db"


def pid_path() -> Path:
    return home() / "engine.pid"


def log_path() -> Path:
    return home() / "engine.log"


def runs_dir() -> Path:
    return home() / "runs"


def logs_dir() -> Path:
    return home() / "logs"


def outputs_dir() -> Path:
    explicit = os.environ.get("LLMCONSOLE_OUTPUTS")
    return Path(explicit).expanduser() if explicit else home() / "outputs"
