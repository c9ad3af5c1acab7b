"""What every `llmconsole` command shares: exit codes, the one-line error,
output helpers (tables, escaping of user-controlled text, --json) and the
client that starts the engine when none runs. Headless and standard library
only, like the rest of the CLI."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

from engine.errors import Unavailable, Unreachable, UserError

# typing's TYPE_CHECKING without importing typing (3 ms of every CLI call): the
# annotations are strings (from __future__ import annotations)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NO_ENGINE = 3
EXIT_UNREACHABLE = 4
NAME_WIDTH = 40  # `jobs` cuts longer names, ending them with an ellipsis
STATES = ("held", "queued", "starting", "running", "succeeded", "failed", "cancelled", "lost")
ACTIVE = ("held", "queued", "starting", "running")


class CliError(UserError):
    pass


# ------------------------------------------------------------------ output
def _age(t: float | None) -> str:
    if not t:
        return "-"
    s = max(0.0, time.time() - t)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _table(rows: list[list[str]], header: list[str]) -> str:
    allrows = [header, *rows]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in allrows)


def _printable(text: object) -> str:
    """Names, paths and messages are free text: control characters (and
    lone surrogates from undecodable file names) escaped, never raw."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cut(text: str, width: int) -> str:
    """`text` in at most `width` characters; a cut one ends with an ellipsis."""
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def _emit(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        text = render(data)
        if text:
            print(text)


# ----------------------------------------------------------------- engine
def _client(autostart: bool = True) -> Any:
    from engine.client import EngineClient

    client = EngineClient()
    try:
        client.health()
    except Unreachable:
        raise  # someone else's engine, or no socket can live there: starting one cannot help
    except Unavailable:
        if not autostart or _socket_exists(client) and not _socket_is_ours(client):
            raise
        from engine.daemon import start_background

        start_background(os.environ.get("LLMCONSOLE_CLUSTER"))
    return client


def _socket_exists(client: Any) -> bool:
    try:
        return bool(client.socket_path.exists())
    except OSError:
        return True  # cannot even look: not ours to replace


def _socket_is_ours(client: Any) -> bool:
    try:
        return bool(client.socket_path.stat().st_uid == os.getuid())
    except OSError:
        return True
