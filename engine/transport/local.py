"""`LocalAgentChannel`: the node agent as a subprocess of the engine on this
machine: a subprocess_channel.SubprocessChannel with the local command line.
Implements base.AgentChannel.

- `agent_argv(...)` is the one place the agent command line is built; an SSH
  transport runs the same argv on the remote side.
- The child gets this process's environment (as it is when the channel is
  made) with the repository root put first on PYTHONPATH, so `python -m
  engine.agent` resolves from a checkout or an editable install alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.transport.subprocess_channel import HELLO_TIMEOUT_S, SubprocessChannel

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def agent_argv(node: str, root: Path | str, interval: float = 1.0,
               python: str = sys.executable, extra_args: Sequence[str] = ()) -> list[str]:
    """The agent's command line, as an argv list (never a shell string)."""
    return [python, "-m", "engine.agent", "--node", node, "--root", str(root),
            "--interval", str(interval), *extra_args]


def agent_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: os.environ) with the repository root first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    parts = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return env


class LocalAgentChannel(SubprocessChannel):
    """A node agent running as a local subprocess, with its run directories
    under `root`."""

    def __init__(self, node: str, root: Path, interval: float = 1.0,
                 python: str = sys.executable, extra_args: Sequence[str] = (),
                 hello_timeout: float = HELLO_TIMEOUT_S) -> None:
        self.root = Path(root)
        super().__init__(node, agent_argv(node, self.root, interval, python, extra_args),
                         agent_env(), hello_timeout)
