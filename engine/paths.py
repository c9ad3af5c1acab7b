"""Where the engine keeps its files. One home per engine:
$LLMCONSOLE_HOME, else $XDG_DATA_HOME/llmconsole (~/.local/share/llmconsole).

    engine.db     the store (SQLite, WAL)
    engine.sock   the API (HTTP on a Unix socket, mode 0600); $LLMCONSOLE_SOCKET overrides
    engine.pid    the daemon's pid          engine.log   the daemon's log
    runs/         the head node agent's run directories (one per attempt)
    logs/         the engine's copy of every attempt's output, streamed by the agents
                  (capped per attempt: $LLMCONSOLE_LOG_CAP_MB, default 256; see engine.ingest)
    outputs/      workload jobs' output folders (models, checkpoints, results.json);
                  $LLMCONSOLE_OUTPUTS overrides (a shared filesystem on a real cluster)

A Unix socket path holds at most `SOCKET_PATH_MAX` bytes: `socket_path_problem`
says so in one line (the client and the daemon both check it first). When a
path is out of this user's reach, `owner_of` names who to ask. A home on a
full disk (under `MIN_FREE_BYTES` free, or a write probe that finds no
space) is refused by `full_disk_problem` before the daemon creates anything
in it.
"""

from __future__ import annotations

import contextlib
import math
import os
import pwd
from collections.abc import Callable, Mapping
from pathlib import Path

from engine.errors import UserError

SOCKET_PATH_MAX = 107  # bytes: Linux's sun_path is 108, with the terminating NUL
MIN_FREE_BYTES = 64 << 20  # the store, the log copies and engine.log need room to grow
PROBE_BYTES = 64 << 10


def number_from_env(name: str, default: float, ok: Callable[[float], bool], expected: str,
                    environ: Mapping[str, str] | None = None) -> float:
    """An engine setting from the environment: `name`'s value as a number,
    `default` when it is unset or blank. Raises `UserError` ("NAME='x':
    expected EXPECTED") when it is not a number or `ok` refuses it (NaN
    never passes a comparison, so `ok` need not test for it)."""
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not ok(value):
        raise UserError(f"{name}={raw!r}: expected {expected}")
    return value


def home() -> Path:
    explicit = os.environ.get("LLMCONSOLE_HOME")
    if explicit:
        return Path(explicit).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser() / "llmconsole"


def ensure_home(path: Path | None = None) -> Path:
    """The engine home, created (0700) if missing. Raises `UserError` when
    this user may not create or write it (someone else's home)."""
    root = path or home()
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except PermissionError:
        where, owner = owner_of(root)
        raise UserError(f"cannot create the engine home {root}: permission denied ({where} "
                        f"belongs to {owner}); set LLMCONSOLE_HOME to a folder of your own"
                        ) from None
    except OSError as exc:
        from engine import diskspace  # here: a client copied alone needs none of it

        if diskspace.is_no_space(exc):
            raise UserError(_full_disk_line(root)) from None
        raise
    if not os.access(root, os.W_OK | os.X_OK):
        _where, owner = owner_of(root)
        raise UserError(f"the engine home {root} belongs to {owner} and you may not write to "
                        f"it; set LLMCONSOLE_HOME to a folder of your own")
    return root


def full_disk_problem(root: Path, min_free: int = MIN_FREE_BYTES) -> str | None:
    """Why the engine home `root` cannot hold an engine: its disk (that of
    its nearest existing parent, before it is created) has under `min_free`
    bytes free, or writing a small probe file in it finds no space (a
    quota). One line with the fix, or None. The probe is removed."""
    from engine import diskspace

    free = diskspace.free_bytes(root)
    if free is not None and free < min_free:
        return _full_disk_line(root)
    if not root.is_dir():
        return None
    probe = root / f".space-probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            data = b"\0" * PROBE_BYTES
            if os.write(fd, data) != len(data):
                return _full_disk_line(root)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        if diskspace.is_no_space(exc):
            return _full_disk_line(root)
        return None  # not a space problem: the checks that follow name it
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def _full_disk_line(root: Path) -> str:
    from engine import diskspace

    return (f"the engine home {root} is on a full disk ({diskspace.where_free(root)}); free "
            f"space or set LLMCONSOLE_HOME to another disk")


def socket_path() -> Path:
    explicit = os.environ.get("LLMCONSOLE_SOCKET")
    return Path(explicit).expanduser() if explicit else home() / "engine.sock"


def socket_path_problem(path: Path) -> str | None:
    """Why `path` cannot be a Unix socket (one line with the fix), or None."""
    size = len(os.fsencode(path))
    if size <= SOCKET_PATH_MAX:
        return None
    return (f"the engine socket path {path} is {size} bytes, over the {SOCKET_PATH_MAX}-byte "
            f"limit of a Unix socket path; set a shorter LLMCONSOLE_HOME or LLMCONSOLE_SOCKET")


def owner_of(path: Path) -> tuple[Path, str]:
    """The nearest of `path` and its parents that this user can see, and the
    name of its owner (``uid N`` without a name): who to ask when `path` is
    out of reach."""
    for candidate in (path, *path.absolute().parents):
        try:
            uid = os.stat(candidate).st_uid
        except OSError:
            continue
        try:
            return candidate, pwd.getpwuid(uid).pw_name
        except KeyError:
            return candidate, f"uid {uid}"
    return Path("/"), "root"


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
    """Where this user's workload jobs write: $LLMCONSOLE_OUTPUTS, else the
    engine home's outputs/ when the home is this user's, else (a shared
    engine's home, which a job running as its owner cannot write) the
    user's own data folder, ~/.local/share/llmconsole/outputs."""
    explicit = os.environ.get("LLMCONSOLE_OUTPUTS")
    if explicit:
        return Path(explicit).expanduser()
    root = home()
    try:
        theirs = root.stat().st_uid != os.getuid()
    except OSError:
        theirs = False
    if theirs:
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(data).expanduser() / "llmconsole" / "outputs"
    return root / "outputs"
